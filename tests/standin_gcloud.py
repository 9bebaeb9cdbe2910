"""Stand-in for the Google Cloud CLI, as `vllm-gcp image build` calls it.

Strict about the commands' documented synopses (cloud.google.com/sdk/gcloud/reference/compute/
instances/create, .../get-guest-attributes, .../get-serial-port-output, .../stop, .../delete,
.../images/create): a flag not in a command's synopsis, a missing required one or a value of
the wrong shape fails as gcloud does (exit 2, "ERROR: (gcloud.compute.…) …"). Label keys and
values follow compute/docs/labeling-resources; resource names RFC 1035 (63 characters).

Each call is appended to $FAKE_GCLOUD_STATE/calls.jsonl as its argv. State there: the
instances created (a file per instance), the images. Knobs (environment):
  FAKE_GCLOUD_CREATE_ERROR  quota | stockout | no-machine: `instances create` fails with
                            gcloud's message for it
  FAKE_GCLOUD_GUEST         a JSON file: a list of guest-attribute answers, one per query (the
                            last one repeats); each a {key: value} of namespace vllm-gcp-image
  FAKE_GCLOUD_FAIL          a command ("images create", "instances stop", ...) that fails
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_GCLOUD_STATE"])
NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
ZONE = re.compile(r"[a-z]+-[a-z]+\d+-[a-z]")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
GLOBAL_FLAGS = {"--project": True, "--format": True, "--quiet": False}
# command -> {flag: takes a value}, required flags, positional count
SYNOPSES: dict[str, tuple[dict[str, bool], set[str]]] = {
    "compute instances create": (
        {
            "--zone": True,
            "--machine-type": True,
            "--image-project": True,
            "--image-family": True,
            "--image": True,
            "--boot-disk-size": True,
            "--boot-disk-type": True,
            "--metadata": True,
            "--metadata-from-file": True,
            "--labels": True,
            "--network": True,
            "--subnet": True,
            "--no-address": False,
            "--no-service-account": False,
            "--no-scopes": False,
        },
        {"--zone"},
    ),
    "compute instances get-guest-attributes": (
        {"--zone": True, "--query-path": True},
        {"--zone"},
    ),
    "compute instances get-serial-port-output": (
        {"--zone": True, "--port": True, "--start": True},
        {"--zone"},
    ),
    "compute instances stop": ({"--zone": True, "--async": False}, {"--zone"}),
    "compute instances delete": (
        {"--zone": True, "--delete-disks": True, "--keep-disks": True},
        {"--zone"},
    ),
    "compute images create": (
        {
            "--source-disk": True,
            "--source-disk-zone": True,
            "--family": True,
            "--labels": True,
            "--description": True,
            "--storage-location": True,
        },
        {"--source-disk"},
    ),
}


def error(command: str, message: str, code: int = 1) -> None:
    print(f"ERROR: (gcloud.{command.replace(' ', '.')}) {message}", file=sys.stderr)
    sys.exit(code)


def read_flag(
    command: str, flags: dict[str, bool], args: list[str], index: int
) -> tuple[str, str, int]:
    """The flag at args[index], its value ("" for a switch) and the index after it."""
    name, _, inline = args[index].partition("=")
    if name not in flags:
        error(command, f"unrecognized arguments: {args[index]}", 2)
    if not flags[name]:
        if inline:
            error(command, f"argument {name}: ignored explicit argument '{inline}'", 2)
        return name, "", index + 1
    if inline:
        return name, inline, index + 1
    if index + 1 >= len(args):
        error(command, f"argument {name}: expected one argument", 2)
    return name, args[index + 1], index + 2


def check_values(command: str, positional: list[str], given: dict[str, str]) -> None:
    missing = sorted(SYNOPSES[command][1] - set(given))
    if missing:
        error(command, f"argument {missing[0]}: Must be specified.", 2)
    if "--project" not in given:
        error(command, "The required property [project] is not currently set.", 1)
    if len(positional) != 1 or not NAME.fullmatch(positional[0]):
        error(command, f"argument NAME: bad value {positional}", 2)
    for flag in ("--zone", "--source-disk-zone"):
        if flag in given and not ZONE.fullmatch(given[flag]):
            error(command, f"argument {flag}: bad zone {given[flag]!r}", 2)
    for pair in given.get("--labels", "").split(",") if "--labels" in given else []:
        key, _, value = pair.partition("=")
        if not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
            error(command, f"argument --labels: invalid label {pair!r}", 2)


def parse(command: str, args: list[str]) -> tuple[list[str], dict[str, str]]:
    flags = {**GLOBAL_FLAGS, **SYNOPSES[command][0]}
    positional: list[str] = []
    given: dict[str, str] = {}
    index = 0
    while index < len(args):
        if args[index].startswith("--"):
            name, value, index = read_flag(command, flags, args, index)
            given[name] = value
        else:
            positional.append(args[index])
            index += 1
    check_values(command, positional, given)
    return positional, given


def instance_file(name: str) -> Path:
    return STATE / "instances" / name


def create(name: str, given: dict[str, str]) -> None:
    if not re.fullmatch(r"\d+GB", given.get("--boot-disk-size", "10GB")):
        error("compute instances create", "argument --boot-disk-size: bad size", 2)
    for item in given.get("--metadata-from-file", "").split(","):
        if item:
            key, _, path = item.partition("=")
            if not Path(path).is_file():
                error("compute instances create", f"Unable to read file [{path}]", 1)
            (STATE / f"metadata-{key}").write_text(Path(path).read_text())
    match os.environ.get("FAKE_GCLOUD_CREATE_ERROR"):
        case "quota":
            error(
                "compute instances create",
                "Could not fetch resource:\n - Quota 'CPUS' exceeded.  Limit: 4.0 in region "
                "us-central1.",
            )
        case "stockout":
            error(
                "compute instances create",
                "Could not fetch resource:\n---\ncode: ZONE_RESOURCE_POOL_EXHAUSTED\nmessage: "
                f"The zone 'projects/p/zones/{given['--zone']}' does not have enough resources "
                "available to fulfill the request.  Try a different zone, or try again later.",
            )
        case "no-machine":
            machine = given.get("--machine-type", "n1-standard-1")
            error(
                "compute instances create",
                "Could not fetch resource:\n - Invalid value for field 'resource.machineType': "
                f"'zones/{given['--zone']}/machineTypes/{machine}'. Machine type with name "
                f"'{machine}' does not exist in zone '{given['--zone']}'.",
            )
        case _:
            pass
    instance_file(name).parent.mkdir(parents=True, exist_ok=True)
    instance_file(name).write_text("RUNNING")
    print(f"Created [https://www.googleapis.com/compute/v1/projects/p/zones/x/instances/{name}].")


def guest_attributes(name: str) -> None:
    if not instance_file(name).exists():
        error("compute instances get-guest-attributes", f"The resource '{name}' was not found")
    answers = json.loads(Path(os.environ["FAKE_GCLOUD_GUEST"]).read_text())
    counter = STATE / "guest-queries"
    count = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(count + 1))
    answer = answers[min(count, len(answers) - 1)]
    if not answer:
        error("compute instances get-guest-attributes", "The resource was not found")
    items = [{"namespace": "vllm-gcp-image", "key": k, "value": v} for k, v in answer.items()]
    print(json.dumps(items))


def main() -> None:
    argv = sys.argv[1:]
    STATE.mkdir(parents=True, exist_ok=True)
    with (STATE / "calls.jsonl").open("a") as log:
        log.write(json.dumps(argv) + "\n")
    command = " ".join(argv[:3])
    if command not in SYNOPSES:
        error(command, f"Invalid choice: {command!r}", 2)
    (name,), given = parse(command, argv[3:])
    if os.environ.get("FAKE_GCLOUD_FAIL") == " ".join(argv[1:3]):
        error(command, "Could not fetch resource:\n - Internal error (told to fail).")
    match command:
        case "compute instances create":
            create(name, given)
        case "compute instances get-guest-attributes":
            guest_attributes(name)
        case "compute instances get-serial-port-output":
            print(
                f"Dec 01 18:40:00 {name} google_metadata_script_runner[1]: startup-script: "
                "2026-12-01T18:40:00Z vllm-gcp-startup: FAILED: could not pull the image"
            )
        case "compute instances stop":
            if not instance_file(name).exists():
                error(command, f"The resource '{name}' was not found")
            instance_file(name).write_text("TERMINATED")
        case "compute instances delete":
            if not instance_file(name).exists():
                error(command, f"The resource 'projects/p/zones/z/instances/{name}' was not found")
            instance_file(name).unlink()
        case "compute images create":
            disk = given["--source-disk"]
            if not instance_file(disk).exists() or instance_file(disk).read_text() != "TERMINATED":
                error(command, f"The disk resource '{disk}' is already being used or is absent")
            (STATE / "images").mkdir(exist_ok=True)
            (STATE / "images" / name).write_text(json.dumps(given))
        case _:
            pass


if __name__ == "__main__":
    main()
