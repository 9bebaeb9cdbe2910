"""Offline plan: validate a stack file and show what the program would manage, without the cloud.

    vllm-gcp plan prod [--out DIR] [--set KEY=VALUE ...]

Runs the real program under Pulumi's mocks (tools/offline.py): no credentials, no Pulumi CLI,
nothing deployed. Prints the resources grouped by type with the properties a reviewer checks;
with --out, writes every file the host would receive (startup script, each remote step's script
and stdin: the Nginx site, the systemd unit with the vLLM arguments; in fleet mode the instance
template's attributes and the Secret Manager payloads) with secrets redacted, plus
resources.json. Exit 0 when the configuration is valid, 2 when it is not (the message lists every
problem by key path). Secrets are never read: where the stack file holds one (`secure:`), a
stand-in takes its place, and every stand-in is redacted from what is written.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components.config import PROJECT, SECRET_KEYS, ConfigError
from tools.offline import (
    MOCK_API_KEY,
    MOCK_HF_TOKEN,
    MOCK_KIBANA_KEY,
    MOCK_SSH_PRIVATE_KEY,
    MOCK_TLS_KEY,
    ROOT,
    Plan,
    Registered,
    is_secret_value,
    run_program,
    unwrap,
)

# The values every checked-in stack file leaves to the user, stood in by documentation values
# (192.0.2.0/24 is TEST-NET-1, RFC 5737) unless given with --set.
PLACEHOLDERS: dict[str, Any] = {
    "gcp:project": "offline-plan",
    f"{PROJECT}:access.sshCidrs": ["192.0.2.1/32"],
}
STAND_IN_KEY_SCALAR = 0x5EC2E7  # the private value of the stand-in TLS key (provided mode)
# The summary shows inputs up to this long in full, and cuts outputs longer than the other.
MAX_SHOWN_INPUT = 120
MAX_SHOWN_OUTPUT = 100
INSTANCE = "gcp:compute/instance:Instance"
TEMPLATE = "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate"
GROUP = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
SECRET_VERSION = "gcp:secretmanager/secretVersion:SecretVersion"  # noqa: S105 (a type token)
# A fleet template's metadata that is not a file (components/fleet.py).
_TEMPLATE_SETTINGS = {"ssh-keys", "enable-oslogin", "block-project-ssh-keys"}
FIREWALL = "gcp:compute/firewall:Firewall"
REMOTE_COMMAND = "command:remote:Command"
# stdin bundles (components/host_bundle.py `file_bundle`): one "<name> <base64>" line per file.
_BUNDLE_LINE = re.compile(r"^([a-z_]+) ([A-Za-z0-9+/]+={0,2})$")
_BUNDLE_SUFFIXES = {"site": ".conf", "certificate": ".crt", "private_key": ".key"}


class PlanError(Exception):
    """The plan cannot run: a missing stack file, a bad --set, an undecryptable value."""


@dataclass
class StackInput:
    """What the program runs with: plain config, secret stand-ins, and what was stood in."""

    config: dict[str, Any]
    secrets: dict[str, str] = field(default_factory=dict)
    placeholders: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# Reading the stack file


def _parse_set(item: str) -> tuple[str, list[str], Any]:
    """`ns:key.path=value` to (ns:key, path, value); a key without namespace is the project's."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise PlanError(f"--set {item!r}: expected KEY=VALUE, e.g. gcp:project=my-project")
    if ":" not in key:
        key = f"{PROJECT}:{key}"
    top, *path = key.split(".")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as error:
        raise PlanError(f"--set {item!r}: the value is not YAML: {error}") from None
    if top.split(":", 1)[1] in SECRET_KEYS and top.startswith(f"{PROJECT}:"):
        raise PlanError(
            f"--set {top}: the plan never reads secrets; where the stack file sets one, a "
            "stand-in is used"
        )
    return top, path, value


def _assign(config: dict[str, Any], top: str, path: list[str], value: Any) -> None:
    if not path:
        config[top] = value
        return
    node = config.setdefault(top, {})
    for part in path[:-1]:
        if not isinstance(node, dict):
            raise PlanError(f"--set {top}.{'.'.join(path)}: {part} is not inside an object")
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        raise PlanError(f"--set {top}.{'.'.join(path)}: the parent is not an object")
    node[path[-1]] = value


