"""vllm-gcp image build: a prepared host image in your project, made on a throwaway VM.

    vllm-gcp image build --project P --zone Z [--family vllm-host-2404-nvidia-580]
        [--machine-type e2-standard-8] [--model-image vllm/vllm-openai:v0.32.0]

A builder VM boots the default accelerator image (Canonical's Ubuntu 24.04 with the NVIDIA 580
driver) with scripts/prepare_image.sh as its startup script: the startup script's own install
functions (Docker, the NVIDIA container toolkit, Nginx), a pull of the pinned vLLM image and of
the GPU check image, the marker that says what the image holds, and a clean of everything that
must not be imaged. This command follows it through the builder's guest attributes, stops it,
images its disk into the family (labelled with what it holds), deletes the builder, also when a
step fails or on Ctrl-C, and prints the `host.image` value to set. Everything runs through the
Google Cloud CLI, which must be installed and logged in.

The builder has no GPU: installing packages and pulling images need none, and the GPU checks run
at every boot of the real host (scripts/startup.sh). A CPU machine costs cents an hour, needs no
GPU quota and is not subject to GPU stockouts.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pydantic

from components import catalogue, host_paths
from components.config import HOST_IMAGE, ModelConfig
from components.host_bundle import OpsAgent, startup_script
from components.render import render

# The family the command creates by default, and the prefix every family it creates carries: the
# offline plan tells a prepared image from its host.image reference by it (is_prepared_image).
FAMILY_PREFIX = "vllm-host-"
DEFAULT_FAMILY = f"{FAMILY_PREFIX}2404-nvidia-{catalogue.MIN_DRIVER_FOR_CUDA13}"
# 8 vCPUs: Docker unpacks the vLLM image's layers in parallel, and a balanced disk's throughput
# grows with the VM's vCPUs (compute/docs/disks/performance).
DEFAULT_BUILDER_MACHINE = "e2-standard-8"
# The OS with the driver, the vLLM image (~29 GB unpacked) and room for its pull. The image's
# size is the smallest boot disk a VM made from it can have.
BUILDER_DISK_GB = 100
# Where the image says what it holds (read by scripts/startup.sh, written by prepare_image.sh).
PREPARED_IMAGE_MARKER = host_paths.PREPARED_IMAGE_MARKER
ATTRIBUTE_NAMESPACE = "vllm-gcp-image"
# Guest attributes take at most 10 queries a minute per VM (compute/docs/metadata/
# manage-guest-attributes): one every 30 s leaves room.
DEFAULT_POLL_SECONDS = 30.0
DEFAULT_TIMEOUT_MINUTES = 60
HEARTBEAT_SECONDS = 300
# An image name is the family and the build time: at most 63 characters.
_STAMP_FORMAT = "%Y%m%d-%H%M"
_FAMILY = re.compile(r"[a-z](?:[-a-z0-9]{0,46}[a-z0-9])?")
# Labels: lowercase letters, digits, _ and -, at most 63 characters
# (compute/docs/labeling-resources).
_LABEL_UNSAFE = re.compile(r"[^a-z0-9_-]")
# Per gcloud call; the image's creation from a 100 GB disk takes minutes.
GCLOUD_SECONDS = 600
IMAGE_CREATE_SECONDS = 1800
# A create cut short by Ctrl-C may still make the VM: the delete looks for it this long.
DELETE_LOOKS = 6
DELETE_LOOK_SECONDS = 10.0


class BuildError(Exception):
    """A step failed; the message says what to do."""


class Interrupted(Exception):
    """SIGINT or SIGTERM."""


def is_prepared_image(host_image: str) -> bool:
    """Whether a host.image reference names an image family or image this command makes."""
    match = HOST_IMAGE.fullmatch(host_image)
    return match is not None and match.group("name").startswith(FAMILY_PREFIX)


def builder_script(model_image: str) -> str:
    """scripts/prepare_image.sh with the startup script it sources, rendered for a builder
    without GPUs (only the GPU count of the machine reaches the startup script)."""
    builder = dataclasses.replace(
        catalogue.MACHINE_TYPES["g2-standard-8"], name=DEFAULT_BUILDER_MACHINE, gpu_count=0
    )
    # The image carries the Ops Agent whatever a stack's observability.enabled says: a host's
    # startup script configures and starts it, or keeps it stopped. The builder installs it and
    # never configures it (configure_ops_agent is not called), so this label goes nowhere.
    script = startup_script(builder, ops_agent=OpsAgent(stack_label="vllm-image-builder"))
    return render(
        "prepare_image.sh",
        {
            "STARTUP_SCRIPT_B64": base64.b64encode(script.encode()).decode(),
            "VLLM_IMAGE": model_image,
            "CONFIG_DIR": host_paths.CONFIG_DIR,
        },
    )


def label_value(text: str) -> str:
    """A label value that names `text` as closely as labels allow."""
    return _LABEL_UNSAFE.sub("-", text.lower())[:63] or "none"


def parse_contents(text: str) -> dict[str, str]:
    """The marker's KEY=value lines."""
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


