"""The prepared image on the host: scripts/prepare_image.sh on the builder, then scripts/startup.sh
on a VM made from its disk, both under the startup script's stand-ins (tests/fakebin/standin.sh)
plus the builder's own (tests/fakebin_image: the metadata server's guest attributes, dpkg-query's
versions, modinfo, cloud-init, journalctl)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from components import catalogue, host_paths
from components.host_bundle import GPU_CHECK_IMAGE, OpsAgent, startup_script
from tests.harness import ROOT, assert_shell_clean
from tests.test_startup_script import A2_ULTRA_2G, A2_ULTRA_8G, INSTALLS, Host
from tools import image_build

FAKEBIN = Path(__file__).resolve().parent / "fakebin_image"
VLLM_IMAGE = catalogue.DEFAULT_VLLM_IMAGE
# What a GCE VM of the accelerator image holds that makes it itself, or that no image may hold.
INSTANCE_FILES = {
    "/etc/ssh/ssh_host_ed25519_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    "/etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA host\n",
    "/etc/ssh/ssh_host_rsa_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
    "/root/.ssh/authorized_keys": "ssh-ed25519 AAAA root@laptop\n",
    "/home/ops/.ssh/authorized_keys": "ssh-ed25519 AAAA ops@laptop\n",
    "/root/.docker/config.json": '{"auths": {"https://index.docker.io/v1/": {"auth": "eA=="}}}\n',
    "/root/.bash_history": "docker login\n",
    "/var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
    "/var/lib/cloud/instances/4242/user-data.txt": "#cloud-config\n",
    "/etc/vllm-gcp/secrets.env": "VLLM_API_KEY=not-on-a-builder\n",
    "/etc/apt/auth.conf.d/vllm-gcp-mirror.conf": "machine x login oauth2accesstoken password y\n",
    "/var/log/cloud-init.log": "cloud-init ran\n",
    "/var/lib/google-cloud-ops-agent/fluent-bit/buffers/tail.1/1-1.flb": "buffered syslog\n",
    "/var/log/journal/abc/system@0001.journal": "archived journal\n",
}
KEPT_EMPTY = {
    "/etc/machine-id": "0123456789abcdef0123456789abcdef\n",
    "/var/log/syslog": "Dec  1 18:40:00 builder kernel: hello\n",
    "/var/log/nginx/access.log": "127.0.0.1 GET /\n",
}
ROTATED_LOGS = {"/var/log/syslog.1": "old\n", "/var/log/auth.log.2.gz": "old\n"}
ACTIVE_JOURNAL = "/var/log/journal/abc/system.journal"


def builder(tmp_path: Path, machine_state: str = "present") -> Host:
    host = Host(tmp_path / "builder", A2_ULTRA_2G)
    host.setup(driver=machine_state, script=image_build.builder_script(VLLM_IMAGE))
    host.env["PATH"] = f"{FAKEBIN}{os.pathsep}{host.base / 'bin'}{os.pathsep}{os.environ['PATH']}"
    # The builder has no GPU: nvidia-smi fails there even though the driver is installed.
    host.env["FAKE_GPUS"] = "0"
    files = {**INSTANCE_FILES, **KEPT_EMPTY, **ROTATED_LOGS, ACTIVE_JOURNAL: "active\n"}
    for path, text in files.items():
        host.path(path).parent.mkdir(parents=True, exist_ok=True)
        host.path(path).write_text(text)
    host.path("/etc/os-release").write_text('NAME="Ubuntu"\nVERSION_CODENAME=noble\n')
    host.path("/etc/default/instance_configs.cfg").parent.mkdir(parents=True, exist_ok=True)
    host.path("/etc/default/instance_configs.cfg").write_text(
        "[Instance]\ninstance_id = 4242\n[InstanceSetup]\nset_host_keys = true\n"
    )
    return host


def attribute(host: Host, key: str) -> str:
    return (host.state / "guest-attributes" / "vllm-gcp-image" / key).read_text().strip()


@pytest.fixture
def built(tmp_path: Path) -> Host:
    host = builder(tmp_path)
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    return host


def boot_from_image(
    built: Host, machine: catalogue.MachineSpec, ops_agent: OpsAgent | None = None
) -> Host:
    """A VM made from the builder's disk: the same files and installed software, nothing
    running yet, this machine's startup script, the startup script's own stand-ins."""
    built.reboot()
    built.machine = machine
    built.env.clear()
    (built.base / "startup.sh").write_text(startup_script(machine, ops_agent=ops_agent))
    (built.state / "calls.log").unlink(missing_ok=True)
    return built


def test_the_builder_script_passes_bash_n_and_shellcheck() -> None:
    assert_shell_clean(image_build.builder_script(VLLM_IMAGE))


def test_sourcing_the_startup_script_runs_nothing(tmp_path: Path) -> None:
    script = tmp_path / "startup.sh"
    script.write_text(startup_script(A2_ULTRA_2G))
    sourced = subprocess.run(
        ["bash", "-c", f"source {script} && declare -F report_prepared_image ensure_packages"],
        env={**os.environ, "VLLM_GCP_ROOT": str(tmp_path / "root")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert sourced.returncode == 0, sourced.stderr
    assert sourced.stdout.split() == ["report_prepared_image", "ensure_packages"]
    assert not (tmp_path / "root").exists()


def test_the_builder_installs_pulls_marks_and_reports_done(built: Host) -> None:
    calls = (built.state / "calls.log").read_text().splitlines()
    install = next(call for call in calls if call.startswith("apt-get") and " install " in call)
    assert install.endswith(
        "install --no-install-recommends docker.io nvidia-container-toolkit nginx "
        "google-cloud-ops-agent"
    )
    # Installed, then stopped and disabled: the stack's configuration comes at the first boot.
    assert "systemctl disable --now google-cloud-ops-agent" in calls
    pulls = [call for call in calls if call.startswith("docker pull")]
    assert pulls == [f"docker pull {VLLM_IMAGE}", f"docker pull {GPU_CHECK_IMAGE}"]
    # No GPU on the builder: no driver install, no GPU check, no container run.
    assert [c for c in calls if c.startswith(("nvidia-smi", "ubuntu-drivers", "docker run"))] == []
    marker = built.path(image_build.PREPARED_IMAGE_MARKER).read_text()
    contents = image_build.parse_contents(marker)
    assert {key: value for key, value in contents.items() if key != "BUILT_AT"} == {
        "BASE_IMAGE": "ubuntu-accelerator-2404-amd64-with-nvidia-580-v20261115",
        "NVIDIA_DRIVER": "580.95.05",
        "DOCKER": "28.2.2-0ubuntu1~24.04.1",
        "NVIDIA_CONTAINER_TOOLKIT": "1.18.1-1",
        "NGINX": "1.24.0-2ubuntu7.5",
        "OPS_AGENT": "2.61.0~ubuntu24.04",
        "VLLM_IMAGE": VLLM_IMAGE,
        "GPU_CHECK_IMAGE": GPU_CHECK_IMAGE,
    }
    assert attribute(built, "status") == "done"
    assert attribute(built, "phase") == "clean"
    assert image_build.parse_contents(attribute(built, "contents")) == contents
    # The marker path the command documents is the one the startup script reads.
    assert f"\"${{ROOT}}\"'{image_build.PREPARED_IMAGE_MARKER}'\n" in startup_script(A2_ULTRA_2G)


def test_nothing_that_makes_an_instance_itself_or_a_log_is_imaged(built: Host) -> None:
    assert {path for path in INSTANCE_FILES if built.path(path).exists()} == set()
    assert {path for path in ROTATED_LOGS if built.path(path).exists()} == set()
    assert {path: built.path(path).read_text() for path in KEPT_EMPTY} == dict.fromkeys(
        KEPT_EMPTY, ""
    )
    assert not built.path(host_paths.CONFIG_DIR).exists()
    assert not built.path(host_paths.STATE_DIR).exists()
    non_empty_logs = {
        str(path.relative_to(built.root))
        for path in built.path("/var/log").rglob("*")
        if path.is_file() and path.stat().st_size > 0
    }
    # journald's active file stays: journald writes it (its content is vacuumed by time).
    assert non_empty_logs == {ACTIVE_JOURNAL.lstrip("/")}
    assert built.path("/etc/default/instance_configs.cfg").read_text() == (
        "[Instance]\n[InstanceSetup]\nset_host_keys = true\n"
    )
    calls = (built.state / "calls.log").read_text().splitlines()
    assert {"cloud-init clean --logs", "journalctl --vacuum-time=1s", "apt-get clean"} <= set(calls)


def test_a_failed_build_reports_its_reason_and_marks_nothing(tmp_path: Path) -> None:
    host = builder(tmp_path)
    boot = host.boot(FAKE_FAIL=f"docker pull {VLLM_IMAGE}")
    assert boot.returncode != 0
    assert attribute(host, "status") == f"failed: could not pull {VLLM_IMAGE}"
    assert attribute(host, "phase") == "pull"
    assert not host.path(image_build.PREPARED_IMAGE_MARKER).exists()
    assert not (host.state / "guest-attributes" / "vllm-gcp-image" / "contents").exists()


def test_a_vm_from_the_prepared_image_installs_and_pulls_nothing(built: Host) -> None:
    host = boot_from_image(built, A2_ULTRA_2G)
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    assert host.ready
    assert [call for call in boot.calls if call.startswith(INSTALLS)] == []
    assert f"docker run --rm --gpus all {GPU_CHECK_IMAGE} nvidia-smi" in boot.calls
    log = host.path(host_paths.STARTUP_LOG).read_text()
    assert "prepared image built " in log
    assert "NVIDIA driver 580.95.05, docker.io 28.2.2-0ubuntu1~24.04.1" in log
    assert (
        f"prepared image holds {VLLM_IMAGE} and {GPU_CHECK_IMAGE}; a model.image other than "
        f"{VLLM_IMAGE} is pulled by the run step" in log
    )


def test_observability_on_a_prepared_image_only_configures_and_starts_the_agent(
    built: Host,
) -> None:
    host = boot_from_image(built, A2_ULTRA_2G, OpsAgent(stack_label="prod"))
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    # The agent's configuration is the stack's: written and started at the first boot.
    assert [call for call in boot.calls if call.startswith(INSTALLS)] == [
        "systemctl enable google-cloud-ops-agent",
        "systemctl restart google-cloud-ops-agent",
    ]


def test_an_nvswitch_vm_from_the_prepared_image_adds_only_the_fabric_manager(built: Host) -> None:
    host = boot_from_image(built, A2_ULTRA_8G)
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    installs = [c for c in boot.calls if c.startswith("apt-get") and " install " in c]
    assert [c.rsplit(" ", 1)[-1] for c in installs] == [
        "nvidia-fabricmanager-580=580.95.05-0ubuntu0.24.04.1"
    ]


def test_a_vm_from_the_default_image_says_it_is_not_prepared(tmp_path: Path) -> None:
    host = Host(tmp_path, A2_ULTRA_2G).setup()
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    assert "not a prepared image (no " in host.path(host_paths.STARTUP_LOG).read_text()


# ------------------------------------------------------------------------------------------------
# Measuring: tools/e2e.sh reads the first start's phases from the host

E2E_PULUMI = """#!/usr/bin/env bash
printf 'pulumi %s\\n' "$*" >>"${E2E_LOG}"
case "$*" in
  *"config get"*machineType*) echo g2-standard-8 ;;
  *"config get"*provisioning*) echo spot ;;
  "up "*) date -u +%s >"${E2E_LOG%/*}/up-started" ;;
  *"stack output"*publicIp*) echo 203.0.113.10 ;;
  *"stack output"*sshUser*) echo vllm ;;
  *"stack output"*"--show-secrets sshPrivateKey"*) echo "-----BEGIN OPENSSH PRIVATE KEY-----" ;;