def _has(config: Mapping[str, Any], dotted: str) -> bool:
    top, *path = dotted.split(".")
    node: Any = config.get(top)
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node not in (None, "", [], {})


def _secure_keys(value: Any, prefix: str) -> Iterator[str]:
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            yield prefix
            return
        for key, item in value.items():
            yield from _secure_keys(item, f"{prefix}.{key}")


def stand_in_certificate(domain: str) -> tuple[str, str]:
    """A throwaway certificate and key for `domain`, standing in for a provided pair.

    The key is a fixed, published stand-in (so a review can be repeated and checked), never used.
    """
    key = ec.derive_private_key(STAND_IN_KEY_SCALAR, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def read_stack(stack: str, settings: Iterable[str] = ()) -> StackInput:
    """stacks/Pulumi.<stack>.yaml with --set applied, placeholders and secret stand-ins added."""
    path = ROOT / "stacks" / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        known = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in path.parent.glob("*.yaml"))
        raise PlanError(f"no stack file {path.relative_to(ROOT)} (stacks: {', '.join(known)})")
    document = yaml.safe_load(path.read_text()) or {}
    config: dict[str, Any] = dict(document.get("config") or {})
    for item in settings:
        top, dotted, value = _parse_set(item)
        _assign(config, top, dotted, value)

    stack_input = StackInput(config={})
    for key, value in config.items():
        name = key.split(":", 1)[1] if key.startswith(f"{PROJECT}:") else None
        if name in SECRET_KEYS and isinstance(value, dict) and set(value) == {"secure"}:
            stack_input.secrets[name] = ""  # filled below, once the config is known
            continue
        hidden = list(_secure_keys(value, key))
        if hidden:
            raise PlanError(
                f"{', '.join(hidden)} is encrypted in the stack file; the plan reads no secrets "
                "and stands in only for " + ", ".join(f"{PROJECT}:{k}" for k in SECRET_KEYS)
            )
        stack_input.config[key] = value

    for dotted, placeholder in PLACEHOLDERS.items():
        if not _has(stack_input.config, dotted):
            top, *rest = dotted.split(".")
            _assign(stack_input.config, top, rest, placeholder)
            stack_input.placeholders[dotted] = placeholder

    tls = stack_input.config.get(f"{PROJECT}:tls")
    domain = tls.get("domain") if isinstance(tls, dict) else None
    certificate, private_key = stand_in_certificate(str(domain or "offline-plan.example.com"))
    stand_ins = {
        "huggingFaceToken": MOCK_HF_TOKEN,
        "kibanaApiKey": MOCK_KIBANA_KEY,
        "tlsCertificate": certificate,
        "tlsPrivateKey": private_key,
    }
    stack_input.secrets = {name: stand_ins[name] for name in stack_input.secrets}
    return stack_input


# ------------------------------------------------------------------------------------------------
# Redaction


def secret_names(stack_input: StackInput) -> dict[str, str]:
    """Every stand-in secret value the run may carry, to the name it is redacted as."""
    names = {
        MOCK_API_KEY: "apiKey",
        MOCK_SSH_PRIVATE_KEY: "sshPrivateKey",
        MOCK_TLS_KEY: "tlsGeneratedPrivateKey",
        MOCK_HF_TOKEN: "huggingFaceToken",
        MOCK_KIBANA_KEY: "kibanaApiKey",
    }
    names.update({value: name for name, value in stack_input.secrets.items()})
    return names


def _encodings(value: str) -> list[str]:
    """The forms a secret may take inside a text: as is, JSON-escaped, base64."""
    return [value, json.dumps(value)[1:-1], base64.b64encode(value.encode()).decode()]


def redact_text(text: str, names: Mapping[str, str]) -> tuple[str, bool]:
    """The text with each known secret replaced by <redacted:NAME>; and whether any was found."""
    found = False
    for value, name in sorted(names.items(), key=lambda item: -len(item[0])):
        for form in _encodings(value):
            if form in text:
                text = text.replace(form, f"<redacted:{name}>")
                found = True
    return text, found


