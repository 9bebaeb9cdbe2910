"""The private-mode mirrors: Artifact Registry repositories, their narrow grants, the image
rewrite, the Cloud Storage weights grant, and the host's registry login script."""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import pulumi
import pytest

from components.config import MirrorConfig, ModelConfig
from components.host_bundle import AptMirror
from components.mirror import (
    OBJECT_VIEWER_ROLE,
    READER_ROLE,
    UBUNTU_SUITES,
    Mirror,
    MirrorArgs,
    apt_sources,
    docker_hub_path,
    gcs_location,
    prefix_read_condition,
    repository_id,
)
from tests.harness import Plan, build_components

ROOT = Path(__file__).resolve().parents[1]
LOGIN_SCRIPT = ROOT / "scripts" / "registry_login.sh"
SA_EMAIL = "vllm-dev-host@test-project.iam.gserviceaccount.com"
WEIGHTS_URI = "gs://weights-bucket/models/mistral"
REPOSITORY = "gcp:artifactregistry/repository:Repository"
REPOSITORY_GRANT = "gcp:artifactregistry/repositoryIamMember:RepositoryIamMember"
BUCKET_GRANT = "gcp:storage/bucketIAMMember:BucketIAMMember"


# ------------------------------------------------------------------------------------------------
# Names, rewrites and conditions (no engine)


@pytest.mark.parametrize(
    ("reference", "path"),
    [
        ("vllm/vllm-openai:v0.32.0", "vllm/vllm-openai:v0.32.0"),
        ("nginx:1.27", "library/nginx:1.27"),
        ("ubuntu", "library/ubuntu"),
        ("docker.io/nvidia/cuda:12.8.1-base-ubuntu24.04", "nvidia/cuda:12.8.1-base-ubuntu24.04"),
        ("docker.io/busybox:1.36", "library/busybox:1.36"),
        ("index.docker.io/library/alpine:3.20", "library/alpine:3.20"),
        (f"vllm/vllm-openai@sha256:{'a' * 64}", f"vllm/vllm-openai@sha256:{'a' * 64}"),
        ("nvcr.io/nvidia/cuda:12.8.1-base-ubuntu24.04", None),
        ("ghcr.io/org/image:1", None),
        ("localhost/image:1", None),
        ("registry.internal:5000/image:1", None),
    ],
)
def test_docker_hub_path(reference: str, path: str | None) -> None:
    assert docker_hub_path(reference) == path


def test_repository_ids_are_valid_and_fit_for_any_stack_name() -> None:
    long_stack = "Feature_Branch.With-A-Very-Long-Name-For-Testing-Purposes-1234567890"
    for stack in ("dev", "prod", long_stack, "a.b_c"):
        purposes = ["dockerhub", *(f"ubuntu-{suite}" for suite in UBUNTU_SUITES)]
        ids = [repository_id("vllm", stack, purpose) for purpose in purposes]
        for identifier in ids:
            assert len(identifier) <= 63
            assert re.fullmatch(r"[a-z]([a-z0-9-]*[a-z0-9])?", identifier), identifier
        assert len(set(ids)) == len(ids)
    assert repository_id("vllm", "prod", "dockerhub") == "vllm-prod-dockerhub"


APT_IDS = {suite: f"vllm-dev-ubuntu-{suite}" for suite in UBUNTU_SUITES}


def test_apt_sources_are_deb822_sources_for_each_suite() -> None:
    text = apt_sources("us-central1-apt.pkg.dev", "test-project", APT_IDS)
    stanzas = text.strip().split("\n\n")
    assert len(stanzas) == len(UBUNTU_SUITES)
    for suite, stanza in zip(UBUNTU_SUITES, stanzas, strict=True):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines())
        assert fields == {
            "Types": "deb",
            "URIs": f"https://us-central1-apt.pkg.dev/remote/test-project/vllm-dev-ubuntu-{suite}",
            "Suites": suite,
            "Components": "main restricted universe multiverse",
            "Signed-By": "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
        }