# The marker's keys, to the labels that carry them on the image.
LABELLED = {
    "VLLM_IMAGE": "vllm-image",
    "GPU_CHECK_IMAGE": "gpu-check-image",
    "NVIDIA_DRIVER": "nvidia-driver",
    "DOCKER": "docker",
    "NVIDIA_CONTAINER_TOOLKIT": "nvidia-container-toolkit",
    "NGINX": "nginx",
    "OPS_AGENT": "ops-agent",
}


def image_labels(contents: Mapping[str, str]) -> dict[str, str]:
    labels = {"built-by": "vllm-gcp-image-build"}
    for key, label in LABELLED.items():
        labels[label] = label_value(contents.get(key, "unknown"))
    return labels


def image_description(contents: Mapping[str, str]) -> str:
    """The exact versions, which labels can only approximate."""
    held = "; ".join(f"{key}={contents.get(key, 'unknown')}" for key in LABELLED)
    return f"vllm-gcp prepared host image from {contents.get('BASE_IMAGE', 'unknown')}: {held}"


def gcloud_message(stderr: str) -> str:
    """gcloud's own message: its last line."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "gcloud failed without a message"


def explain_create_error(stderr: str, machine_type: str, zone: str) -> str:
    """What a failed `instances create` means, in the words of its fix."""
    quota = re.search(r"Quota '([A-Z0-9_]+)' exceeded[^\n]*", stderr)
    if quota or "QUOTA_EXCEEDED" in stderr:
        what = quota.group(0).strip() if quota else "QUOTA_EXCEEDED"
        return (
            f"the project's quota does not allow the builder ({what}); raise it "
            "(IAM & Admin > Quotas) or choose a --machine-type that fits the quota"
        )
    if "ZONE_RESOURCE_POOL_EXHAUSTED" in stderr or "does not have enough resources" in stderr:
        return (
            f"{zone} has no capacity for {machine_type} right now (ZONE_RESOURCE_POOL_EXHAUSTED); "
            "try another --zone or --machine-type, or later"
        )
    if "does not exist in zone" in stderr or "was not found" in stderr:
        return (
            f"{machine_type} is not offered in {zone}; list what is with "
            f"`gcloud compute machine-types list --zones {zone}`"
        )
    return gcloud_message(stderr)


@dataclass(frozen=True)
class Settings:
    project: str
    zone: str
    family: str
    machine_type: str
    model_image: str
    network: str | None
    subnet: str | None
    no_address: bool
    poll_seconds: float
    timeout_minutes: int


Printer = Callable[[str], None]


class ImageBuild:
    """One build: the builder's name, what it has done so far, and its clean-up. `sleep` and
    `clock` pace the waits (tests give their own; subprocess keeps time's)."""

    def __init__(
        self,
        settings: Settings,
        say: Printer,
        now: datetime.datetime,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.say = say
        self.sleep = sleep
        self.clock = clock
        self.builder = f"vllm-image-builder-{now.strftime('%Y%m%d-%H%M%S')}"
        self.image = f"{settings.family}-v{now.strftime(_STAMP_FORMAT)}"
        self.create_started = False
        self.create_answered = False  # gcloud returned: the VM exists or never will

    def _gcloud(
        self, args: Sequence[str], seconds: int = GCLOUD_SECONDS, own_session: bool = False
    ) -> subprocess.CompletedProcess[str]:
        command = ["gcloud", *args, "--project", self.settings.project]
        try:
            return subprocess.run(  # noqa: S603 (fixed program, arguments as a list)
                command,
                capture_output=True,
                text=True,
                timeout=seconds,
                check=False,
                start_new_session=own_session,
            )
        except FileNotFoundError as error:
            raise BuildError("gcloud is not on PATH: install the Google Cloud CLI") from error
        except subprocess.TimeoutExpired as error:
            raise BuildError(f"`gcloud {' '.join(args[:3])}` took over {seconds} s") from error

    def _zone(self) -> list[str]:
        return ["--zone", self.settings.zone]

    def create_builder(self, script: Path) -> None:
        s = self.settings
        project, family = _default_image_family()
        args = [
            "compute",
            "instances",
            "create",
            self.builder,
            *self._zone(),
            "--machine-type",
            s.machine_type,
            "--image-project",
            project,
            "--image-family",
            family,
            "--boot-disk-size",
            f"{BUILDER_DISK_GB}GB",
            "--boot-disk-type",
            "pd-balanced",
            # No service account: nothing on the builder holds a token that could be imaged.
            "--no-service-account",
            "--no-scopes",
            "--metadata",
            "enable-guest-attributes=TRUE,block-project-ssh-keys=TRUE",
            "--metadata-from-file",
            f"startup-script={script}",
            "--labels",
            "vllm-gcp=image-builder",
        ]
        if s.network is not None:
            args += ["--network", s.network]
        if s.subnet is not None:
            args += ["--subnet", s.subnet]
        if s.no_address:
            args.append("--no-address")
        self.say(f"creating the builder {self.builder} ({s.machine_type}) in {s.zone}")
        self.create_started = True
        result = self._gcloud(args)
        self.create_answered = True
        if result.returncode != 0:
            raise BuildError(explain_create_error(result.stderr, s.machine_type, s.zone))

    def _attributes(self) -> dict[str, str]:
        result = self._gcloud(
            [
                "compute",
                "instances",
                "get-guest-attributes",
                self.builder,
                *self._zone(),
                "--query-path",
                f"{ATTRIBUTE_NAMESPACE}/",
                "--format",
                "json",
            ]
        )
        if result.returncode != 0:  # none written yet: the query path does not exist
            return {}
        try:
            items = json.loads(result.stdout or "[]")
        except json.JSONDecodeError:
            return {}
        return {
            str(item.get("key")): str(item.get("value", "")).strip()
            for item in items
            if isinstance(item, dict)
        }

    def _serial_tail(self, lines: int = 20) -> str:
        result = self._gcloud(
            ["compute", "instances", "get-serial-port-output", self.builder, *self._zone()]
        )
        ours = [line for line in result.stdout.splitlines() if "vllm-gcp-startup" in line]
        return "\n".join(ours[-lines:])

    def wait_for_builder(self) -> dict[str, str]:
        """The marker's contents once the builder is done; progress lines until then."""
        s = self.settings
        started = self.clock()
        deadline = started + s.timeout_minutes * 60
        shown, last_line = "", started
        while True:
            attributes = self._attributes()
            phase = attributes.get("phase", "booting")
            status = attributes.get("status", "")
            elapsed = int(self.clock() - started)
            if phase != shown or self.clock() - last_line >= HEARTBEAT_SECONDS:
                self.say(f"builder: {phase} ({elapsed // 60}m{elapsed % 60:02d}s)")
                shown, last_line = phase, self.clock()
            if status == "done":
                return parse_contents(attributes.get("contents", ""))
            if status.startswith("failed"):
                tail = self._serial_tail()
                raise BuildError(
                    f"the builder {status}" + (f"\nits last lines:\n{tail}" if tail else "")
                )
            if self.clock() >= deadline:
                raise BuildError(
                    f"the builder did not finish within {s.timeout_minutes} minutes "
                    f"(last phase: {phase}); see `gcloud compute instances "
                    f"get-serial-port-output {self.builder} --zone {s.zone}` before it is deleted, "
                    "or raise --timeout-minutes"
                )
            self.sleep(s.poll_seconds)

    def capture(self, contents: Mapping[str, str]) -> None:
        self.say(f"stopping {self.builder}")
        stopped = self._gcloud(["compute", "instances", "stop", self.builder, *self._zone()])
        if stopped.returncode != 0:
            raise BuildError(f"could not stop the builder: {gcloud_message(stopped.stderr)}")
        labels = ",".join(f"{key}={value}" for key, value in image_labels(contents).items())
        self.say(f"creating the image {self.image} in the family {self.settings.family}")
        created = self._gcloud(
            [
                "compute",
                "images",
                "create",
                self.image,
                "--source-disk",
                self.builder,
                "--source-disk-zone",
                self.settings.zone,
                "--family",
                self.settings.family,
                "--labels",
                labels,
                "--description",
                image_description(contents),
            ],
            seconds=IMAGE_CREATE_SECONDS,
        )
        if created.returncode != 0:
            raise BuildError(f"could not create the image: {gcloud_message(created.stderr)}")

    def delete_builder(self) -> bool:
        """Deletes the builder (and its disk); True when it is gone. In a session of its own, so
        a second Ctrl-C does not cut the delete short."""
        if not self.create_started:
            return True
        self.say(f"deleting the builder {self.builder}")
        for _ in range(DELETE_LOOKS):
            result = self._gcloud(
                ["compute", "instances", "delete", self.builder, *self._zone(), "--quiet"],
                own_session=True,
            )
            if result.returncode == 0:
                return True
            if "was not found" not in result.stderr:
                break
            if self.create_answered:
                return True
            # A create cut short by a signal may still be making the VM: look again.
            self.sleep(DELETE_LOOK_SECONDS)
        self.say(
            f"could not delete the builder {self.builder}: delete it with `gcloud compute "
            f"instances delete {self.builder} --zone {self.settings.zone} --project "
            f"{self.settings.project}`"
        )
        return False

    def run(self) -> None:
        with tempfile.TemporaryDirectory(prefix="vllm-image-") as directory:
            script = Path(directory) / "prepare_image.sh"
            script.write_text(builder_script(self.settings.model_image))
            self.create_builder(script)
        contents = self.wait_for_builder()
        self.say(
            "builder done: "
            + ", ".join(f"{key} {contents.get(key, 'unknown')}" for key in LABELLED)
        )
        self.capture(contents)


def _default_image_family() -> tuple[str, str]:
    match = HOST_IMAGE.fullmatch(catalogue.DEFAULT_HOST_IMAGE)
    if match is None or match.group("family") is None:
        raise BuildError(f"{catalogue.DEFAULT_HOST_IMAGE} does not name an image family")
    return match.group("project"), match.group("name")


def _raise_interrupted(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def parser(prog: str) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n", 1)[0])
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build",
        help="build a prepared host image on a throwaway VM",
        description=(
            "Build a prepared host image on a throwaway VM (deleted at the end, whatever happens) "
            "and print the host.image value to set."
        ),
    )
    build.add_argument("--project", required=True, help="the GCP project to build the image in")
    build.add_argument(
        "--zone", required=True, help="where the builder VM runs, e.g. us-central1-a"
    )
    build.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        help=f"the image family (default {DEFAULT_FAMILY}; must start with {FAMILY_PREFIX})",
    )
    build.add_argument(
        "--machine-type",
        default=DEFAULT_BUILDER_MACHINE,
        help=f"the builder's machine type, no GPU needed (default {DEFAULT_BUILDER_MACHINE})",
    )
    build.add_argument(
        "--model-image",
        default=catalogue.DEFAULT_VLLM_IMAGE,
        help=f"the vLLM image to pre-pull (default {catalogue.DEFAULT_VLLM_IMAGE}: model.image's)",
    )
    build.add_argument("--network", help="the builder's VPC network (default: default)")
    build.add_argument("--subnet", help="the builder's subnet")
    build.add_argument(
        "--no-address",
        action="store_true",
        help="no external IP (the subnet then needs Cloud NAT: the builder downloads packages)",
    )
    build.add_argument(
        "--timeout-minutes",
        type=int,
        default=DEFAULT_TIMEOUT_MINUTES,
        help=f"how long the builder may take (default {DEFAULT_TIMEOUT_MINUTES})",
    )
    build.add_argument(
        "--poll-seconds",
        type=float,
        default=DEFAULT_POLL_SECONDS,
        help=f"between two looks at the builder's progress (default {DEFAULT_POLL_SECONDS:g})",
    )
    return top


def _settings(args: argparse.Namespace, fail: Callable[[str], None]) -> Settings:
    family: str = args.family
    if not _FAMILY.fullmatch(family) or not family.startswith(FAMILY_PREFIX):
        fail(
            f"--family {family!r}: lowercase letters, digits and hyphens, at most 48 characters, "
            f"starting with {FAMILY_PREFIX} (the plan recognises a prepared image by it)"
        )
    try:
        # model.image's own rule: the same references a stack takes.
        ModelConfig.model_validate({"image": args.model_image})
    except pydantic.ValidationError as error:
        fail(f"--model-image: {error.errors()[0]['msg'].removeprefix('Value error, ')}")
    if args.timeout_minutes < 1 or args.poll_seconds <= 0:
        fail("--timeout-minutes and --poll-seconds must be positive")
    return Settings(
        project=args.project,
        zone=args.zone,
        family=family,
        machine_type=args.machine_type,
        model_image=args.model_image,
        network=args.network,
        subnet=args.subnet,
        no_address=args.no_address,
        poll_seconds=args.poll_seconds,
        timeout_minutes=args.timeout_minutes,
    )


def main(
    argv: list[str] | None = None,
    prog: str = "vllm-gcp image",
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    top = parser(prog)
    args = top.parse_args(argv)
    settings = _settings(args, top.error)

    def say(line: str) -> None:
        print(f"[image {datetime.datetime.now(datetime.UTC):%H:%M:%S}] {line}", flush=True)

    build = ImageBuild(settings, say, datetime.datetime.now(datetime.UTC), sleep, clock)
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    status = 0
    try:
        build.run()
    except BuildError as error:
        print(f"{prog} build: error: {error}", file=sys.stderr)
        status = 1
    except Interrupted as signal_name:
        print(f"{prog} build: stopped by {signal_name}", file=sys.stderr)
        status = 130
    finally:
        # The delete must run to its end: further signals wait.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if not build.delete_builder():
                status = status or 1
        except BuildError as error:
            print(f"{prog} build: error: {error}", file=sys.stderr)
            status = status or 1
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)
    if status == 0:
        images = f"projects/{settings.project}/global/images"
        print(f"Built {images}/{build.image} in the family {settings.family}. Use it with:")
        print(f"  pulumi config set --path vllm-gcp:host.image {images}/family/{settings.family}")
    return status


if __name__ == "__main__":
    sys.exit(main())