def redact(value: Any, names: Mapping[str, str], inside_secret: bool = False) -> Any:
    """A resource input with secrets redacted; secret text without a known secret goes whole."""
    if is_secret_value(value):
        return redact(value["value"], names, inside_secret=True)
    if isinstance(value, dict):
        return {k: redact(v, names, inside_secret) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, names, inside_secret) for v in value]
    if isinstance(value, str):
        text, found = redact_text(value, names)
        return text if found or not inside_secret else "<redacted>"
    return "<redacted>" if inside_secret and value is not None else value


# ------------------------------------------------------------------------------------------------
# Host files


def _bundle_parts(text: str) -> dict[str, str] | None:
    lines = text.splitlines()
    matches = [_BUNDLE_LINE.match(line) for line in lines]
    if not lines or not all(matches):
        return None
    try:
        return {
            m.group(1): base64.b64decode(m.group(2), validate=True).decode()
            for m in matches
            if m is not None
        }
    except ValueError:
        return None


def _content_files(stem: str, value: Any, names: Mapping[str, str]) -> dict[str, str]:
    """A step's stdin or a secret's payload: one file, or one per part of a bundle."""
    secret = is_secret_value(value)
    text = str(unwrap(value))
    parts = _bundle_parts(text)
    if parts is None:
        suffix = ".service" if "\n[Service]\n" in text else ".stdin"
        return {f"{stem}{suffix}": redact(value, names)}
    files: dict[str, str] = {}
    for part, content in parts.items():
        redacted, found = redact_text(content, names)
        # As for a whole secret input: a secret part with no known secret in it goes whole.
        files[f"{stem}{_BUNDLE_SUFFIXES.get(part, '.' + part)}"] = (
            "<redacted>" if secret and not found else redacted
        )
    return files


def host_files(plan: Plan, names: Mapping[str, str]) -> dict[str, str]:
    """Every file the host (or a fleet's replica) would receive, file name to redacted content."""
    files: dict[str, str] = {}
    for instance in plan.of_type(INSTANCE):
        metadata = instance.inputs.get("metadata") or {}
        script = metadata.get("startup-script") if isinstance(metadata, dict) else None
        if script is not None:
            files[f"{instance.name}.startup-script.sh"] = redact(script, names)
    for step in plan.of_type(REMOTE_COMMAND):
        create = step.inputs.get("create")
        update = step.inputs.get("update")
        if create is not None:
            files[f"{step.name}.create.sh"] = redact(create, names)
        if update is not None and unwrap(update) != unwrap(create):
            files[f"{step.name}.update.sh"] = redact(update, names)
        stdin = step.inputs.get("stdin")
        if stdin is not None:
            files.update(_content_files(step.name, stdin, names))
    for template in plan.of_type(TEMPLATE):
        metadata = unwrap(template.inputs.get("metadata") or {})
        for key in sorted(set(metadata) - _TEMPLATE_SETTINGS):
            suffix = ".service" if "\n[Service]\n" in metadata[key] else ".sh"
            files[f"{template.name}.{key}{suffix}"] = redact(metadata[key], names)
    for version in plan.of_type(SECRET_VERSION):
        files.update(_content_files(version.name, version.inputs["secretData"], names))
    return files