def test_gcs_location() -> None:
    assert gcs_location("gs://weights-bucket/models/mistral/") == (
        "weights-bucket",
        "models/mistral",
    )
    assert gcs_location("gs://weights-bucket") == ("weights-bucket", "")


def test_prefix_condition_reads_and_lists_inside_the_prefix_only() -> None:
    expression = prefix_read_condition("weights-bucket", "models/mistral")
    assert expression == (
        'resource.name.startsWith("projects/_/buckets/weights-bucket/objects/models/mistral/")'
        ' || api.getAttribute("storage.googleapis.com/objectListPrefix", "") == "models/mistral"'
        ' || api.getAttribute("storage.googleapis.com/objectListPrefix", "")'
        '.startsWith("models/mistral/")'
    )


def test_prefix_condition_escapes_quotes() -> None:
    expression = prefix_read_condition("b", 'odd"name\\x')
    assert '"odd\\"name\\\\x"' in expression


# ------------------------------------------------------------------------------------------------
# The graph, under the engine's mocks


def build(mirror: MirrorConfig, model: ModelConfig) -> Plan:
    def declare() -> dict[str, object]:
        component = Mirror(
            "vllm",
            MirrorArgs(
                mirror=mirror,
                model=model,
                project="test-project",
                region="us-central1",
                service_account_email=pulumi.Output.from_input(SA_EMAIL),
            ),
        )
        return {
            "registry_host": component.registry_host,
            "grants": len(component.grants),
            "vllm_image": component.vllm_image,
            "apt_mirror": component.apt_mirror,
            "nginx_image": component.image("nginx:1.27"),
            "cuda_image": component.image("nvcr.io/nvidia/cuda:12.8.1"),
        }

    return build_components(declare)


GCS_MODEL = ModelConfig(source="gcs", gcs_uri=WEIGHTS_URI)


def test_nothing_is_created_when_every_switch_is_off() -> None:
    built = build(MirrorConfig(), ModelConfig())
    assert [r.type for r in built.resources] == ["vllm-gcp:mirror:Mirror"]
    assert built.outputs == {
        "registry_host": None,
        "grants": 0,
        "vllm_image": ModelConfig().image,
        "apt_mirror": None,
        # No Docker mirror: every image as configured.
        "nginx_image": "nginx:1.27",
        "cuda_image": "nvcr.io/nvidia/cuda:12.8.1",
    }


def test_docker_remote_repository_and_its_reader_grant() -> None:
    built = build(MirrorConfig(docker_remote=True), ModelConfig())
    (repository,) = built.of_type(REPOSITORY)
    assert repository.name == "vllm-dockerhub"
    assert repository.plain["repositoryId"] == "vllm-dev-dockerhub"
    assert repository.plain["format"] == "DOCKER"
    assert repository.plain["mode"] == "REMOTE_REPOSITORY"
    assert repository.plain["location"] == "us-central1"
    assert repository.plain["project"] == "test-project"
    remote = repository.plain["remoteRepositoryConfig"]
    assert remote["dockerRepository"] == {"publicRepository": "DOCKER_HUB"}
    (grant,) = built.of_type(REPOSITORY_GRANT)
    assert grant.plain == {
        "project": "test-project",
        "location": "us-central1",
        "repository": "vllm-dev-dockerhub",
        "role": READER_ROLE,
        "member": f"serviceAccount:{SA_EMAIL}",
    }
    assert built.outputs["registry_host"] == "us-central1-docker.pkg.dev"
    assert built.outputs["vllm_image"] == (
        "us-central1-docker.pkg.dev/test-project/vllm-dev-dockerhub/vllm/vllm-openai:v0.32.0"
    )
    assert built.outputs["nginx_image"] == (
        "us-central1-docker.pkg.dev/test-project/vllm-dev-dockerhub/library/nginx:1.27"
    )
    # Off Docker Hub: the remote repository cannot serve it.
    assert built.outputs["cuda_image"] == "nvcr.io/nvidia/cuda:12.8.1"
    assert not built.of_type(BUCKET_GRANT)
    assert built.outputs["apt_mirror"] is None


