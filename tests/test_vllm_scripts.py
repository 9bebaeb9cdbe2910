"""The vLLM server's host-side scripts, rendered as the component renders them and run with
recording stand-ins for sudo, docker, systemctl, journalctl and curl (tests/fakebin_vllm); the
time limits run through the same wrapper as on the host (remote_access.step_command)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from components import host_bundle as bundle
from components import host_paths, vllm_server
from components.config import ModelConfig
from components.remote_access import step_command, step_limit_seconds
from tests.harness import assert_shell_clean, systemd_split

FAKEBIN = Path(__file__).resolve().parent / "fakebin_vllm"
SCRIPTS = ("wait_host_ready.sh", "write_secrets.sh", "install_vllm.sh", "wait_serving.sh")
API_KEY = "k3yABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrs"
HF_TOKEN = "hf_standintoken0123456789"
SERVED_NAME = "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
MODELS_BODY = f'{{"object":"list","data":[{{"id":"{SERVED_NAME}","object":"model"}}]}}'
MARKER = f"{bundle.OFFLINE_MARKER_DIR}/served-0123456789abcdef.env"
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
        self,
        script: str,
        stdin: str = "",
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        # As on the host: the script is the SSH command, run by the login shell (bash).
        return self.run_argv(["bash", "-c", script], stdin, env, timeout)

    def environment(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "PATH": f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.state),
            "VLLM_GCP_ROOT": str(self.root),
            "FAKE_STATE": str(self.state),
            **(env or {}),
        }

    def run_argv(
        self,
        argv: list[str],
        stdin: str = "",
        env: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            input=stdin,
            env=self.environment(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


# The scripts as the component renders them (its own functions), with shorter waits.


def wait_host_script(timeout_seconds: int = 600) -> str:
    return bundle.host_ready_script(timeout_seconds)


def secrets_script() -> str:
    return bundle.secrets_script()


def install_script(image: str = "vllm/vllm-openai:v0.32.0", registry_host: str = "") -> str:
    return bundle.run_script(image, registry_host or None)


def serving_script(served_name: str = SERVED_NAME, marker: str = MARKER) -> str:
    return bundle.serving_script(served_name, marker, timeout_seconds=600)


def unit_shell(
    program: str, registry_host: str | None = None, model: ModelConfig | None = None
) -> list[str]:
    """The unit's `/bin/sh -c SCRIPT <program> ARGS...` pre-start command, split as by systemd."""
    image = "vllm/vllm-openai:v0.32.0"
    spec = bundle.container_spec(model or ModelConfig(), 2, image)
    unit = bundle.vllm_unit(spec, image, registry_host)
    for line in unit.splitlines():
        if not line.startswith("ExecStartPre="):
            continue
        argv = systemd_split(line.removeprefix("ExecStartPre=").removeprefix("-"))
        if argv[:2] == ["/bin/sh", "-c"] and argv[3] == program:
            return argv
    raise AssertionError(f"no ExecStartPre runs {program}")


def journal_with_secrets() -> str:
    """A journal as vLLM releases before PR #52523 could write it: the key in a startup line."""
    return (
        "INFO api_server.py: vLLM API server version 0.11.0\n"
        f"INFO api_server.py: non-default args: {{'model': 'm', 'api_key': ['{API_KEY}']}}\n"
        f"DEBUG hub: using token {HF_TOKEN}\n"
        "torch.OutOfMemoryError: CUDA out of memory\n"
    )


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert API_KEY not in text
        assert HF_TOKEN not in text


# ------------------------------------------------------------------------------------------------
# Static checks


@pytest.mark.parametrize("name", SCRIPTS)
def test_rendered_scripts_pass_shellcheck_and_bash_n(name: str) -> None:
    rendered = {
        "wait_host_ready.sh": wait_host_script(),
        "write_secrets.sh": secrets_script(),
        "install_vllm.sh": install_script(),
        "wait_serving.sh": serving_script(),
    }[name]
    assert_shell_clean(rendered)


# An image that cannot stream from Cloud Storage: the unit copies the weights before each start.
GCS_COPY_MODEL = ModelConfig(
    image="vllm/vllm-openai:v0.11.0", source="gcs", gcs_uri="gs://weights-bucket/mistral"
)


@pytest.mark.parametrize("program", ["start-gate", "pull-if-absent", "weights-copy"])
def test_the_units_shell_commands_pass_shellcheck(program: str) -> None:
    shell = unit_shell(program, "us-central1-docker.pkg.dev", GCS_COPY_MODEL)
    assert_shell_clean(shell[2], dialect="sh")


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