esac
"""
# Answers as the host would: each phase at an offset from when `pulumi up` began; records its
# arguments, the mode of the key it was given and the probe it read on stdin.
E2E_SSH = """#!/usr/bin/env bash
printf 'ssh %s\\n' "$*" >>"${E2E_LOG}"
key="$2"
stat -c '%a' "$key" >"${E2E_LOG%/*}/key-mode"
cat >"${E2E_LOG%/*}/probe.sh"
up="$(cat "${E2E_LOG%/*}/up-started")"
printf 'booted %s\\nhost_ready %s\\nimage_present %s\\n' $((up + 45)) $((up + 190)) $((up - 900))
printf 'weights_loaded %s\\nserving unknown\\nprepared yes\\n' $((up + 300))
"""
E2E_SMOKE = "#!/usr/bin/env bash\nexit 0\n"
JOURNALCTL = """#!/usr/bin/env bash
# journalctl -u vllm.service -o short-unix: two starts of vLLM.
echo "1796150100.25 host vllm[1]: INFO Model loading took 44.7 GiB memory and 20.1 seconds"
echo "1796150160.50 host vllm[1]: INFO Application startup complete."
echo "1796153000.00 host vllm[2]: INFO Model loading took 44.7 GiB memory and 9.0 seconds"
"""
DOCKER = """#!/usr/bin/env bash
case "$1 $2" in
  "inspect -f") echo vllm/vllm-openai:v0.32.0 ;;
  "image inspect") echo 2026-12-01T18:45:12.123456789Z ;;
esac
"""


def _e2e(tmp_path: Path, ssh: str = E2E_SSH) -> tuple[subprocess.CompletedProcess[str], Path]:
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "stacks").mkdir()
    (repo / "tools" / "e2e.sh").write_text((ROOT / "tools" / "e2e.sh").read_text())
    (repo / "stacks" / "Pulumi.dev.yaml").write_text(
        (ROOT / "stacks" / "Pulumi.dev.yaml").read_text()
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("pulumi", E2E_PULUMI), ("ssh", ssh), ("vllm-gcp", E2E_SMOKE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "E2E_LOG": str(log),
        "GCP_PROJECT": "my-project",
        "SSH_CIDR": "203.0.113.7/32",
        "VLLM_GCP": str(bin_dir / "vllm-gcp"),
    }
    result = subprocess.run(
        ["bash", str(repo / "tools" / "e2e.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result, tmp_path


def test_the_e2e_run_reports_each_phase_after_pulumi_up_began(tmp_path: Path) -> None:
    result, work = _e2e(tmp_path)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "timeline after pulumi up" in line]
    found = re.search(
        r"VM booted \+(\d+)s, host ready \+(\d+)s, image present (-\d+)s, "
        r"weights loaded \+(\d+)s, serving unknown, prepared image yes$",
        line,
    )
    assert found, line
    booted, ready, image, loaded = (int(value) for value in found.groups())
    # Each phase where the host put it; `pulumi up` itself began a moment before the stand-in's
    # clock started (the script's own start of the deploy).
    assert (ready - booted, image - booted, loaded - booted) == (145, -945, 255)
    assert 45 <= booted <= 55
    calls = (work / "calls.log").read_text().splitlines()
    [ssh] = [call for call in calls if call.startswith("ssh ")]
    assert ssh.endswith("vllm@203.0.113.10 sudo -n bash -s")
    assert "StrictHostKeyChecking=accept-new" in ssh
    assert (work / "key-mode").read_text().strip() == "600"
    # The key lived only for the connection, and never on a command line.
    assert not Path(ssh.split()[2]).exists()
    assert "PRIVATE KEY" not in "".join(calls) + result.stderr
    # Read before the smoke test and the destroy.
    order = [
        next(i for i, c in enumerate(calls) if c.startswith(p)) for p in ("ssh", "pulumi destroy")
    ]
    assert order == sorted(order)


def test_an_unreachable_host_leaves_the_run_passing_without_a_timeline(tmp_path: Path) -> None:
    result, _ = _e2e(tmp_path, ssh="#!/usr/bin/env bash\nexit 255\n")
    assert result.returncode == 0, result.stderr
    assert "timeline after pulumi up began: not recorded (ssh to 203.0.113.10 failed)" in (
        result.stderr
    )


def test_the_host_probe_reads_first_start_times_and_nothing_else(tmp_path: Path) -> None:
    result, work = _e2e(tmp_path)
    assert result.returncode == 0, result.stderr
    bin_dir = work / "probe-bin"
    bin_dir.mkdir()
    for name, text in (("journalctl", JOURNALCTL), ("docker", DOCKER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    probe = subprocess.run(
        ["bash", str(work / "probe.sh")],
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=True,
    )
    lines = dict(line.split(" ", 1) for line in probe.stdout.splitlines())
    assert set(lines) == {
        "booted",
        "host_ready",
        "image_present",
        "weights_loaded",
        "serving",
        "prepared",
    }
    assert lines["booted"].isdigit()
    # This machine is no GPU host: no ready marker, no prepared image.
    assert (lines["host_ready"], lines["prepared"]) == ("unknown", "no")
    assert lines["image_present"] == "1796150712"
    # The first start's lines, to the second; never a journal line itself.
    assert (lines["weights_loaded"], lines["serving"]) == ("1796150100", "1796150160")