def test_apt_remote_repositories_for_the_ubuntu_archive_and_their_grants() -> None:
    built = build(MirrorConfig(apt_remote=True), ModelConfig())
    by_id = {r.plain["repositoryId"]: r for r in built.of_type(REPOSITORY)}
    assert sorted(by_id) == sorted(f"vllm-dev-ubuntu-{suite}" for suite in UBUNTU_SUITES)
    repositories = list(by_id.values())
    for suite in UBUNTU_SUITES:
        repository = by_id[f"vllm-dev-ubuntu-{suite}"]
        assert repository.name == f"vllm-apt-{suite}"
        assert repository.plain["format"] == "APT"
        assert repository.plain["mode"] == "REMOTE_REPOSITORY"
        assert repository.plain["remoteRepositoryConfig"]["aptRepository"] == {
            "publicRepository": {
                "repositoryBase": "UBUNTU",
                "repositoryPath": f"ubuntu/dists/{suite}",
            }
        }
    grants = built.of_type(REPOSITORY_GRANT)
    assert sorted(g.plain["repository"] for g in grants) == sorted(
        r.plain["repositoryId"] for r in repositories
    )
    assert {g.plain["role"] for g in grants} == {READER_ROLE}
    assert built.outputs["apt_mirror"] == AptMirror(
        "us-central1-apt.pkg.dev",
        apt_sources("us-central1-apt.pkg.dev", "test-project", APT_IDS),
    )
    assert (
        built.outputs["vllm_image"] == ModelConfig().image
    )  # no Docker mirror: pulled as configured
    assert built.outputs["grants"] == len(UBUNTU_SUITES)


def test_gcs_weights_grant_is_limited_to_the_prefix() -> None:
    built = build(MirrorConfig(), GCS_MODEL)
    (grant,) = built.of_type(BUCKET_GRANT)
    assert grant.name == "vllm-weights-reader"
    assert grant.plain["bucket"] == "weights-bucket"
    assert grant.plain["role"] == OBJECT_VIEWER_ROLE
    assert grant.plain["member"] == f"serviceAccount:{SA_EMAIL}"
    assert grant.plain["condition"]["expression"] == prefix_read_condition(
        "weights-bucket", "models/mistral"
    )
    assert grant.plain["condition"]["title"]
    assert not built.of_type(REPOSITORY)
    assert built.outputs["grants"] == 1


def test_gcs_weights_at_the_bucket_root_need_no_condition() -> None:
    built = build(MirrorConfig(), ModelConfig(source="gcs", gcs_uri="gs://weights-bucket"))
    (grant,) = built.of_type(BUCKET_GRANT)
    assert "condition" not in grant.plain


def test_every_grant_is_on_one_repository_or_bucket_never_the_project() -> None:
    built = build(MirrorConfig(docker_remote=True, apt_remote=True), GCS_MODEL)
    types = {r.type for r in built.resources}
    assert types == {"vllm-gcp:mirror:Mirror", REPOSITORY, REPOSITORY_GRANT, BUCKET_GRANT}
    assert len(built.of_type(REPOSITORY)) == 1 + len(UBUNTU_SUITES)
    assert len({r.name for r in built.resources}) == len(built.resources)


# ------------------------------------------------------------------------------------------------
# scripts/registry_login.sh with recording stand-ins for curl and docker

TOKEN = "ya29.mock-access-token-0123456789"

CURL_STANDIN = """#!/usr/bin/env bash
printf '%s\\n' "$@" >"$RECORD/curl.args"
[[ -z ${CURL_FAILS:-} ]] || exit 22
printf '%s' "$CURL_RESPONSE"
"""

DOCKER_STANDIN = """#!/usr/bin/env bash
printf '%s\\n' "$@" >"$RECORD/docker.args"
cat >"$RECORD/docker.stdin"
printf '%s' "${HOME:-}" >"$RECORD/docker.home"
echo "Login Succeeded"
"""