def fake_startup(host: Host, body: str) -> None:
    """What the stand-in google_metadata_script_runner runs: the startup script's effect."""
    script = host.state / "startup"
    script.write_text(f"#!/usr/bin/env bash\nset -euo pipefail\n{body}\n")
    script.chmod(0o755)


def test_wait_host_reruns_a_failed_startup_script_once_and_waits_for_it(host: Host) -> None:
    host.write(host_paths.STARTUP_FAILED_MARKER, "IAM grant not yet visible\n")
    failed = host.path(host_paths.STARTUP_FAILED_MARKER)
    ready = host.path(host_paths.READY_MARKER)
    fake_startup(host, f"rm -f '{failed}'\necho 'startup: all GPUs seen'\ntouch '{ready}'")
    result = host.run(wait_host_script(), env=FAST)
    assert result.returncode == 0, result.stderr
    assert "the startup script failed: IAM grant not yet visible" in result.stdout
    assert "running it once more" in result.stdout
    assert "startup: all GPUs seen" in result.stdout
    assert "host ready after" in result.stdout
    assert host.calls().count("google_metadata_script_runner startup") == 1
    # As root, under a limit of its own (timeout inside sudo reaches the script it runs).
    (rerun,) = [c for c in host.calls() if c.startswith("sudo") and "metadata_script" in c]
    assert rerun == "sudo -n timeout --kill-after=10 1200 google_metadata_script_runner startup"


def test_wait_host_fails_fast_with_the_startup_log(host: Host) -> None:
    host.write(host_paths.STARTUP_FAILED_MARKER, "nvidia-smi saw 1 of 2 GPUs\n")
    host.write(host_paths.STARTUP_LOG, "".join(f"startup line {i}\n" for i in range(1, 41)))
    started = time.monotonic()
    result = host.run(wait_host_script(), env={"VLLM_GCP_POLL_SECONDS": "5"})
    assert time.monotonic() - started < 4, "must not wait out a poll interval, let alone a timeout"
    assert result.returncode == 1
    assert "the startup script failed again" in result.stderr
    assert "nvidia-smi saw 1 of 2 GPUs" in result.stderr
    runs = [c for c in host.calls() if c.startswith("google_metadata_script_runner")]
    assert runs == ["google_metadata_script_runner startup"]  # once, then the log
    assert "startup line 40" in result.stderr
    assert "startup line 11" in result.stderr  # the last 30 lines ...
    assert "startup line 10\n" not in result.stderr  # ... and no more


def test_wait_host_warns_of_a_driver_reboot_and_keeps_waiting(host: Host) -> None:
    host.write(host_paths.REBOOTING_MARKER, "")

    def mark_ready_later() -> None:
        time.sleep(0.5)
        host.write(host_paths.READY_MARKER, "")

    writer = threading.Thread(target=mark_ready_later)
    writer.start()
    result = host.run(wait_host_script(), env=FAST)
    writer.join()
    assert result.returncode == 0, result.stderr
    message = "host rebooting to load the NVIDIA driver; run pulumi up again"
    assert result.stdout.count(message) == 1
    assert "host ready after" in result.stdout