def write_out(directory: Path, plan: Plan, names: Mapping[str, str]) -> list[Path]:
    if directory.exists() and any(directory.iterdir()):
        raise PlanError(f"--out {directory} is not empty: give a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, content in host_files(plan, names).items():
        path = directory / name
        path.write_text(content)
        written.append(path)
    resources = [
        {"type": r.type, "name": r.name, "inputs": redact(r.inputs, names)} for r in plan.resources
    ]
    path = directory / "resources.json"
    path.write_text(json.dumps(resources, indent=2, sort_keys=True) + "\n")
    written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# The summary a reviewer reads


def _ports(rules: Any) -> str:
    described = []
    for rule in rules or []:
        ports = ",".join(str(p) for p in rule.get("ports") or []) or "all ports"
        described.append(f"{rule.get('protocol')} {ports}")
    return "; ".join(described)


def _instance_lines(inputs: dict[str, Any]) -> list[str]:
    scheduling = inputs.get("scheduling") or {}
    disk = inputs.get("bootDisk") or {}
    params = disk.get("initializeParams") or {}
    account = inputs.get("serviceAccount") or {}
    interfaces = inputs.get("networkInterfaces") or [{}]
    external = any(i.get("accessConfigs") for i in interfaces)
    metadata = inputs.get("metadata") or {}
    lines = [
        f"machineType: {inputs.get('machineType')}",
        f"zone: {inputs.get('zone')}",
        "scheduling: " + ", ".join(f"{key} {scheduling[key]}" for key in sorted(scheduling)),
        f"bootDisk: {params.get('size')} GB {params.get('type')}, image {params.get('image')}",
        f"serviceAccount: {account.get('email')} (scopes: {', '.join(account.get('scopes', []))})",
        f"network: internal IP {interfaces[0].get('networkIp')}, "
        + ("external IP" if external else "no external IP"),
        f"tags: {', '.join(inputs.get('tags') or [])}",
        f"metadata keys: {', '.join(sorted(metadata))}",
    ]
    for accelerator in inputs.get("guestAccelerators") or []:
        lines.append(f"accelerator: {accelerator.get('count')} x {accelerator.get('type')}")
    if inputs.get("scratchDisks"):
        lines.append(f"scratch disks: {len(inputs['scratchDisks'])}")
    shielded = inputs.get("shieldedInstanceConfig")
    if shielded:
        lines.append("shielded VM: " + ", ".join(k for k, v in sorted(shielded.items()) if v))
    return lines


def _template_lines(inputs: dict[str, Any]) -> list[str]:
    scheduling = inputs.get("scheduling") or {}
    disk = (inputs.get("disks") or [{}])[0]
    account = inputs.get("serviceAccount") or {}
    interfaces = inputs.get("networkInterfaces") or [{}]
    external = any(i.get("accessConfigs") for i in interfaces)
    metadata = inputs.get("metadata") or {}
    return [
        f"machineType: {inputs.get('machineType')}",
        f"region: {inputs.get('region')}",
        "scheduling: " + ", ".join(f"{key} {scheduling[key]}" for key in sorted(scheduling)),
        f"boot disk: {disk.get('diskSizeGb')} GB {disk.get('diskType')}, "
        f"image {disk.get('sourceImage')}",
        f"serviceAccount: {account.get('email')} (scopes: {', '.join(account.get('scopes', []))})",
        "network: " + ("external IP" if external else "no external IP"),
        f"tags: {', '.join(inputs.get('tags') or [])}",
        f"metadata keys: {', '.join(sorted(metadata))}",
    ]


def _group_lines(inputs: dict[str, Any]) -> list[str]:
    policy = inputs.get("updatePolicy") or {}
    healing = inputs.get("autoHealingPolicies") or {}
    return [
        f"targetSize: {inputs.get('targetSize')}",
        f"zones: {', '.join(inputs.get('distributionPolicyZones') or [])} "
        f"(shape {inputs.get('distributionPolicyTargetShape')})",
        "update: " + ", ".join(f"{key} {policy[key]}" for key in sorted(policy)),
        f"autohealing: initial delay {healing.get('initialDelaySec')} s",
    ]


def _firewall_lines(inputs: dict[str, Any]) -> list[str]:
    lines = [f"direction: {inputs.get('direction', 'INGRESS')}, priority {inputs.get('priority')}"]
    if inputs.get("allows"):
        lines.append(f"allow: {_ports(inputs['allows'])}")
    if inputs.get("denies"):
        lines.append(f"deny: {_ports(inputs['denies'])}")
    for key in ("sourceRanges", "destinationRanges", "targetTags"):
        if inputs.get(key):
            lines.append(f"{key}: {', '.join(inputs[key])}")
    return lines


def _command_lines(resource: Registered) -> list[str]:
    inputs = resource.inputs
    stdin = inputs.get("stdin")
    carried = "none" if stdin is None else ("secret" if is_secret_value(stdin) else "plain")
    return [
        f"stdin: {carried}",
        f"re-runs on: {len(unwrap(inputs.get('triggers') or []))} trigger(s)",
    ]


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, str) and "\n" not in value and len(value) <= MAX_SHOWN_INPUT:
        return value
    if isinstance(value, list) and value and all(isinstance(v, str | int) for v in value):
        return ", ".join(str(v) for v in value)
    return None