def run_login(
    tmp_path: Path, *args: str, response: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    record = tmp_path / "record"
    bin_dir.mkdir(exist_ok=True)
    record.mkdir(exist_ok=True)
    for name, text in (("curl", CURL_STANDIN), ("docker", DOCKER_STANDIN)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    environment = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD": str(record),
        "HOME": str(tmp_path / "home"),
        "CURL_RESPONSE": response
        if response is not None
        else f'{{"access_token":"{TOKEN}","expires_in":3599,"token_type":"Bearer"}}',
        **env,
    }
    return subprocess.run(
        ["bash", str(LOGIN_SCRIPT), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def recorded(tmp_path: Path, name: str) -> str | None:
    path = tmp_path / "record" / name
    return path.read_text() if path.exists() else None


def test_login_passes_the_token_on_stdin_only(tmp_path: Path) -> None:
    result = run_login(tmp_path, "us-central1-docker.pkg.dev")
    assert result.returncode == 0, result.stderr
    assert recorded(tmp_path, "docker.stdin") == TOKEN
    docker_args = recorded(tmp_path, "docker.args") or ""
    assert docker_args.splitlines() == [
        "login",
        "--username",
        "oauth2accesstoken",
        "--password-stdin",
        "https://us-central1-docker.pkg.dev",
    ]
    curl_args = recorded(tmp_path, "curl.args") or ""
    assert "Metadata-Flavor: Google" in curl_args
    assert "service-accounts/default/token" in curl_args
    for text in (docker_args, curl_args, result.stdout, result.stderr):
        assert TOKEN not in text
    assert "logged in to us-central1-docker.pkg.dev" in result.stderr


def test_login_runs_again_the_same_way(tmp_path: Path) -> None:
    first = run_login(tmp_path, "europe-west4-docker.pkg.dev")
    second = run_login(tmp_path, "europe-west4-docker.pkg.dev")
    assert first.returncode == second.returncode == 0
    assert recorded(tmp_path, "docker.stdin") == TOKEN


@pytest.mark.parametrize(
    "host", ["evil.example.com", "us-central1-docker.pkg.dev.evil.com", "gcr.io", "x;id"]
)
def test_login_refuses_hosts_that_are_not_artifact_registry(tmp_path: Path, host: str) -> None:
    result = run_login(tmp_path, host)
    assert result.returncode != 0
    assert "refusing" in result.stderr
    assert recorded(tmp_path, "curl.args") is None
    assert recorded(tmp_path, "docker.args") is None


def test_login_needs_exactly_one_host(tmp_path: Path) -> None:
    assert run_login(tmp_path).returncode != 0
    assert run_login(tmp_path, "a-docker.pkg.dev", "b-docker.pkg.dev").returncode != 0
    assert recorded(tmp_path, "docker.args") is None


def test_login_fails_without_a_token(tmp_path: Path) -> None:
    failed = run_login(tmp_path, "us-central1-docker.pkg.dev", CURL_FAILS="1")
    assert failed.returncode != 0
    assert "metadata server gave no token" in failed.stderr
    assert recorded(tmp_path, "docker.args") is None
    empty = run_login(tmp_path, "us-central1-docker.pkg.dev", response='{"error":"nope"}')
    assert empty.returncode != 0
    assert "no access_token" in empty.stderr
    assert recorded(tmp_path, "docker.args") is None


def test_login_finds_a_home_when_systemd_gives_none(tmp_path: Path) -> None:
    result = run_login(tmp_path, "us-central1-docker.pkg.dev", HOME="")
    assert result.returncode == 0, result.stderr
    assert recorded(tmp_path, "docker.home") == pwd.getpwuid(os.getuid()).pw_dir


def test_login_script_is_shellcheck_clean() -> None:
    subprocess.run(["bash", "-n", str(LOGIN_SCRIPT)], check=True)
    shellcheck = ROOT / "venv" / "bin" / "shellcheck"
    subprocess.run([str(shellcheck), "-S", "warning", str(LOGIN_SCRIPT)], check=True)