def test_wait_host_fails_clearly_when_the_reboot_ends_the_session(host: Host) -> None:
    host.write(host_paths.REBOOTING_MARKER, "")
    waiting = subprocess.Popen(
        ["bash", "-c", wait_host_script()],
        env=host.environment(FAST),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert waiting.stdout is not None
    assert "host rebooting" in waiting.stdout.readline()
    waiting.send_signal(signal.SIGTERM)  # what the shutdown does to the SSH session
    _, stderr = waiting.communicate(timeout=10)
    assert waiting.returncode == 1
    assert "host rebooting to load the NVIDIA driver; run pulumi up again" in stderr


def test_wait_host_times_out_with_the_startup_log(host: Host) -> None:
    host.write(host_paths.STARTUP_LOG, "still installing the driver\n")
    result = host.run(wait_host_script(timeout_seconds=1), env=FAST)
    assert result.returncode == 1
    assert "never appeared" in result.stderr
    assert "still installing the driver" in result.stderr


# ------------------------------------------------------------------------------------------------
# Step 2: the secrets env file


def test_secrets_are_written_root_only_from_stdin_and_never_echoed(host: Host) -> None:
    content = bundle.secrets_env(API_KEY, HF_TOKEN)
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
    assert host.run(secrets_script(), stdin=bundle.secrets_env(API_KEY, None)).returncode == 0
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
    assert host.path(f"/etc/systemd/system/{bundle.SERVICE_NAME}").read_text() == unit
    assert host.path(bundle.HF_CACHE_DIR).is_dir()
    assert host.path(bundle.VLLM_CACHE_DIR).is_dir()
    calls = [c for c in host.calls() if not c.startswith("sudo ")]
    assert calls == [
        "docker pull vllm/vllm-openai:v0.32.0",
        "systemctl daemon-reload",
        f"systemctl enable --quiet {bundle.SERVICE_NAME}",
        f"systemctl restart {bundle.SERVICE_NAME}",
    ]


@pytest.mark.parametrize(
    ("baked", "said"),
    [
        (
            "vllm/vllm-openai:v0.32.0",
            "vllm/vllm-openai:v0.32.0 is the image the prepared host image holds: nothing to "
            "download",
        ),
        (
            "vllm/vllm-openai:v0.31.0",
            "the prepared host image holds vllm/vllm-openai:v0.31.0, not "
            "vllm/vllm-openai:v0.32.0: pulling vllm/vllm-openai:v0.32.0 (only its missing layers)",
        ),
    ],
    ids=["baked-image", "another-image"],
)
def test_install_on_a_prepared_image_says_whether_the_image_is_baked_in(
    host: Host, baked: str, said: str
) -> None:
    host.write(host_paths.PREPARED_IMAGE_MARKER, f"BUILT_AT=2026-12-01\nVLLM_IMAGE={baked}\n")
    result = host.run(install_script(), stdin="[Service]\nExecStart=/usr/bin/docker run vllm\n")
    assert result.returncode == 0, result.stderr
    assert said in result.stdout + result.stderr
    # Pulled all the same: the pull of a present image only checks its tag.
    assert "docker pull vllm/vllm-openai:v0.32.0" in host.calls()


def test_install_makes_the_caches_root_only_even_where_they_exist(host: Host) -> None:
    # vLLM before PR #52523 wrote the key into the compile cache (cache_key_factors.json).
    host.path(bundle.VLLM_CACHE_DIR).mkdir(parents=True, mode=0o755)
    host.path(bundle.VLLM_CACHE_DIR).chmod(0o755)
    result = host.run(install_script(), stdin="ExecStart=/usr/bin/docker run vllm\n")
    assert result.returncode == 0, result.stderr
    for directory in (bundle.HF_CACHE_DIR, bundle.VLLM_CACHE_DIR):
        assert stat.S_IMODE(host.path(directory).stat().st_mode) == 0o700, directory


def test_install_logs_in_to_the_mirror_before_pulling(host: Host) -> None:
    # The helper the startup script installed (tests/test_startup_script.py), as a recorder.
    login = host.write(
        host_paths.REGISTRY_LOGIN_PATH,
        '#!/usr/bin/env bash\necho "registry-login $*" >>"$FAKE_STATE/calls"\n',
    )
    login.chmod(0o755)
    mirror = "us-central1-docker.pkg.dev/p/r/vllm/vllm-openai:v0.32.0"
    script = install_script(mirror, "us-central1-docker.pkg.dev")
    result = host.run(script, stdin="ExecStart=/usr/bin/docker run vllm\n")
    assert result.returncode == 0, result.stderr
    calls = [c for c in host.calls() if not c.startswith("sudo ")]
    assert calls[:2] == ["registry-login us-central1-docker.pkg.dev", f"docker pull {mirror}"]


def test_install_fails_on_a_bad_image_before_touching_the_unit(host: Host) -> None:
    host.fake("pull_fails")
    result = host.run(install_script("vllm/vllm-openai:v9.9.9"), stdin="ExecStart=/bin/true\n")
    assert result.returncode != 0
    assert "manifest unknown" in result.stderr
    assert not host.path(f"/etc/systemd/system/{bundle.SERVICE_NAME}").exists()


def test_install_fails_with_the_journal_when_the_service_does_not_start(host: Host) -> None:
    host.fake("restart_fails")
    host.fake("journal", "gcloud: storage rsync: 403 Forbidden\n")
    result = host.run(install_script(), stdin="ExecStart=/bin/true\n")
    assert result.returncode == 1
    assert "403 Forbidden" in result.stderr


def test_install_leaves_journal_lines_holding_a_secret_out(host: Host) -> None:
    host.write(host_paths.SECRETS_ENV_FILE, bundle.secrets_env(API_KEY, HF_TOKEN))
    host.fake("restart_fails")
    host.fake("journal", journal_with_secrets())
    result = host.run(install_script(), stdin="ExecStart=/bin/true\n")
    assert result.returncode == 1
    assert "vLLM API server version 0.11.0" in result.stderr
    assert "CUDA out of memory" in result.stderr
    assert "non-default args" not in result.stderr
    assert_no_secret(result.stdout, result.stderr, "\n".join(host.calls()))


# ------------------------------------------------------------------------------------------------
# Step 4: wait until serving


def serving_host(host: Host) -> None:
    host.write(host_paths.SECRETS_ENV_FILE, bundle.secrets_env(API_KEY, HF_TOKEN))
    host.path(bundle.OFFLINE_MARKER_DIR).mkdir(parents=True, exist_ok=True)
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


def test_serving_leaves_journal_lines_holding_a_secret_out(host: Host) -> None:
    serving_host(host)
    host.fake("serve_after", "1000000")
    host.fake("state", "failed")
    host.fake("journal", journal_with_secrets())
    result = host.run(serving_script(), env=FAST)
    assert result.returncode == 1
    assert "CUDA out of memory" in result.stderr
    assert "non-default args" not in result.stderr
    assert_no_secret(result.stdout, result.stderr, "\n".join(host.calls()))


def test_serving_progress_never_shows_a_line_holding_the_key(host: Host) -> None:
    serving_host(host)
    host.fake("serve_after", "2")
    host.fake("journal", journal_with_secrets().splitlines()[1] + "\n")
    result = host.run(serving_script(), env=FAST)
    assert result.returncode == 0, result.stderr
    assert "waiting for" in result.stdout
    assert_no_secret(result.stdout, result.stderr, "\n".join(host.calls()))


def test_serving_with_no_marker_and_an_awkward_served_name(host: Host) -> None:
    awkward = "team's model"
    serving_host(host)
    host.fake("models", f'{{"object":"list","data":[{{"id":"{awkward}"}}]}}')
    result = host.run(serving_script(served_name=awkward, marker=""), env=FAST)
    assert result.returncode == 0, result.stderr
    assert f"vLLM serves {awkward}" in result.stdout
    assert not any(host.path(bundle.OFFLINE_MARKER_DIR).iterdir())


# ------------------------------------------------------------------------------------------------
# Time limits: each operation's own (scripts/host_lib.sh `bounded`), and the step's, from the
# wrapper host_step puts around every script (remote_access.step_command)

# Enough for a limit of a second or two to act; a script without its limit runs into it and fails.
HANG_TIMEOUT = 10


def test_a_hanging_pull_is_cut_off_by_its_own_limit_and_named(host: Host) -> None:
    host.fake("pull_hangs")
    step = step_command(install_script(), step_limit_seconds(vllm_server.RUN_TIMEOUT_MINUTES))
    started = time.monotonic()
    result = host.run(
        step,
        stdin="ExecStart=/bin/true\n",
        env={"VLLM_GCP_OPERATION_LIMIT_SECONDS": "1"},
        timeout=HANG_TIMEOUT,
    )
    assert time.monotonic() - started < 5
    assert result.returncode == 124
    assert "[run vllm] timed out after 1 s: pulling vllm/vllm-openai:v0.32.0" in result.stderr
    assert not host.path(f"/etc/systemd/system/{bundle.SERVICE_NAME}").exists()
    assert not any(c.startswith("systemctl restart") for c in host.calls())


def test_a_step_hung_in_a_wait_is_cut_off_by_the_step_limit_and_names_it(host: Host) -> None:
    # The script's own wait (600 s) is far off: the step's limit ends it.
    step = step_command(wait_host_script(timeout_seconds=600), limit_seconds=1)
    started = time.monotonic()
    result = host.run(step, env=FAST, timeout=HANG_TIMEOUT)
    assert time.monotonic() - started < 5
    assert result.returncode == 124
    ready = host.path(host_paths.READY_MARKER)
    assert (
        f"[host ready] timed out after 1 s (this step's time limit): waiting for {ready} "
        "(the startup script: drivers, Docker, GPU check, cache)"
    ) in result.stderr


def test_the_step_limit_stops_the_operation_in_flight_and_names_it(host: Host) -> None:
    host.write(host_paths.STARTUP_FAILED_MARKER, "IAM grant not yet visible\n")
    fake_startup(host, "exec sleep 30")  # a rerun of the startup script that never ends
    # Long enough for the rerun to start on a busy machine, short for a test.
    step = step_command(wait_host_script(timeout_seconds=600), limit_seconds=3)
    started = time.monotonic()
    # capture_output waits for every process holding the output: none may be left behind.
    result = host.run(step, env=FAST, timeout=HANG_TIMEOUT)
    assert time.monotonic() - started < 10
    assert result.returncode == 124
    assert (
        "[host ready] timed out after 3 s (this step's time limit): "
        "running the startup script once more (its own limit: 1200 s)"
    ) in result.stderr


def test_a_second_term_while_the_step_stops_does_not_cut_its_stop_short(host: Host) -> None:
    # GNU timeout signals the script and then its process group: two TERMs, the second while
    # the trap runs (coreutils src/timeout.c, cleanup).
    host.write(host_paths.STARTUP_FAILED_MARKER, "IAM grant not yet visible\n")
    fake_startup(host, "exec sleep 30")
    script = step_command(wait_host_script(timeout_seconds=600), limit_seconds=600)
    process = subprocess.Popen(
        ["bash", "-c", script],
        env=host.environment(FAST),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + HANG_TIMEOUT
    while "google_metadata_script_runner startup" not in host.calls():
        assert time.monotonic() < deadline, "the rerun never started"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    time.sleep(0.05)  # the trap is running now
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=HANG_TIMEOUT)
    assert "[host ready] stopped by SIGTERM after " in stderr
    assert stderr.rstrip().endswith(
        ": running the startup script once more (its own limit: 1200 s)"
    )


def test_a_secrets_step_stopped_by_its_limit_leaves_no_partial_file(host: Host) -> None:
    step = step_command(secrets_script(), limit_seconds=1)
    # stdin that never ends: the step waits on it until its limit.
    with subprocess.Popen(
        ["bash", "-c", step],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=host.environment(),
        text=True,
    ) as step_process:
        assert step_process.stdin is not None
        step_process.stdin.write(f"VLLM_API_KEY={API_KEY}\n")
        step_process.stdin.flush()
        returncode = step_process.wait(timeout=HANG_TIMEOUT)
        step_process.stdin.close()
        assert step_process.stderr is not None
        stderr = step_process.stderr.read()
    assert returncode == 124
    config_dir = host.path(host_paths.CONFIG_DIR)
    assert "this step's time limit): writing" in stderr
    assert list(config_dir.iterdir()) == []
    assert API_KEY not in stderr


# ------------------------------------------------------------------------------------------------
# The unit's pre-start commands, run with the stand-ins


def test_start_gate_passes_once_the_host_is_ready(host: Host) -> None:
    gate = unit_shell("start-gate")
    ready, failed, log = (str(host.path(p)) for p in gate[4:])
    host.write(host_paths.READY_MARKER, "")
    result = host.run_argv([*gate[:4], ready, failed, log])
    assert result.returncode == 0, result.stderr


def test_start_gate_fails_at_once_when_the_startup_script_failed(host: Host) -> None:
    gate = unit_shell("start-gate")
    host.write(host_paths.STARTUP_FAILED_MARKER, "no GPUs\n")
    started = time.monotonic()
    result = host.run_argv([*gate[:4], *(str(host.path(p)) for p in gate[4:])])
    assert time.monotonic() - started < 4
    assert result.returncode == 1
    assert f"the startup script failed (see {host.path(host_paths.STARTUP_LOG)})" in result.stderr


def test_start_gate_keeps_waiting_for_the_startup_script(host: Host) -> None:
    gate = unit_shell("start-gate")
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(
            [*gate[:4], *(str(host.path(p)) for p in gate[4:])],
            capture_output=True,
            timeout=1,
            check=False,
        )


def test_the_unit_pulls_nothing_when_the_image_is_present(host: Host) -> None:
    result = host.run_argv(unit_shell("pull-if-absent"))
    assert result.returncode == 0, result.stderr
    assert host.calls() == ["docker image inspect vllm/vllm-openai:v0.32.0"]


def test_the_unit_logs_in_and_pulls_an_absent_image(host: Host) -> None:
    recorder = host.state / "registry-login"
    recorder.write_text('#!/usr/bin/env bash\necho "registry-login $*" >>"$FAKE_STATE/calls"\n')
    recorder.chmod(0o755)
    pull = unit_shell("pull-if-absent", "us-central1-docker.pkg.dev")
    assert pull[-1] == host_paths.REGISTRY_LOGIN_PATH
    pull[-1] = str(recorder)
    host.fake("image_absent")
    result = host.run_argv(pull)
    assert result.returncode == 0, result.stderr
    assert host.calls() == [
        "docker image inspect vllm/vllm-openai:v0.32.0",
        "registry-login us-central1-docker.pkg.dev",
        "docker pull vllm/vllm-openai:v0.32.0",
    ]