def _generic_lines(inputs: dict[str, Any]) -> list[str]:
    lines = []
    for key in sorted(inputs):
        value = inputs[key]
        if is_secret_value(value):
            lines.append(f"{key}: [secret]")
            continue
        shown = _scalar(value)
        if shown is not None:
            lines.append(f"{key}: {shown}")
    return lines


def _tidy(value: Any) -> Any:
    """Whole numbers as integers: the engine hands every number over as a float."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


# The types whose summary is composed from their plain inputs.
_SUMMARIES = {
    INSTANCE: _instance_lines,
    TEMPLATE: _template_lines,
    GROUP: _group_lines,
    FIREWALL: _firewall_lines,
}


def resource_lines(resource: Registered) -> list[str]:
    if resource.type in _SUMMARIES:
        return _SUMMARIES[resource.type](_tidy(resource.plain))
    if resource.type == REMOTE_COMMAND:
        return _command_lines(resource)
    if resource.type.startswith(f"{PROJECT}:"):
        return []
    return _generic_lines(_tidy(resource.inputs))


def summary(stack: str, stack_input: StackInput, plan: Plan) -> list[str]:
    lines = [
        f"Offline plan of stack {stack} (stacks/Pulumi.{stack}.yaml) under Pulumi's mocks: "
        "nothing was deployed; addresses and generated values are stand-ins."
    ]
    if stack_input.placeholders:
        lines.append("Placeholders for values the stack file leaves to you (override with --set):")
        lines += [f"  {k} = {json.dumps(v)}" for k, v in stack_input.placeholders.items()]
    if stack_input.secrets:
        lines.append(f"Stand-ins for the stack's secrets: {', '.join(sorted(stack_input.secrets))}")
    lines += [f"warning: {w}" for w in plan.warnings]
    lines.append(f"Configuration valid. {len(plan.resources)} resources:")
    by_type: dict[str, list[Registered]] = {}
    for resource in plan.resources:
        by_type.setdefault(resource.type, []).append(resource)
    for typ in sorted(by_type):
        lines.append("")
        lines.append(typ)
        for resource in by_type[typ]:
            lines.append(f"  {resource.name}")
            lines += [f"      {line}" for line in resource_lines(resource)]
    lines.append("")
    lines.append("Outputs:")
    for key, value in plan.outputs.items():
        shown = "[secret]" if key in plan.secret_outputs else json.dumps(unwrap(value))
        if len(shown) > MAX_SHOWN_OUTPUT:
            shown = shown[: MAX_SHOWN_OUTPUT - 3] + "..."
        lines.append(f"  {key} = {shown}")
    return lines


def main(argv: list[str] | None = None, prog: str = "vllm-gcp plan") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("stack", help="the stack: reads stacks/Pulumi.<stack>.yaml")
    parser.add_argument("--out", type=Path, help="write the host's files (redacted) here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, YAML-parsed (e.g. gcp:project=my-project, "
        "'vllm-gcp:access.sshCidrs=[203.0.113.7/32]', vllm-gcp:model.maxModelLen=8192)",
    )
    args = parser.parse_args(argv)
    try:
        stack_input = read_stack(args.stack, args.set)
        plan = run_program(stack_input.config, stack=args.stack, secrets=stack_input.secrets)
        print("\n".join(summary(args.stack, stack_input, plan)))
        if args.out is not None:
            written = write_out(args.out, plan, secret_names(stack_input))
            print(f"\nWrote {len(written)} files (secrets redacted) to {args.out}:")
            print("\n".join(f"  {path.name}" for path in written))
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return 2
    except PlanError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
