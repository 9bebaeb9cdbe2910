"""`vllm-gcp image build` (tools/image_build.py) against a recording stand-in for gcloud
(tests/standin_gcloud.py, strict about each command's documented flags)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import catalogue
from components.config import ConfigError, validate
from tests.harness import stack_config
from tools import cli, image_build
from tools.image_build import ImageBuild, Settings

STANDIN = Path(__file__).resolve().parent / "standin_gcloud.py"
ROOT = STANDIN.parent.parent
MARKER = (
    "BUILT_AT=2026-12-01T18:50:00Z\n"
    "BASE_IMAGE=ubuntu-accelerator-2404-amd64-with-nvidia-580-v20261115\n"
    "NVIDIA_DRIVER=580.95.05\n"
    "DOCKER=28.2.2-0ubuntu1~24.04.1\n"
    "NVIDIA_CONTAINER_TOOLKIT=1.18.1-1\n"
    "NGINX=1.24.0-2ubuntu7.5\n"
    "OPS_AGENT=2.61.0~ubuntu24.04\n"
    "VLLM_IMAGE=vllm/vllm-openai:v0.32.0\n"
    "GPU_CHECK_IMAGE=ubuntu:24.04\n"
)
DONE = [{}, {"phase": "install"}, {"phase": "pull"}, {"phase": "clean"}]
DONE.append({"phase": "clean", "contents": MARKER, "status": "done"})
ARGS = ["build", "--project", "my-project", "--zone", "us-central1-a", "--poll-seconds", "0.01"]


@dataclass
class Run:
    code: int
    out: str
    err: str
    calls: list[list[str]]
    state: Path

    def commands(self) -> list[str]:
        return [" ".join(call[1:3]) for call in self.calls]

    def call(self, command: str) -> list[str]:
        return next(c for c in self.calls if " ".join(c[1:3]) == command)


@pytest.fixture
def gcloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "gcloud"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # This interpreter, directly: a shim's start-up would dominate the run.
    (bin_dir / "gcloud").write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "{STANDIN}" "$@"\n')
    (bin_dir / "gcloud").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_STATE", str(state))
    guest = tmp_path / "guest.json"
    guest.write_text(json.dumps(DONE))
    monkeypatch.setenv("FAKE_GCLOUD_GUEST", str(guest))
    return state


def build(
    state: Path,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Run:
    code = image_build.main([*ARGS, *extra], sleep=sleep, clock=clock)
    out, err = capsys.readouterr()
    calls_file = state / "calls.jsonl"
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    return Run(code, out, err, calls, state)


def flag(call: list[str], name: str) -> str:
    return call[call.index(name) + 1]


def test_a_build_creates_waits_stops_images_and_deletes_in_that_order(
    gcloud: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = build(gcloud, capsys)
    assert run.code == 0, run.err
    assert run.commands() == [
        "instances create",
        *["instances get-guest-attributes"] * len(DONE),
        "instances stop",
        "images create",
        "instances delete",
    ]
    create = run.call("instances create")
    builder = create[3]
    assert builder.startswith("vllm-image-builder-")
    assert flag(create, "--image-project") == "ubuntu-os-accelerator-images"
    assert flag(create, "--image-family") == "ubuntu-accelerator-2404-amd64-with-nvidia-580"
    assert flag(create, "--machine-type") == "e2-standard-8"
    assert flag(create, "--boot-disk-size") == "100GB"
    assert flag(create, "--metadata") == "enable-guest-attributes=TRUE,block-project-ssh-keys=TRUE"
    assert {"--no-service-account", "--no-scopes"} <= set(create)
    assert "--no-address" not in create
    # The builder's startup script is the rendered prepare script for the pinned image.
    startup = (gcloud / "metadata-startup-script").read_text()
    assert startup == image_build.builder_script(catalogue.DEFAULT_VLLM_IMAGE)
    image = run.call("images create")
    assert image[3].startswith("vllm-host-2404-nvidia-580-v")
    assert flag(image, "--source-disk") == builder
    assert flag(image, "--source-disk-zone") == "us-central1-a"
    assert flag(image, "--family") == "vllm-host-2404-nvidia-580"
    assert dict(pair.split("=") for pair in flag(image, "--labels").split(",")) == {
        "built-by": "vllm-gcp-image-build",
        "vllm-image": "vllm-vllm-openai-v0-32-0",
        "gpu-check-image": "ubuntu-24-04",
        "nvidia-driver": "580-95-05",
        "docker": "28-2-2-0ubuntu1-24-04-1",
        "nvidia-container-toolkit": "1-18-1-1",
        "nginx": "1-24-0-2ubuntu7-5",
        "ops-agent": "2-61-0-ubuntu24-04",
    }
    assert "VLLM_IMAGE=vllm/vllm-openai:v0.32.0" in flag(image, "--description")
    assert run.call("instances delete")[3] == builder
    assert "--quiet" in run.call("instances delete")
    assert all(flag(call, "--project") == "my-project" for call in run.calls)
    assert run.out.splitlines()[-2] == (
        f"Built projects/my-project/global/images/{image[3]} in the family "
        "vllm-host-2404-nvidia-580. Use it with:"
    )
    assert run.out.splitlines()[-1] == (
        "  pulumi config set --path vllm-gcp:host.image "
        "projects/my-project/global/images/family/vllm-host-2404-nvidia-580"
    )
    for phase in ("booting", "install", "pull", "clean"):
        assert f"builder: {phase} (" in run.out


def test_network_options_reach_the_builder(
    gcloud: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = build(gcloud, capsys, "--network", "ops", "--subnet", "ops-1", "--no-address")
    assert run.code == 0, run.err
    create = run.call("instances create")
    assert (flag(create, "--network"), flag(create, "--subnet")) == ("ops", "ops-1")
    assert "--no-address" in create


@pytest.mark.parametrize(
    ("error", "explained"),
    [
        ("quota", "the project's quota does not allow the builder (Quota 'CPUS' exceeded."),
        ("stockout", "us-central1-a has no capacity for e2-standard-8 right now"),
        ("no-machine", "e2-standard-8 is not offered in us-central1-a; list what is with"),
    ],
)
def test_a_create_that_fails_is_explained_and_leaves_nothing(
    gcloud: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: str,
    explained: str,
) -> None:
    monkeypatch.setenv("FAKE_GCLOUD_CREATE_ERROR", error)
    run = build(gcloud, capsys)
    assert run.code == 1
    assert explained in run.err
    # The delete still looks (a failed create may have left a VM); none exists.
    assert run.commands() == ["instances create", "instances delete"]
    assert not (gcloud / "instances").exists() or not any((gcloud / "instances").iterdir())


def test_a_failed_builder_is_reported_with_its_lines_and_deleted(
    gcloud: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    failed = [{"phase": "pull", "status": "failed: could not pull vllm/vllm-openai:v0.32.0"}]
    (tmp_path / "guest.json").write_text(json.dumps([{"phase": "install"}, *failed]))
    run = build(gcloud, capsys)
    assert run.code == 1
    assert "the builder failed: could not pull vllm/vllm-openai:v0.32.0" in run.err
    assert "vllm-gcp-startup: FAILED: could not pull the image" in run.err
    assert "images create" not in run.commands()
    assert run.commands()[-1] == "instances delete"
    assert not any((gcloud / "instances").iterdir())


def test_an_image_create_that_fails_still_deletes_the_builder(
    gcloud: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_GCLOUD_FAIL", "images create")
    run = build(gcloud, capsys)
    assert run.code == 1
    assert "could not create the image" in run.err
    assert run.commands()[-2:] == ["images create", "instances delete"]
    assert not any((gcloud / "instances").iterdir())


def test_a_builder_that_never_finishes_is_given_up_and_deleted(
    gcloud: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    (tmp_path / "guest.json").write_text(json.dumps([{"phase": "pull"}]))
    ticks = iter(range(0, 100_000, 40))
    run = build(gcloud, capsys, "--timeout-minutes", "5", clock=lambda: float(next(ticks)))
    assert run.code == 1
    assert "did not finish within 5 minutes (last phase: pull)" in run.err
    waits = run.commands().count("instances get-guest-attributes")
    assert 2 <= waits <= 5  # 40 s a look (3 clock reads each) in a 300 s deadline
    assert run.commands()[-1] == "instances delete"
    # A heartbeat line at least every 5 minutes of the same phase.
    assert run.out.count("builder: pull (") >= 1


def test_ctrl_c_while_waiting_deletes_the_builder(gcloud: Path, tmp_path: Path) -> None:
    (tmp_path / "guest.json").write_text(json.dumps([{"phase": "install"}]))
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "image", *ARGS[:-1], "0.05"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    calls_file = gcloud / "calls.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if calls_file.exists() and "get-guest-attributes" in calls_file.read_text():
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, out + err
    assert "stopped by SIGINT" in err
    commands = [" ".join(json.loads(line)[1:3]) for line in calls_file.read_text().splitlines()]
    assert commands[0] == "instances create"
    assert commands[-1] == "instances delete"
    assert "images create" not in commands
    assert not any((gcloud / "instances").iterdir())
    assert "pulumi config set" not in out


def test_a_sigterm_while_waiting_deletes_the_builder(
    gcloud: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "guest.json").write_text(json.dumps([{"phase": "pull"}]))
    run = build(gcloud, capsys, sleep=lambda _: os.kill(os.getpid(), signal.SIGTERM))
    assert run.code == 130
    assert "stopped by SIGTERM" in run.err
    # The signal may reach the process while a look is in flight: it ends after that one.
    commands = run.commands()
    assert (commands[0], commands[-1]) == ("instances create", "instances delete")
    assert set(commands[1:-1]) == {"instances get-guest-attributes"}
    # The handlers are given back: the test process's own SIGINT is Python's again.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_delete_after_an_interrupted_create_looks_until_the_vm_is_there(
    gcloud: Path,
) -> None:
    settings = Settings(
        "my-project", "us-central1-a", "vllm-host-x", "e2-standard-8", "vllm/v:1", None, None,
        False, 0.01, 1,
    )  # fmt: skip
    lines: list[str] = []
    looks: list[float] = []
    instances = gcloud / "instances"

    def vm_appears(seconds: float) -> None:
        looks.append(seconds)
        if len(looks) == 2:
            instances.mkdir(parents=True, exist_ok=True)
            (instances / run.builder).write_text("RUNNING")

    when = image_build.datetime.datetime(2026, 12, 1)
    run = ImageBuild(settings, lines.append, when, sleep=vm_appears)
    run.create_started = True  # the signal came before gcloud answered
    assert run.delete_builder()
    assert looks == [image_build.DELETE_LOOK_SECONDS] * 2
    assert not (instances / run.builder).exists()


@pytest.mark.parametrize(
    ("family", "message"),
    [
        ("my-images", "starting with vllm-host-"),
        ("vllm-host-" + "x" * 40, "at most 48 characters"),
        ("vllm-host-UPPER", "lowercase letters"),
    ],
)
def test_a_family_the_plan_cannot_recognise_is_refused(
    family: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        image_build.main([*ARGS, "--family", family])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_model_image_without_tag_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        image_build.main([*ARGS, "--model-image", "vllm/vllm-openai"])
    assert (
        "--model-image: 'vllm/vllm-openai' is not valid; expected something like "
        "vllm/vllm-openai:v0.32.0" in capsys.readouterr().err
    )


def test_a_prepared_image_is_told_from_its_reference() -> None:
    prepared = [
        "projects/my-project/global/images/family/vllm-host-2404-nvidia-580",
        "projects/my-project/global/images/vllm-host-2404-nvidia-580-v20261201-1850",
    ]
    not_prepared = [
        catalogue.DEFAULT_HOST_IMAGE,
        "projects/my-project/global/images/family/my-host",
        "not a reference",
    ]
    assert [image_build.is_prepared_image(ref) for ref in prepared + not_prepared] == [
        True, True, False, False, False,
    ]  # fmt: skip


def test_label_values_keep_only_what_labels_allow() -> None:
    assert image_build.label_value("vllm/vllm-openai@sha256:ABC") == "vllm-vllm-openai-sha256-abc"
    assert image_build.label_value("x" * 80) == "x" * 63
    assert image_build.label_value("") == "none"


def test_the_cli_lists_the_image_command() -> None:
    assert "image" in cli.COMMANDS
    assert "image" in cli.parser().format_help()


def test_private_mode_on_the_default_image_names_the_command() -> None:
    raw = stack_config("prod", {"vllm-gcp:network": {"exposure": "private"}})
    with pytest.raises(ConfigError) as caught:
        validate({k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, "prod")
    [image] = [p for p in caught.value.problems if p.key == "vllm-gcp:host.image"]
    assert "`vllm-gcp image build --project PROJECT --zone ZONE`" in image.message
    assert f"family/{image_build.DEFAULT_FAMILY} " in image.message


PROJECT = ["--project", "my-project"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["instances", "stop", "b", "--zone", "us-central1-a", "--force", *PROJECT], "--force"),
        (["images", "create", "i", *PROJECT], "--source-disk: Must be specified"),
        (["instances", "delete", "b", "--zone", "us-central1-a"], "[project] is not"),
        (["images", "create", "i", "--source-disk", "b", "--labels", "A=b", *PROJECT], "label"),
    ],
)
def test_the_gcloud_stand_in_refuses_what_gcloud_refuses(
    gcloud: Path, args: list[str], message: str
) -> None:
    refused = subprocess.run(
        ["gcloud", "compute", *args], capture_output=True, text=True, check=False
    )
    assert refused.returncode != 0
    assert message in refused.stderr
