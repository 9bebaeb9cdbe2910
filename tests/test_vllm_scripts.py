"""The vLLM server's host-side scripts, rendered as the component renders them and run with
recording stand-ins for sudo, docker, systemctl, journalctl and curl (tests/fakebin_vllm)."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from components import host_paths
from components import vllm_server as vllm
from components.templates import SCRIPTS_DIR

FAKEBIN = Path(__file__).resolve().parent / "fakebin_vllm"
SHELLCHECK = Path(__file__).resolve().parents[1] / "venv" / "bin" / "shellcheck"
SCRIPTS = ("wait_host_ready.sh", "write_secrets.sh", "install_vllm.sh", "wait_serving.sh")
API_KEY = "k3yABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrs"
HF_TOKEN = "hf_standintoken0123456789"
SERVED_NAME = "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
MODELS_BODY = f'{{"object":"list","data":[{{"id":"{SERVED_NAME}","object":"model"}}]}}'
MARKER = f"{vllm.OFFLINE_MARKER_DIR}/served-0123456789abcdef.env"
FAST = {"VLLM_GCP_POLL_SECONDS": "0.05", "VLLM_GCP_PROGRESS_SECONDS": "0"}


class Host:
    """A temporary host root (VLLM_GCP_ROOT) plus the stand-ins' state directory."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.state = tmp_path / "state"
        self.root.mkdir()
        self.state.mkdir()
        (self.root / "etc/systemd/system").mkdir(parents=True)  # as on any systemd host

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def write(self, host_path: str, text: str) -> Path:
        target = self.path(host_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def fake(self, name: str, text: str = "") -> None:
        (self.state / name).write_text(text)

    def calls(self) -> list[str]:
        calls = self.state / "calls"
        return calls.read_text().splitlines() if calls.exists() else []

    def run(
        self, script: str, stdin: str = "", env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        environment = {
            "PATH": f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.state),
            "VLLM_GCP_ROOT": str(self.root),
            "FAKE_STATE": str(self.state),
            **(env or {}),
        }
        # As on the host: the script is the SSH command, run by the login shell (bash).
        return subprocess.run(
            ["bash", "-c", script],
            input=stdin,
            env=environment,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def wait_host_script(timeout_seconds: int = 600) -> str:
    return vllm.render_script(
        "wait_host_ready.sh",
        {
            "READY_MARKER": host_paths.READY_MARKER,
            "STARTUP_FAILED_MARKER": host_paths.STARTUP_FAILED_MARKER,
            "STARTUP_LOG": host_paths.STARTUP_LOG,
            "TIMEOUT_SECONDS": str(timeout_seconds),
        },
    )


def secrets_script() -> str:
    return vllm.render_script(
        "write_secrets.sh",
        {"CONFIG_DIR": host_paths.CONFIG_DIR, "SECRETS_ENV_FILE": host_paths.SECRETS_ENV_FILE},
    )


def install_script(
    image: str = "vllm/vllm-openai:v0.32.0", registry_host: str = "", login_script: str = ""
) -> str:
    return vllm.render_script(
        "install_vllm.sh",
        {
            "IMAGE": image,
            "SERVICE_NAME": vllm.SERVICE_NAME,
            "CACHE_DIRS": f"{vllm.HF_CACHE_DIR} {vllm.VLLM_CACHE_DIR}",
            "REGISTRY_HOST": registry_host,
            "REGISTRY_LOGIN_PATH": vllm.REGISTRY_LOGIN_PATH,
            "REGISTRY_LOGIN_SCRIPT": login_script,
        },
    )


def serving_script(served_name: str = SERVED_NAME, marker: str = MARKER) -> str:
    return vllm.render_script(
        "wait_serving.sh",
        {
            "SERVICE_NAME": vllm.SERVICE_NAME,
            "MODELS_URL": "http://127.0.0.1:8000/v1/models",
            "SERVED_MODEL_NAME": served_name,
            "SECRETS_ENV_FILE": host_paths.SECRETS_ENV_FILE,
            "OFFLINE_MARKER": marker,
            "TIMEOUT_SECONDS": "600",
        },
    )


# ------------------------------------------------------------------------------------------------
# Static checks


@pytest.mark.parametrize("name", SCRIPTS)
def test_templates_and_rendered_scripts_pass_shellcheck_and_bash_n(name: str) -> None:
    rendered = {
        "wait_host_ready.sh": wait_host_script(),
        "write_secrets.sh": secrets_script(),
        "install_vllm.sh": install_script(),
        "wait_serving.sh": serving_script(),
    }[name]
    for text in (rendered, (SCRIPTS_DIR / name).read_text()):
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)
        if SHELLCHECK.exists():
            checked = subprocess.run(
                [str(SHELLCHECK), "-S", "warning", "-s", "bash", "-"],
                input=text,
                capture_output=True,
                text=True,
                check=False,
            )
            assert checked.returncode == 0, checked.stdout


def test_stand_ins_pass_shellcheck() -> None:
    if not SHELLCHECK.exists():
        pytest.skip("shellcheck not installed in the venv")
    files = sorted(str(p) for p in FAKEBIN.iterdir())
    checked = subprocess.run(
        [str(SHELLCHECK), "-S", "warning", *files], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout


# ------------------------------------------------------------------------------------------------
# Step 1: wait for the host


def test_wait_host_ends_when_the_ready_marker_appears(host: Host) -> None:
    def mark_ready_later() -> None:
        time.sleep(0.3)
        host.write(host_paths.READY_MARKER, "")

    writer = threading.Thread(target=mark_ready_later)
    writer.start()
    result = host.run(wait_host_script(), env=FAST)
    writer.join()
    assert result.returncode == 0, result.stderr
    assert "waiting for the startup script" in result.stdout
    assert host_paths.READY_MARKER in result.stdout
    assert "host ready after" in result.stdout
    assert any(c.startswith("sudo -n test -f") for c in host.calls())


def test_wait_host_fails_fast_with_the_startup_log(host: Host) -> None:
    host.write(host_paths.STARTUP_FAILED_MARKER, "nvidia-smi saw 1 of 2 GPUs\n")
    host.write(host_paths.STARTUP_LOG, "".join(f"startup line {i}\n" for i in range(1, 41)))
    started = time.monotonic()
    result = host.run(wait_host_script(), env={"VLLM_GCP_POLL_SECONDS": "5"})
    assert time.monotonic() - started < 4, "must not wait out a poll interval, let alone a timeout"
    assert result.returncode == 1
    assert "the startup script failed" in result.stderr
    assert "nvidia-smi saw 1 of 2 GPUs" in result.stderr
    assert "startup line 40" in result.stderr
    assert "startup line 11" in result.stderr  # the last 30 lines ...
    assert "startup line 10\n" not in result.stderr  # ... and no more


def test_wait_host_times_out_with_the_startup_log(host: Host) -> None:
    host.write(host_paths.STARTUP_LOG, "still installing the driver\n")
    result = host.run(wait_host_script(timeout_seconds=1), env=FAST)
    assert result.returncode == 1
    assert "never appeared" in result.stderr
    assert "still installing the driver" in result.stderr


# ------------------------------------------------------------------------------------------------
# Step 2: the secrets env file


def test_secrets_are_written_root_only_from_stdin_and_never_echoed(host: Host) -> None:
    content = vllm.secrets_env(API_KEY, HF_TOKEN)
    result = host.run(secrets_script(), stdin=content)
    assert result.returncode == 0, result.stderr
    written = host.path(host_paths.SECRETS_ENV_FILE)
    assert written.read_text() == content
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE(written.parent.stat().st_mode) == 0o700
    assert [p.name for p in written.parent.iterdir()] == ["secrets.env"]  # no staged leftovers
    for text in (result.stdout, result.stderr, "\n".join(host.calls())):
        assert API_KEY not in text
        assert HF_TOKEN not in text


def test_secrets_without_a_key_leave_the_old_file(host: Host) -> None:
    assert host.run(secrets_script(), stdin=vllm.secrets_env(API_KEY, None)).returncode == 0
    result = host.run(secrets_script(), stdin="HF_TOKEN=hf_x\n")
    assert result.returncode == 1
    assert "no VLLM_API_KEY" in result.stderr
    assert host.path(host_paths.SECRETS_ENV_FILE).read_text() == f"VLLM_API_KEY={API_KEY}\n"


# ------------------------------------------------------------------------------------------------
# Step 3: install and restart


def test_install_pulls_writes_the_unit_and_restarts(host: Host) -> None:
    unit = "[Service]\nExecStart=/usr/bin/docker run vllm\n"
    result = host.run(install_script(), stdin=unit)
    assert result.returncode == 0, result.stderr
    assert host.path(f"/etc/systemd/system/{vllm.SERVICE_NAME}").read_text() == unit
    assert host.path(vllm.HF_CACHE_DIR).is_dir()
    assert host.path(vllm.VLLM_CACHE_DIR).is_dir()
    calls = [c for c in host.calls() if not c.startswith("sudo ")]
    assert calls == [
        "docker pull vllm/vllm-openai:v0.32.0",
        "systemctl daemon-reload",
        f"systemctl enable --quiet {vllm.SERVICE_NAME}",
        f"systemctl restart {vllm.SERVICE_NAME}",
    ]


def test_install_logs_in_to_the_mirror_before_pulling(host: Host) -> None:
    recorder = '#!/usr/bin/env bash\necho "registry-login $*" >>"$FAKE_STATE/calls"\n'
    mirror = "us-central1-docker.pkg.dev/p/r/vllm/vllm-openai:v0.32.0"
    script = install_script(mirror, "us-central1-docker.pkg.dev", recorder)
    result = host.run(script, stdin="ExecStart=/usr/bin/docker run vllm\n")
    assert result.returncode == 0, result.stderr
    login = host.path(vllm.REGISTRY_LOGIN_PATH)
    assert login.read_text() == recorder
    assert os.access(login, os.X_OK)
    calls = [c for c in host.calls() if not c.startswith("sudo ")]
    assert calls[:2] == ["registry-login us-central1-docker.pkg.dev", f"docker pull {mirror}"]


def test_install_fails_on_a_bad_image_before_touching_the_unit(host: Host) -> None:
    host.fake("pull_fails")
    result = host.run(install_script("vllm/vllm-openai:v9.9.9"), stdin="ExecStart=/bin/true\n")
    assert result.returncode != 0
    assert "manifest unknown" in result.stderr
    assert not host.path(f"/etc/systemd/system/{vllm.SERVICE_NAME}").exists()


def test_install_fails_with_the_journal_when_the_service_does_not_start(host: Host) -> None:
    host.fake("restart_fails")
    host.fake("journal", "gcloud: storage rsync: 403 Forbidden\n")
    result = host.run(install_script(), stdin="ExecStart=/bin/true\n")
    assert result.returncode == 1
    assert "403 Forbidden" in result.stderr


# ------------------------------------------------------------------------------------------------
# Step 4: wait until serving


def serving_host(host: Host) -> None:
    host.write(host_paths.SECRETS_ENV_FILE, vllm.secrets_env(API_KEY, HF_TOKEN))
    host.path(vllm.OFFLINE_MARKER_DIR).mkdir(parents=True, exist_ok=True)
    host.fake("expected_header", f"Authorization: Bearer {API_KEY}\n")
    host.fake("models", MODELS_BODY)


def test_serving_succeeds_when_the_model_is_listed_and_marks_the_weights_cached(
    host: Host,
) -> None:
    serving_host(host)
    host.fake("serve_after", "3")
    host.fake("journal", "Loading weights took 41.2 secs\rprogress 99%\r\n")
    result = host.run(serving_script(), env=FAST)
    assert result.returncode == 0, result.stderr
    assert f"vLLM serves {SERVED_NAME}" in result.stdout
    assert "progress 99%" in result.stdout  # the latest log line, progress bar updates folded
    assert (host.state / "last_header").read_text() == f"Authorization: Bearer {API_KEY}\n"
    assert host.path(MARKER).read_text() == "HF_HUB_OFFLINE=1\n"
    for text in (result.stdout, result.stderr, "\n".join(host.calls())):
        assert API_KEY not in text  # the key is in a header file, never an argument


def test_serving_waits_for_the_served_name_not_any_model(host: Host) -> None:
    serving_host(host)
    host.fake("models", '{"object":"list","data":[{"id":"some/other-model"}]}')
    result = host.run(serving_script(), env={**FAST, "VLLM_GCP_TIMEOUT_SECONDS": "1"})
    assert result.returncode == 1
    assert "not served after" in result.stderr
    assert not host.path(MARKER).exists()


def test_serving_fails_with_the_log_when_the_container_keeps_exiting(host: Host) -> None:
    serving_host(host)
    host.fake("serve_after", "1000000")
    host.fake("crashing")
    journal = "".join(f"vllm line {i}\n" for i in range(1, 61))
    host.fake("journal", journal + "ValueError: unrecognized arguments: --bogus\n")
    result = host.run(serving_script(), env=FAST)
    assert result.returncode == 1
    assert "the container exited 2 times" in result.stderr
    assert "unrecognized arguments: --bogus" in result.stderr
    assert "vllm line 12\n" in result.stderr  # the last 50 lines ...
    assert "vllm line 11\n" not in result.stderr  # ... and no more
    assert not host.path(MARKER).exists()


def test_serving_fails_at_once_when_the_service_has_failed(host: Host) -> None:
    serving_host(host)
    host.fake("serve_after", "1000000")
    host.fake("state", "failed")
    host.fake("journal", "torch.OutOfMemoryError: CUDA out of memory\n")
    result = host.run(serving_script(), env=FAST)
    assert result.returncode == 1
    assert "is failed" in result.stderr
    assert "CUDA out of memory" in result.stderr


def test_serving_with_no_marker_and_an_awkward_served_name(host: Host) -> None:
    awkward = "team's model"
    serving_host(host)
    host.fake("models", f'{{"object":"list","data":[{{"id":"{awkward}"}}]}}')
    result = host.run(serving_script(served_name=awkward, marker=""), env=FAST)
    assert result.returncode == 0, result.stderr
    assert f"vLLM serves {awkward}" in result.stdout
    assert not any(host.path(vllm.OFFLINE_MARKER_DIR).iterdir())
