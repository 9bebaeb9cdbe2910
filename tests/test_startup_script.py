"""scripts/startup.sh: syntax, shellcheck, and its logic run against recording stand-ins.

The system commands it calls are replaced by tests/fakebin/standin.sh (linked under each name,
first on PATH) and every path it writes is moved under a temporary root (VLLM_GCP_ROOT).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components import catalogue, host_paths
from components.host_bundle import GPU_CHECK_IMAGE, AptMirror, startup_script
from components.render import TemplateError
from tests.harness import ROOT, assert_shell_clean

STANDIN = ROOT / "tests" / "fakebin" / "standin.sh"
LOGGER = ROOT / "tests" / "fakebin" / "logger"  # called for every log line: a lighter stand-in
FAKED_COMMANDS = (
    "apt-get",
    "apt-cache",
    "dpkg-query",
    "nvidia-smi",
    "ubuntu-drivers",
    "nvidia-ctk",
    "docker",
    "curl",
    "gpg",
    "mdadm",
    "blkid",
    "mkfs.ext4",
    "mount",
    "mountpoint",
    "systemctl",
    "logger",
    "modprobe",
    "udevadm",
    "sleep",
)
A2_ULTRA_2G = catalogue.MACHINE_TYPES["a2-ultragpu-2g"]
A2_ULTRA_8G = catalogue.MACHINE_TYPES["a2-ultragpu-8g"]
G2_STANDARD_8 = catalogue.MACHINE_TYPES["g2-standard-8"]


@dataclass
class Boot:
    returncode: int
    output: str
    calls: list[str]
    seconds: float

    def called(self, prefix: str) -> bool:
        return any(call.startswith(prefix) for call in self.calls)


@dataclass
class Host:
    """A fake host: a root directory, the stand-ins' state and the rendered script."""

    base: Path
    machine: catalogue.MachineSpec
    env: dict[str, str] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    @property
    def ready(self) -> bool:
        return self.path(host_paths.READY_MARKER).exists()

    @property
    def failure(self) -> str | None:
        marker = self.path(host_paths.STARTUP_FAILED_MARKER)
        return marker.read_text() if marker.exists() else None

    def setup(self, driver: str = "present", script: str | None = None) -> Host:
        bin_dir = self.base / "bin"
        for directory in (self.root, self.state, bin_dir):
            directory.mkdir(parents=True, exist_ok=True)
        for command in FAKED_COMMANDS:
            (bin_dir / command).symlink_to(LOGGER if command == "logger" else STANDIN)
        (self.state / "driver").write_text(f"{driver}\n")
        release = self.path("/etc/os-release")
        release.parent.mkdir(parents=True, exist_ok=True)
        release.write_text('NAME="Ubuntu"\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n')
        (self.base / "startup.sh").write_text(script or startup_script(self.machine))
        return self

    def add_local_ssds(self, count: int) -> None:
        by_id = self.root / "dev" / "disk" / "by-id"
        by_id.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (by_id / f"google-local-nvme-ssd-{index}").touch()

    def reboot(self) -> None:
        """What a reboot forgets: mounts, assembled arrays, stopped units (the enabled ones start
        again); a pending driver now loads."""
        for name in ("mounts", "arrays", "active"):
            (self.state / name).unlink(missing_ok=True)
        enabled = self.state / "enabled"
        if enabled.exists():
            shutil.copy(enabled, self.state / "active")
        shutil.rmtree(self.root / "dev" / "md", ignore_errors=True)
        driver = self.state / "driver"
        if driver.read_text().strip() == "installed":
            driver.write_text("present\n")

    def udev_assembles_cache_as(self, device: str) -> None:
        """At boot, udev assembles the cache array itself, under a name of its choosing."""
        created = str(self.root / "dev/md/vllm-cache")
        (self.state / "arrays").write_text(f"{device} vllm-host:vllm-cache\n")
        self.path(device).touch()
        filesystems = self.state / "filesystems"
        filesystems.write_text(filesystems.read_text().replace(created, str(self.path(device))))

    def stop_and_start(self) -> None:
        """A stop (or preemption) also discards local SSD contents."""
        self.reboot()
        for name in ("superblocks", "filesystems"):
            (self.state / name).unlink(missing_ok=True)

    def boot(self, **knobs: str) -> Boot:
        log = self.state / "calls.log"
        log.unlink(missing_ok=True)
        env = {
            "PATH": f"{self.base / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.base),
            "VLLM_GCP_ROOT": str(self.root),
            "FAKE_STATE": str(self.state),
            "FAKE_GPUS": str(self.machine.gpu_count),
            **self.env,
            **knobs,
        }
        started = time.monotonic()
        result = subprocess.run(
            ["bash", str(self.base / "startup.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        calls = log.read_text().splitlines() if log.exists() else []
        return Boot(
            result.returncode, result.stdout + result.stderr, calls, time.monotonic() - started
        )


@pytest.fixture
def a2_host(tmp_path: Path) -> Host:
    return Host(tmp_path, A2_ULTRA_2G).setup()


INSTALLS = (
    "apt-get",
    "ubuntu-drivers",
    "nvidia-ctk",
    "docker pull",
    "systemctl restart",
    "systemctl enable",
    "systemctl reboot",
    "mkfs.ext4",
    "mdadm --create",
)


def test_rendered_script_passes_bash_n_and_shellcheck() -> None:
    assert_shell_clean(startup_script(A2_ULTRA_2G))


def test_rendered_script_carries_the_host_contract() -> None:
    script = startup_script(A2_ULTRA_2G)
    assert "{{" not in script
    assert "readonly GPU_COUNT='2'\n" in script
    assert f"readonly GPU_CHECK_IMAGE='{GPU_CHECK_IMAGE}'\n" in script
    for path in (
        host_paths.READY_MARKER,
        host_paths.STARTUP_FAILED_MARKER,
        host_paths.STARTUP_LOG,
        host_paths.CACHE_DIR,
        host_paths.REBOOTING_MARKER,
        host_paths.REGISTRY_LOGIN_PATH,
    ):
        assert f"\"${{ROOT}}\"'{path}'\n" in script
    assert "readonly GPU_COUNT='1'\n" in startup_script(G2_STANDARD_8)


def test_a_hostile_value_stays_one_word_and_a_control_character_is_refused() -> None:
    script = startup_script(A2_ULTRA_2G, gpu_check_image="x'; reboot; '")
    assert "readonly GPU_CHECK_IMAGE='x'\\''; reboot; '\\'''\n" in script
    assert_shell_clean(script)
    with pytest.raises(TemplateError, match="control character"):
        startup_script(A2_ULTRA_2G, gpu_check_image="ubuntu:24.04\nreboot")


def test_first_boot_installs_what_is_missing_and_marks_ready(a2_host: Host) -> None:
    boot = a2_host.boot()
    assert boot.returncode == 0, boot.output
    assert a2_host.ready
    assert a2_host.failure is None
    install = next(call for call in boot.calls if call.startswith("apt-get") and "install" in call)
    assert install.endswith(
        "install --no-install-recommends docker.io nvidia-container-toolkit nginx"
    )
    assert boot.calls.count("apt-get -q -o DPkg::Lock::Timeout=600 update") == 1
    toolkit_list = a2_host.root / "etc/apt/sources.list.d/nvidia-container-toolkit.list"
    assert toolkit_list.read_text() == (
        "deb [signed-by=/etc/apt/keyrings/nvidia-container-toolkit.gpg] "
        "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n"
    )
    assert a2_host.path("/etc/apt/keyrings/nvidia-container-toolkit.gpg").exists()
    daemon_json = a2_host.path("/etc/docker/daemon.json")
    assert f"nvidia-ctk runtime configure --runtime=docker --config={daemon_json}" in boot.calls
    assert "systemctl restart docker" in boot.calls
    assert not a2_host.path("/etc/nginx/sites-enabled/default").exists()
    assert "systemctl reload-or-restart nginx" in boot.calls
    assert f"docker pull {GPU_CHECK_IMAGE}" in boot.calls
    assert f"docker run --rm --gpus all {GPU_CHECK_IMAGE} nvidia-smi" in boot.calls
    # The default image carries the driver: nothing to install, no reboot.
    assert not boot.called("ubuntu-drivers")
    assert not boot.called("systemctl reboot")
    assert "host ready" in a2_host.path(host_paths.STARTUP_LOG).read_text()
    assert boot.called("logger -t vllm-gcp-startup")


def test_second_boot_installs_nothing_and_is_quick(a2_host: Host) -> None:
    a2_host.add_local_ssds(2)
    assert a2_host.boot().returncode == 0
    a2_host.reboot()
    boot = a2_host.boot()
    assert boot.returncode == 0, boot.output
    assert a2_host.ready
    done = [call for call in boot.calls if call.startswith(INSTALLS)]
    assert done == []
    assert f"docker run --rm --gpus all {GPU_CHECK_IMAGE} nvidia-smi" in boot.calls
    assert boot.seconds < 10


def test_two_local_ssds_become_one_raid0_cache_formatted_once(a2_host: Host) -> None:
    a2_host.add_local_ssds(2)
    ssds = [str(a2_host.root / f"dev/disk/by-id/google-local-nvme-ssd-{i}") for i in (0, 1)]
    array = str(a2_host.root / "dev/md/vllm-cache")
    cache = str(a2_host.path(host_paths.CACHE_DIR))

    first = a2_host.boot()
    assert first.returncode == 0, first.output
    assert f"mdadm --create {array} --level=0 --raid-devices=2 --run {' '.join(ssds)}" in (
        first.calls
    )
    assert f"mkfs.ext4 -F -q -m 0 -L vllm-cache {array}" in first.calls
    assert f"mount -o discard,noatime -L vllm-cache {cache}" in first.calls

    a2_host.reboot()
    rebooted = a2_host.boot()
    assert f"mdadm --assemble {array} {' '.join(ssds)}" in rebooted.calls
    assert not rebooted.called("mkfs.ext4")
    assert f"mount -o discard,noatime -L vllm-cache {cache}" in rebooted.calls

    a2_host.stop_and_start()
    restarted = a2_host.boot()
    assert restarted.called("mdadm --create")
    assert restarted.called("mkfs.ext4")
    assert a2_host.ready


def test_an_array_udev_already_assembled_under_another_name_is_used(a2_host: Host) -> None:
    a2_host.add_local_ssds(2)
    assert a2_host.boot().returncode == 0
    a2_host.reboot()
    a2_host.udev_assembles_cache_as("/dev/md127")
    boot = a2_host.boot()
    assert boot.returncode == 0, boot.output
    assert "mdadm --detail --scan" in boot.calls
    assert not boot.called("mdadm --assemble")
    assert not boot.called("mdadm --create")
    assert not boot.called("mkfs.ext4")
    assert f"mount -o discard,noatime -L vllm-cache {a2_host.path(host_paths.CACHE_DIR)}" in (
        boot.calls
    )
    assert f"cache array already active as {a2_host.path('/dev/md127')}" in boot.output
    assert a2_host.ready


def test_a_failure_inside_the_cache_device_lookup_keeps_its_own_reason(a2_host: Host) -> None:
    a2_host.add_local_ssds(2)
    boot = a2_host.boot(FAKE_FAIL="mdadm --create*")
    assert boot.returncode != 0
    ssds = " ".join(str(a2_host.root / f"dev/disk/by-id/google-local-nvme-ssd-{i}") for i in (0, 1))
    assert a2_host.failure == f"mdadm could not create the cache array on {ssds}\n"
    assert not a2_host.ready


def test_a_single_local_ssd_is_formatted_directly(tmp_path: Path) -> None:
    host = Host(tmp_path, catalogue.MACHINE_TYPES["a2-ultragpu-1g"]).setup()
    host.add_local_ssds(1)
    boot = host.boot()
    ssd = host.root / "dev/disk/by-id/google-local-nvme-ssd-0"
    assert boot.returncode == 0, boot.output
    assert not boot.called("mdadm")
    assert f"mkfs.ext4 -F -q -m 0 -L vllm-cache {ssd}" in boot.calls
    assert f"mount -o discard,noatime -L vllm-cache {host.path(host_paths.CACHE_DIR)}" in boot.calls


def test_without_local_ssd_the_cache_stays_on_the_boot_disk(tmp_path: Path) -> None:
    host = Host(tmp_path, G2_STANDARD_8).setup()
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    assert host.path(host_paths.CACHE_DIR).is_dir()
    assert not boot.called("mount")
    assert not boot.called("mkfs.ext4")
    assert host.ready


def test_a_failing_step_exits_non_zero_and_leaves_no_ready_marker(a2_host: Host) -> None:
    a2_host.path(host_paths.READY_MARKER).parent.mkdir(parents=True)
    a2_host.path(host_paths.READY_MARKER).write_text("stale from the last boot\n")
    boot = a2_host.boot(FAKE_FAIL="apt-get*install*")
    assert boot.returncode != 0
    assert not a2_host.ready
    assert a2_host.failure == "apt could not install: docker.io nvidia-container-toolkit nginx\n"
    assert boot.calls.count("sleep 30") == 20
    assert "FAILED" in boot.output
    assert "FAILED" in a2_host.path(host_paths.STARTUP_LOG).read_text()


def test_a_missing_gpu_leaves_no_ready_marker(a2_host: Host) -> None:
    boot = a2_host.boot(FAKE_GPUS="1")
    assert boot.returncode != 0
    assert not a2_host.ready
    assert a2_host.failure == "nvidia-smi lists 1 GPU(s), the machine type has 2\n"
    assert not boot.called("docker run")


def test_a_container_without_gpus_leaves_no_ready_marker(a2_host: Host) -> None:
    boot = a2_host.boot(FAKE_FAIL="docker run*")
    assert boot.returncode != 0
    assert not a2_host.ready
    assert a2_host.failure == "a --gpus all container cannot run nvidia-smi\n"


def test_a_success_after_a_failure_clears_the_failure_marker(a2_host: Host) -> None:
    assert a2_host.boot(FAKE_FAIL="docker run*").returncode != 0
    boot = a2_host.boot()
    assert boot.returncode == 0, boot.output
    assert a2_host.ready
    assert a2_host.failure is None


def test_a_missing_driver_is_installed_without_reboot_when_it_loads(tmp_path: Path) -> None:
    host = Host(tmp_path, A2_ULTRA_2G).setup(driver="absent")
    boot = host.boot(FAKE_DRIVER_LOADS_AT_ONCE="1")
    assert boot.returncode == 0, boot.output
    assert "ubuntu-drivers install --gpgpu nvidia:580-server" in boot.calls
    assert any(
        c.endswith("install --no-install-recommends nvidia-utils-580-server") for c in boot.calls
    )
    assert not boot.called("systemctl reboot")
    assert host.ready


def test_a_driver_that_needs_a_reboot_reboots_once_then_completes(tmp_path: Path) -> None:
    host = Host(tmp_path, A2_ULTRA_2G).setup(driver="absent")
    rebooting = host.path(host_paths.STATE_DIR) / "rebooting"
    first = host.boot(FAKE_FAIL="ubuntu-drivers*", FAKE_FAIL_TIMES="1")
    assert first.returncode == 0, first.output
    # ubuntu-drivers runs apt, whose locks may be busy at boot: retried.
    assert first.calls.count("ubuntu-drivers install --gpgpu nvidia:580-server") == 2
    assert "systemctl reboot" in first.calls
    assert not host.ready
    assert host.failure is None
    # Written before the reboot, for the remote step whose SSH session it cuts.
    assert rebooting.read_text().startswith("rebooting ")

    host.reboot()
    second = host.boot()
    assert second.returncode == 0, second.output
    assert not second.called("ubuntu-drivers")
    assert not second.called("systemctl reboot")
    assert not rebooting.exists()
    assert host.ready


def test_a_driver_still_broken_after_its_reboot_fails_instead_of_looping(tmp_path: Path) -> None:
    host = Host(tmp_path, A2_ULTRA_2G).setup(driver="absent")
    assert host.boot().returncode == 0
    (host.state / "driver").write_text("broken\n")
    boot = host.boot()
    assert boot.returncode != 0
    assert not boot.called("systemctl reboot")
    failure = host.failure
    assert failure is not None
    assert "after installing the driver and rebooting" in failure


def test_an_unexpected_error_names_its_step(a2_host: Host) -> None:
    boot = a2_host.boot(FAKE_FAIL="nvidia-ctk*")
    assert boot.returncode != 0
    assert not a2_host.ready
    failure = a2_host.failure
    assert failure is not None
    assert failure.startswith("step 'docker' failed at line ")


def test_downloads_are_retried_before_the_boot_fails(a2_host: Host) -> None:
    boot = a2_host.boot(FAKE_FAIL="apt-get*update*", FAKE_FAIL_TIMES="2")
    assert boot.returncode == 0, boot.output
    assert boot.calls.count("apt-get -q -o DPkg::Lock::Timeout=600 update") == 3
    assert boot.calls.count("sleep 30") == 2
    assert a2_host.ready


def test_a_check_image_that_cannot_be_pulled_fails_the_boot(a2_host: Host) -> None:
    boot = a2_host.boot(FAKE_FAIL="docker pull*")
    assert boot.returncode != 0
    assert a2_host.failure == f"could not pull {GPU_CHECK_IMAGE}\n"
    assert not a2_host.ready


MIRROR_SOURCES = (
    "Types: deb\n"
    "URIs: https://us-central1-apt.pkg.dev/remote/test-project/vllm-prod-ubuntu-noble\n"
    "Suites: noble\n"
    "Components: main restricted universe multiverse\n"
    "Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n"
)
MIRRORED_CHECK_IMAGE = (
    "us-central1-docker.pkg.dev/test-project/vllm-prod-dockerhub/"
    "nvidia/cuda:12.8.1-base-ubuntu24.04"
)


def make_mirrored_host(base: Path) -> Host:
    script = startup_script(
        A2_ULTRA_2G,
        gpu_check_image=MIRRORED_CHECK_IMAGE,
        docker_registry_host="us-central1-docker.pkg.dev",
        apt_mirror=AptMirror("us-central1-apt.pkg.dev", MIRROR_SOURCES),
    )
    host = Host(base, A2_ULTRA_2G).setup(script=script)
    sources = host.path("/etc/apt/sources.list.d/ubuntu.sources")
    sources.parent.mkdir(parents=True)
    sources.write_text("Types: deb\nURIs: http://archive.ubuntu.com/ubuntu/\n")
    host.path("/etc/apt/sources.list").write_text("# see sources.list.d\n")
    return host


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Host, Boot]:
    """One first boot with both mirrors, shared by the tests that only read its results."""
    host = make_mirrored_host(tmp_path_factory.mktemp("mirrored"))
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    return host, boot


def test_an_apt_mirror_replaces_the_images_sources_and_authenticates(
    mirrored: tuple[Host, Boot],
) -> None:
    mirrored_host, boot = mirrored
    sources_dir = mirrored_host.path("/etc/apt/sources.list.d")
    assert not (sources_dir / "ubuntu.sources").exists()
    assert not mirrored_host.path("/etc/apt/sources.list").exists()
    aside = mirrored_host.path(host_paths.STATE_DIR) / "apt-sources-aside"
    assert sorted(p.name for p in aside.iterdir()) == ["sources.list", "ubuntu.sources"]
    assert (sources_dir / "vllm-gcp-mirror.sources").read_text() == MIRROR_SOURCES
    auth = mirrored_host.path("/etc/apt/auth.conf.d/vllm-gcp-mirror.conf")
    assert auth.read_text() == (
        "machine us-central1-apt.pkg.dev login oauth2accesstoken password ya29.fake-token\n"
    )
    assert auth.stat().st_mode & 0o777 == 0o600
    assert boot.called("apt-get -y -q -o DPkg::Lock::Timeout=600 install")


def test_a_docker_mirror_logs_in_with_the_token_on_stdin_and_pulls_from_it(
    mirrored: tuple[Host, Boot],
) -> None:
    mirrored_host, boot = mirrored
    assert (
        "docker login --username oauth2accesstoken --password-stdin "
        "https://us-central1-docker.pkg.dev"
    ) in boot.calls
    assert (mirrored_host.state / "docker-login-password").read_text() == "ya29.fake-token"
    assert f"docker pull {MIRRORED_CHECK_IMAGE}" in boot.calls
    assert f"docker run --rm --gpus all {MIRRORED_CHECK_IMAGE} nvidia-smi" in boot.calls


def test_the_docker_mirror_login_helper_is_installed_for_the_run_step_and_the_unit(
    mirrored: tuple[Host, Boot],
) -> None:
    mirrored_host, _ = mirrored
    helper = mirrored_host.path(host_paths.REGISTRY_LOGIN_PATH)
    source = (ROOT / "scripts" / "registry_login.sh").read_text()
    assert helper.read_text() == source.rstrip() + "\n# --- end of registry_login.sh\n"
    assert helper.stat().st_mode & 0o777 == 0o755


def test_the_access_token_is_never_logged_nor_on_a_command_line(
    mirrored: tuple[Host, Boot],
) -> None:
    mirrored_host, boot = mirrored
    log = mirrored_host.path(host_paths.STARTUP_LOG).read_text()
    for text in (log, boot.output, "\n".join(boot.calls)):
        assert "ya29.fake-token" not in text


def test_a_mirrored_second_boot_installs_and_pulls_nothing(tmp_path: Path) -> None:
    mirrored_host = make_mirrored_host(tmp_path)
    assert mirrored_host.boot().returncode == 0
    mirrored_host.reboot()
    boot = mirrored_host.boot()
    assert boot.returncode == 0, boot.output
    assert [call for call in boot.calls if call.startswith((*INSTALLS, "docker login"))] == []
    assert mirrored_host.ready


def test_mirror_hosts_other_than_artifact_registry_are_refused() -> None:
    with pytest.raises(ValueError, match="Docker host"):
        startup_script(A2_ULTRA_2G, docker_registry_host="evil.example.com")
    with pytest.raises(ValueError, match="apt host"):
        startup_script(A2_ULTRA_2G, apt_mirror=AptMirror("evil.example.com", MIRROR_SOURCES))


# --- unattended-upgrades --------------------------------------------------------------------------

UNATTENDED_CONFIG = "/etc/apt/apt.conf.d/52vllm-gcp-unattended"


def test_unattended_upgrades_leave_the_driver_and_docker_alone(a2_host: Host) -> None:
    boot = a2_host.boot()
    assert boot.returncode == 0, boot.output
    config = a2_host.path(UNATTENDED_CONFIG).read_text()
    assert "Unattended-Upgrade::Package-Blacklist {" in config
    patterns = re.findall(r'^\s*"([^"]+)";$', config, flags=re.MULTILINE)
    assert patterns == [
        "nvidia-",
        "libnvidia-",
        "linux-modules-nvidia-",
        "docker.io",
        "containerd",
        "runc",
    ]

    # unattended-upgrade matches each entry with re.match: a prefix of the package name.
    def held(package: str) -> bool:
        return any(re.match(pattern, package) for pattern in patterns)

    for package in (
        "nvidia-utils-580-server",
        "nvidia-fabricmanager-580",
        "libnvidia-compute-580-server",
        "linux-modules-nvidia-580-server-gcp",
        "docker.io",
        "containerd",
        "runc",
    ):
        assert held(package), package
    for package in ("nginx", "linux-image-gcp", "openssl", "libc6"):
        assert not held(package), package

    # Written before any apt work, and only once.
    log = a2_host.path(host_paths.STARTUP_LOG).read_text()
    assert log.index("step: unattended-upgrades") < log.index("run: apt-get")
    before = a2_host.path(UNATTENDED_CONFIG).stat().st_mtime_ns
    a2_host.reboot()
    again = a2_host.boot()
    assert again.returncode == 0, again.output
    assert a2_host.path(UNATTENDED_CONFIG).stat().st_mtime_ns == before
    assert "wrote " not in again.output


# --- NVSwitch machines ----------------------------------------------------------------------------


@pytest.fixture
def nvswitch_host(tmp_path: Path) -> Host:
    return Host(tmp_path, A2_ULTRA_8G).setup()


def test_an_nvswitch_machine_gets_the_fabric_manager_matching_its_driver(
    nvswitch_host: Host,
) -> None:
    boot = nvswitch_host.boot()
    assert boot.returncode == 0, boot.output
    assert "apt-cache madison nvidia-fabricmanager-580" in boot.calls
    assert any(
        call.endswith(
            "install --no-install-recommends nvidia-fabricmanager-580=580.95.05-0ubuntu0.24.04.1"
        )
        for call in boot.calls
    )
    assert "systemctl enable --now nvidia-fabricmanager" in boot.calls
    assert "nvidia-smi -q" in boot.calls
    assert "GPU fabric registration complete" in boot.output
    assert nvswitch_host.ready

    nvswitch_host.reboot()
    again = nvswitch_host.boot()
    assert again.returncode == 0, again.output
    assert [call for call in again.calls if call.startswith(INSTALLS)] == []
    assert nvswitch_host.ready


def test_an_incomplete_gpu_fabric_leaves_no_ready_marker(nvswitch_host: Host) -> None:
    boot = nvswitch_host.boot(FAKE_FABRIC_STATE="In Progress")
    assert boot.returncode != 0
    assert boot.calls.count("sleep 10") == 30
    assert nvswitch_host.failure == (
        "GPU fabric state is 'In Progress', not Completed: see journalctl -u nvidia-fabricmanager\n"
    )
    assert not boot.called("docker run")
    assert not nvswitch_host.ready


def test_machines_without_nvswitch_leave_the_fabric_manager_out(a2_host: Host) -> None:
    boot = a2_host.boot()
    assert boot.returncode == 0, boot.output
    assert not any("fabricmanager" in call for call in boot.calls)
    assert not boot.called("nvidia-smi -q")


# --- time limits ----------------------------------------------------------------------------------
# Every network operation has its own limit (scripts/host_lib.sh `bounded`): one that hangs is cut
# off, logged with what it was, and retried or failed; the boot never hangs on it. The stand-ins
# hang for 30 s; VLLM_GCP_OPERATION_LIMIT_SECONDS=1 shortens every limit to a second.
LIMIT_1S = {"VLLM_GCP_OPERATION_LIMIT_SECONDS": "1"}


def test_a_hanging_check_image_pull_is_cut_off_logged_and_retried(a2_host: Host) -> None:
    boot = a2_host.boot(FAKE_HANG="docker pull*", FAKE_HANG_TIMES="1", **LIMIT_1S)
    assert boot.returncode == 0, boot.output
    assert boot.seconds < 10
    assert f"timed out after 1 s: pulling {GPU_CHECK_IMAGE}" in boot.output
    log = a2_host.path(host_paths.STARTUP_LOG).read_text()
    assert f"timed out after 1 s: pulling {GPU_CHECK_IMAGE}" in log
    assert boot.calls.count(f"docker pull {GPU_CHECK_IMAGE}") == 2
    assert a2_host.ready


def test_a_hanging_apt_update_is_cut_off_and_retried(a2_host: Host) -> None:
    boot = a2_host.boot(FAKE_HANG="apt-get*update*", FAKE_HANG_TIMES="1", **LIMIT_1S)
    assert boot.returncode == 0, boot.output
    assert boot.seconds < 10
    assert "timed out after 1 s: apt-get update" in boot.output
    assert boot.calls.count("apt-get -q -o DPkg::Lock::Timeout=600 update") == 2
    assert a2_host.ready


def test_a_hanging_download_of_nvidias_key_fails_the_boot_with_its_name(a2_host: Host) -> None:
    boot = a2_host.boot(FAKE_HANG="curl*gpgkey", **LIMIT_1S)
    assert boot.returncode != 0
    assert boot.seconds < 10
    assert "timed out after 1 s: downloading the NVIDIA container toolkit's apt key" in boot.output
    assert a2_host.failure == (
        "could not download the NVIDIA container toolkit's apt key from "
        "https://nvidia.github.io/libnvidia-container\n"
    )
    assert not a2_host.ready


def test_the_network_operations_run_under_limits() -> None:
    script = startup_script(A2_ULTRA_2G)
    for operation in (
        'run_bounded "$APT_UPDATE_SECONDS" "apt-get update" apt-get',
        'run_bounded "$APT_INSTALL_SECONDS" "apt-get install $*"',
        'run_bounded "$DRIVER_INSTALL_SECONDS"',
        'run_bounded "$DOCKER_TIMEOUT_SECONDS" "pulling ${GPU_CHECK_IMAGE}" docker pull',
        'bounded "$KEY_DOWNLOAD_SECONDS"',
        'bounded --output "$STARTUP_LOG" "$DOCKER_LOGIN_SECONDS"',
    ):
        assert operation in script
    assert "curl -fsS --retry 5 --connect-timeout 5 --max-time 10" in script  # the token
