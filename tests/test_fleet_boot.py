"""A fleet replica's boot (scripts/fleet_boot.sh) under stand-ins for the metadata server and
Secret Manager (tests/fakebin_fleet/curl, from their documented APIs): the steps run in the
single VM's order with the files they take, the secrets come with the replica's token and go
only down pipes and root-only files, and a second boot does the same again."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from components import host_paths
from components.host_bundle import FleetBootLimits, file_bundle, fleet_boot_script
from tests.harness import assert_shell_clean

FAKEBIN = Path(__file__).resolve().parent / "fakebin_fleet"
TOKEN = "ya29.standin-access-token"
ENV_VERSION = "projects/123/secrets/vllm-prod-env/versions/4"
PROXY_VERSION = "projects/123/secrets/vllm-prod-proxy/versions/7"
ENV_FILE = "VLLM_API_KEY=k3yABCDEFGHIJKLMNOPQRSTUVWXYZ\nHF_TOKEN=hf_standin0123\n"
PROXY_BUNDLE = file_bundle({"site": "server {}\n", "certificate": "CERT\n", "private_key": "KEY\n"})
UNIT = "[Unit]\nDescription=vLLM\n[Service]\nExecStart=/bin/true\n"
LIMITS = FleetBootLimits(host_setup=60, secrets=60, run=60, proxy=60, serving=60)
# Each attribute's stand-in step records its name and, where it takes one, what came on stdin.
STEPS = {
    "vllm-gcp-host-setup": "host-setup",
    "vllm-gcp-step-secrets": "secrets",
    "vllm-gcp-step-run": "run",
    "vllm-gcp-step-proxy": "proxy",
    "vllm-gcp-step-serving": "serving",
}


def boot_script() -> str:
    return fleet_boot_script(ENV_VERSION, PROXY_VERSION, LIMITS)


class Replica:
    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        self.tmp = tmp_path / "tmp"
        self.root = tmp_path / "root"
        for directory in (self.state / "attributes", self.state / "secrets", self.tmp):
            directory.mkdir(parents=True)
        self.ready = self.root / host_paths.READY_MARKER.lstrip("/")
        (self.state / "token").write_text(TOKEN)
        for key, step in STEPS.items():
            (self.state / "attributes" / key).write_text(
                "set -euo pipefail\n"
                f'printf "%s limit=%s\\n" {step} "$VLLM_GCP_STEP_LIMIT_SECONDS" '
                '>>"$FAKE_STATE/steps"\n'
                f'cat >"$FAKE_STATE/stdin-{step}"\n'
            )
        # The host setup's stand-in marks the host ready, as scripts/startup.sh does.
        with (self.state / "attributes" / "vllm-gcp-host-setup").open("a") as setup:
            setup.write(f'mkdir -p "{self.ready.parent}"\ntouch "{self.ready}"\n')
        (self.state / "attributes" / "vllm-gcp-unit").write_text(UNIT)
        self.secret(ENV_VERSION, ENV_FILE)
        self.secret(PROXY_VERSION, PROXY_BUNDLE)

    def secret(self, version: str, content: str) -> None:
        (self.state / "secrets" / version.replace("/", "_")).write_text(content)

    def boot(self, script: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}",
            "FAKE_STATE": str(self.state),
            "TMPDIR": str(self.tmp),
            "VLLM_GCP_ROOT": str(self.root),
            "VLLM_GCP_METADATA_URL": "http://metadata.test/computeMetadata/v1",
            "VLLM_GCP_SECRET_MANAGER_URL": "https://secretmanager.test/v1",
        }
        return subprocess.run(
            ["bash", "-c", script or boot_script()],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def steps(self) -> list[str]:
        return (self.state / "steps").read_text().splitlines()

    def stdin(self, step: str) -> str:
        return (self.state / f"stdin-{step}").read_text()

    def curl_calls(self) -> list[str]:
        return (self.state / "calls").read_text().splitlines()


@pytest.fixture
def replica(tmp_path: Path) -> Replica:
    return Replica(tmp_path)


def test_the_boot_script_is_clean_shell() -> None:
    assert_shell_clean(boot_script())


def test_a_boot_runs_the_single_vms_steps_in_order_with_their_files(replica: Replica) -> None:
    result = replica.boot()
    assert result.returncode == 0, result.stderr
    assert replica.steps() == [f"{step} limit=60" for step in STEPS.values()]
    assert replica.stdin("host-setup") == ""
    assert replica.stdin("secrets") == ENV_FILE
    assert replica.stdin("run") == UNIT
    assert replica.stdin("proxy") == PROXY_BUNDLE
    assert replica.stdin("serving") == ""
    journal = (replica.state / "journal").read_text().splitlines()
    assert journal[0].endswith("boot begins")
    assert journal[-1].endswith("replica ready")


def test_secrets_come_with_the_replicas_token_and_never_on_a_command_line(
    replica: Replica,
) -> None:
    result = replica.boot()
    assert result.returncode == 0, result.stderr
    calls = replica.curl_calls()
    urls = [call.split()[-1] for call in calls]
    assert f"https://secretmanager.test/v1/{ENV_VERSION}:access" in urls
    assert f"https://secretmanager.test/v1/{PROXY_VERSION}:access" in urls
    for call in calls:
        assert TOKEN not in call
    output = result.stdout + result.stderr + (replica.state / "journal").read_text()
    for secret in (TOKEN, "k3yABCDEFGHIJKLMNOPQRSTUVWXYZ", "hf_standin0123", "KEY"):
        assert secret not in output
    # Nothing of the secrets is left behind in the temporary directory.
    assert list(replica.tmp.iterdir()) == []


def test_a_second_boot_does_the_same_again(replica: Replica) -> None:
    assert replica.boot().returncode == 0
    second = replica.boot()
    assert second.returncode == 0, second.stderr
    assert replica.steps() == [f"{step} limit=60" for step in STEPS.values()] * 2


def test_a_grant_still_propagating_is_retried(replica: Replica) -> None:
    (replica.state / "secret_failures").write_text("2")
    result = replica.boot()
    assert result.returncode == 0, result.stderr
    assert (replica.state / "sleeps").read_text().splitlines() == ["sleep 30", "sleep 30"]
    assert "the grant may still be propagating" in result.stderr


def test_a_secret_that_cannot_be_read_stops_the_boot_before_the_steps_that_need_it(
    replica: Replica,
) -> None:
    (replica.state / "secrets" / ENV_VERSION.replace("/", "_")).unlink()
    result = replica.boot()
    assert result.returncode != 0
    assert replica.steps() == ["host-setup limit=60"]
    assert f"could not read {ENV_VERSION} from Secret Manager" in result.stderr
    assert "roles/secretmanager.secretAccessor" in result.stderr


def test_a_reboot_for_the_driver_ends_this_boot_after_the_host_setup(replica: Replica) -> None:
    rebooting = replica.root / host_paths.REBOOTING_MARKER.lstrip("/")
    rebooting.parent.mkdir(parents=True)
    (replica.state / "attributes" / "vllm-gcp-host-setup").write_text(
        f'printf "host-setup limit=%s\\n" "$VLLM_GCP_STEP_LIMIT_SECONDS" >>"$FAKE_STATE/steps"\n'
        f'touch "{rebooting}"\n'
    )
    result = replica.boot()
    assert result.returncode == 0, result.stderr
    assert replica.steps() == ["host-setup limit=60"]
    assert "rebooting the replica to load the NVIDIA driver" in result.stderr + result.stdout


def test_a_host_setup_that_marks_nothing_stops_the_boot(replica: Replica) -> None:
    (replica.state / "attributes" / "vllm-gcp-host-setup").write_text("exit 0\n")
    result = replica.boot()
    assert result.returncode != 0
    assert "without marking the host ready" in result.stderr


def test_a_failing_step_stops_the_boot_and_says_which(replica: Replica) -> None:
    (replica.state / "attributes" / "vllm-gcp-step-run").write_text("exit 3\n")
    result = replica.boot()
    assert result.returncode != 0
    assert replica.steps() == ["host-setup limit=60", "secrets limit=60"]
    assert "the run step failed" in result.stderr
    assert "run: failed" in (replica.state / "journal").read_text()
