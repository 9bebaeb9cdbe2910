"""Offline plan: validate a stack file and show what the program would manage, without the cloud.

    vllm-gcp plan STACK [--out DIR] [--set KEY=VALUE ...] [--stand-in SECRET ...]
    vllm-gcp plan STACK --against BASE

Runs the real program under Pulumi's mocks (tools/offline.py): no credentials, no Pulumi CLI,
nothing deployed. STACK is a stack name or a stack file's path. Prints what the stack serves, its
hourly cost (tools/prices.py) and the resources grouped by type with the properties a reviewer
checks; with --out, writes every file the host would receive with secrets redacted, plus
resources.json (the record a diff compares); with --against, what would change from BASE instead
(tools/plan_diff.py). The same stack gives the same bytes. Exit 0 when planned (a diff is not an
error), 2 when the plan cannot run or the configuration is invalid (every problem by key path).
Secrets are never read: where the stack file holds one (`secure:`), or --stand-in names one, a
stand-in takes its place, and every stand-in is redacted from what is written. docs/plan.md is
the user's guide.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from components.config import PROJECT, SECRET_KEYS, ConfigError, StackConfig
from components.host_bundle import OpsAgent, ops_agent_config
from tools import plan_diff, prices
from tools.image_build import is_prepared_image
from tools.offline import (
    MOCK_API_KEY,
    MOCK_ELASTICSEARCH_KEY,
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
STAND_IN_KEY_SEED = bytes(range(32))  # the private value of the stand-in TLS key (provided mode)
STAND_IN_SERIAL = 0x5EC2E7
STAND_IN_VALID_FROM = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
STAND_IN_VALID_UNTIL = datetime.datetime(2126, 1, 1, tzinfo=datetime.UTC)
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
COMMAND_TYPES = (REMOTE_COMMAND, "command:local:Command")
DYNAMIC_PROVIDER_INPUT = "__provider"
RESOURCES_FILE = "resources.json"
MAX_SHOWN_TRIGGER = 40
# stdin bundles (components/host_bundle.py `file_bundle`): one "<name> <base64>" line per file.
_BUNDLE_LINE = re.compile(r"^([a-z_]+) ([A-Za-z0-9+/]+={0,2})$")
_BUNDLE_SUFFIXES = {"site": ".conf", "certificate": ".crt", "private_key": ".key"}


class PlanError(Exception):
    """The plan cannot run: a missing or unreadable stack file, a bad --set, a secret it cannot
    stand in for."""


@dataclass(frozen=True)
class StackFile:
    """The stack the plan reads: its name (what the program runs as) and its file."""

    name: str
    path: Path

    @property
    def shown(self) -> str:
        try:
            return str(self.path.resolve().relative_to(ROOT.resolve()))
        except ValueError:
            return str(self.path)


@dataclass
class StackInput:
    """What the program runs with: plain config, secret stand-ins, and what was stood in."""

    config: dict[str, Any]
    secrets: dict[str, str] = field(default_factory=dict)
    placeholders: dict[str, Any] = field(default_factory=dict)
    given: dict[str, Any] = field(default_factory=dict)  # --set, by key path
    stack: StackFile | None = None  # None: a configuration made in code, not read from a file

    @property
    def source(self) -> StackFile:
        if self.stack is None:
            raise PlanError("this configuration was not read from a stack file")
        return self.stack


# ------------------------------------------------------------------------------------------------
# Reading the stack file


_STACK_FILE_NAME = re.compile(r"^Pulumi\.(.+)\.ya?ml$")


def _named_stack(name: str) -> Path:
    return ROOT / "stacks" / f"Pulumi.{name}.yaml"


def stack_file(reference: str) -> StackFile:
    """A stack name (stacks/Pulumi.<name>.yaml) or the path of a stack file."""
    if Path(reference).is_dir() and ("/" in reference or not _named_stack(reference).is_file()):
        raise PlanError(f"{reference} is a directory without a plan written by --out in it")
    looks_like_path = "/" in reference or reference.endswith((".yaml", ".yml"))
    if looks_like_path or Path(reference).is_file():
        path = Path(reference)
        if not path.is_file():
            raise PlanError(f"no stack file {reference}")
        match = _STACK_FILE_NAME.match(path.name)
        return StackFile(match.group(1) if match else path.stem, path)
    path = _named_stack(reference)
    if not path.is_file():
        known = sorted(
            m.group(1) for p in path.parent.glob("*.yaml") if (m := _STACK_FILE_NAME.match(p.name))
        )
        raise PlanError(f"no stack file stacks/{path.name} (stacks: {', '.join(known)})")
    return StackFile(reference, path)


def _read_document(stack: StackFile) -> dict[str, Any]:
    """The stack file's config; a YAML error as one message with the file and line."""
    try:
        document = yaml.safe_load(stack.path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{stack.shown}:{mark.line + 1}:{mark.column + 1}" if mark else stack.shown
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        context_mark = getattr(error, "context_mark", None)
        if context and context_mark:
            context += f" that starts at line {context_mark.line + 1}"
        detail = f"{problem} ({context})" if context else problem
        raise PlanError(f"{where}: the stack file is not valid YAML: {detail}") from None
    except OSError as error:
        raise PlanError(f"{stack.shown}: cannot read the stack file: {error.strerror}") from None
    document = document or {}
    if not isinstance(document, dict) or not isinstance(document.get("config") or {}, dict):
        raise PlanError(f"{stack.shown}: expected a mapping with a `config:` mapping inside")
    return copy.deepcopy(dict(document.get("config") or {}))


# A key path as `pulumi config set --path` takes it: `ns:key.a[0].b`, `ns:key["a.b"]`.
_PATH_TOP = re.compile(r"^([^.\[]+)")
_PATH_PART = re.compile(r'\.([^.\[\]"]+)|\[(\d+)\]|\["([^"]+)"\]')


def parse_key_path(key: str) -> tuple[str, list[str | int]]:
    """(`namespace:key`, the path below it); a key without namespace is the project's."""
    top = _PATH_TOP.match(key)
    if top is None:
        raise PlanError(f"--set {key!r}: expected a key such as vllm-gcp:model.maxModelLen")
    path: list[str | int] = []
    position = top.end()
    while position < len(key):
        part = _PATH_PART.match(key, position)
        if part is None:
            raise PlanError(
                f"--set {key!r}: cannot read the path from {key[position:]!r} (write it as "
                "`pulumi config set --path` does: a.b[0].c)"
            )
        name, index, quoted = part.groups()
        path.append(int(index) if index is not None else (name or quoted))
        position = part.end()
    name = top.group(1)
    return (name if ":" in name else f"{PROJECT}:{name}"), path


def _parse_set(item: str) -> tuple[str, list[str | int], Any]:
    """`ns:key.path=value` to (ns:key, path, YAML-parsed value)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise PlanError(f"--set {item!r}: expected KEY=VALUE, e.g. gcp:project=my-project")
    top, path = parse_key_path(key)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as error:
        raise PlanError(f"--set {item!r}: the value is not YAML: {error}") from None
    if top.split(":", 1)[1] in SECRET_KEYS and top.startswith(f"{PROJECT}:"):
        raise PlanError(
            f"--set {top}: the plan never reads secrets; where the stack file sets one, a "
            f"stand-in is used, and --stand-in {top.split(':', 1)[1]} plans with one where it "
            "does not"
        )
    return top, path, value


def key_path_text(top: str, path: Sequence[str | int]) -> str:
    """`ns:key.a[0].b`, the key path as the plan shows it."""
    return top + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _container_for(next_key: str | int) -> Any:
    return [] if isinstance(next_key, int) else {}


def _assign(config: dict[str, Any], top: str, path: Sequence[str | int], value: Any) -> None:
    """Set the value at the path, creating objects and lists on the way, as `pulumi config set
    --path` does; an index may extend a list by one item."""
    shown = key_path_text(top, path)
    keys: list[str | int] = [top, *path]
    node: Any = config
    for position, key in enumerate(keys):
        last = position == len(keys) - 1
        if isinstance(key, int):
            if not isinstance(node, list):
                raise PlanError(
                    f"--set {shown}: [{key}] indexes a list, and the value there is not"
                )
            if key > len(node):
                raise PlanError(
                    f"--set {shown}: index {key} is past the end of the list ({len(node)} "
                    f"item(s)): give an index up to {len(node)}"
                )
            if key == len(node):
                node.append(None)
            if last:
                node[key] = value
                return
            if node[key] is None:
                node[key] = _container_for(keys[position + 1])
            node = node[key]
            continue
        if not isinstance(node, dict):
            raise PlanError(f"--set {shown}: .{key} names a key, and the value there is no object")
        if last:
            node[key] = value
            return
        if node.get(key) is None:
            node[key] = _container_for(keys[position + 1])
        node = node[key]


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

    Fixed throughout (an Ed25519 key, whose signatures are deterministic, the serial number, the
    validity), so that two plans of a stack are the same bytes: a published stand-in, never used.
    """
    key = ed25519.Ed25519PrivateKey.from_private_bytes(STAND_IN_KEY_SEED)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(STAND_IN_SERIAL)
        .not_valid_before(STAND_IN_VALID_FROM)
        .not_valid_after(STAND_IN_VALID_UNTIL)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, None)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def _stand_in_names(stand_ins: Iterable[str]) -> list[str]:
    names = []
    for given in stand_ins:
        name = given.split(":", 1)[1] if given.startswith(f"{PROJECT}:") else given
        if name not in SECRET_KEYS:
            raise PlanError(
                f"--stand-in {given}: not a secret of the stack ({', '.join(SECRET_KEYS)})"
            )
        names.append(name)
    return names


def read_stack(
    reference: str, settings: Iterable[str] = (), stand_ins: Iterable[str] = ()
) -> StackInput:
    """The stack file with --set applied, placeholders and secret stand-ins added."""
    stack = stack_file(reference)
    config = _read_document(stack)
    given: dict[str, Any] = {}
    for item in settings:
        top, path, value = _parse_set(item)
        _assign(config, top, path, value)
        given[key_path_text(top, path)] = value

    stack_input = StackInput(config={}, given=given, stack=stack)
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
    for name in _stand_in_names(stand_ins):
        stack_input.secrets[name] = ""

    for dotted, placeholder in PLACEHOLDERS.items():
        if not _has(stack_input.config, dotted):
            top, *rest = dotted.split(".")
            _assign(stack_input.config, top, rest, placeholder)
            stack_input.placeholders[dotted] = placeholder

    tls = stack_input.config.get(f"{PROJECT}:tls")
    domain = tls.get("domain") if isinstance(tls, dict) else None
    certificate, private_key = stand_in_certificate(str(domain or "offline-plan.example.com"))
    stand_in_values = {
        "huggingFaceToken": MOCK_HF_TOKEN,
        "kibanaApiKey": MOCK_KIBANA_KEY,
        "elasticsearchApiKey": MOCK_ELASTICSEARCH_KEY,
        "tlsCertificate": certificate,
        "tlsPrivateKey": private_key,
    }
    stack_input.secrets = {name: stand_in_values[name] for name in sorted(stack_input.secrets)}
    return stack_input


# ------------------------------------------------------------------------------------------------
# The plan's own words: --set where the configuration's messages say `pulumi config set`

_CONFIG_SET = re.compile(
    r"pulumi config set (?P<path>--path )?(?:'(?P<quoted>[^']+)'|(?P<key>[^\s`'<]+)) "
    r"(?P<value>'[^']*'|<[^>]*>\S*|[^\s`]+)"
)
_SECRET_PROBLEM = re.compile(rf"^  - {PROJECT}:({'|'.join(SECRET_KEYS)}): ")


def _as_set(match: re.Match[str]) -> str:
    key = match.group("quoted") or match.group("key")
    value = match.group("value")
    if value.startswith("'") and value.endswith("'"):
        value = value[1:-1]
    return f"--set '{key}={value}'"


def plan_speaks(message: str) -> str:
    """A configuration message as the plan gives it: what to set with --set (a secret with
    --stand-in), `vllm-gcp plan` where it says `pulumi preview`."""
    lines = []
    for given in message.splitlines():
        if "pulumi config set --secret" in given:
            secret = _SECRET_PROBLEM.match(given)
            hint = f" (to plan without it: --stand-in {secret.group(1)})" if secret else ""
            lines.append(given + hint)
            continue
        spoken = _CONFIG_SET.sub(_as_set, given)
        lines.append(spoken.replace("run `pulumi preview` again", "run `vllm-gcp plan` again"))
    return "\n".join(lines)


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
        MOCK_ELASTICSEARCH_KEY: "elasticsearchApiKey",
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


def redact(
    value: Any, names: Mapping[str, str], inside_secret: bool = False, *, digests: bool = False
) -> Any:
    """A resource input with secrets redacted; secret text without a known secret goes whole (as
    `<redacted>`, or with `digests` as `<redacted:sha256:...>`, so that a diff sees it change: it
    derives from the stack file and the published stand-ins only)."""
    if is_secret_value(value):
        return redact(value["value"], names, inside_secret=True, digests=digests)
    if isinstance(value, dict):
        return {k: redact(v, names, inside_secret, digests=digests) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, names, inside_secret, digests=digests) for v in value]
    if isinstance(value, str):
        text, found = redact_text(value, names)
        if found or not inside_secret:
            return text
    if not inside_secret or value is None:
        return value
    return plan_diff.redacted_digest(value) if digests else "<redacted>"


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


# ------------------------------------------------------------------------------------------------
# The record of a plan (resources.json), what a diff compares


def _resource_key(urn: str) -> str:
    """`type::name` of a URN (urn:pulumi:stack::project::parent$type::name): the same in every
    stack, so that two stacks' plans compare."""
    _, _, qualified, name = urn.split("::", 3)
    return f"{qualified.rsplit('$', 1)[-1]}::{name}"


def _script_of(command: str) -> str | None:
    """The script a remote step's command line carries in its here-document
    (components/remote_access.py `step_command`)."""
    lines = command.splitlines()
    opening = next((i for i, line in enumerate(lines) if "=$(cat <<'" in line), None)
    if opening is None:
        return None
    end = lines[opening].rsplit("<<'", 1)[1].rstrip("'")
    try:
        closing = lines.index(end, opening + 1)
    except ValueError:
        return None
    return "\n".join(lines[opening + 1 : closing])


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _flat(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _flat(value[key], f"{prefix}.{key}")
    else:
        yield prefix, value


def _known_values(plan: Plan, config: Mapping[str, Any]) -> list[tuple[Any, str]]:
    """Values a trigger may be, each with its name: a resource's computed output, the digest of a
    step's stdin (or script and stdin), a configuration value."""
    known: list[tuple[Any, str]] = []
    for resource in sorted(plan.resources, key=lambda r: (r.type, r.name)):
        for key, value in sorted(_computed(resource).items()):
            known.append((unwrap(value), f"{resource.name}.{key}"))
        if resource.type in COMMAND_TYPES:
            stdin = str(resource.plain.get("stdin") or "")
            script = _script_of(str(resource.plain.get("create") or "")) or ""
            known.append((_sha256(stdin), f"sha256 of {resource.name}'s stdin"))
            for text in (script, script + "\n"):
                known.append(
                    (_sha256(text + stdin), f"sha256 of {resource.name}'s script and stdin")
                )
    for top in sorted(config):
        for path, value in _flat(config[top], top):
            # Not a flag: true and false stand for too many things to name one.
            if isinstance(value, int | str) and not isinstance(value, bool):
                known.append((value, f"{path} = {json.dumps(value)}"))
    return known


def trigger_names(resource: Registered, known: Sequence[tuple[Any, str]]) -> list[str]:
    """What each of a command's triggers is, by name."""
    triggers = resource.inputs.get("triggers") or []
    secret = is_secret_value(triggers)
    names = []
    for item in unwrap(triggers) if secret else triggers:
        value = unwrap(item)
        found = next((name for candidate, name in known if candidate == value), None)
        if found is None and (secret or is_secret_value(item)):
            found = "a secret value"
        elif found is None:
            shown = json.dumps(value)
            found = shown if len(shown) <= MAX_SHOWN_TRIGGER else f"a value of {len(shown)} chars"
        names.append(found)
    return names


def _computed(resource: Registered) -> dict[str, Any]:
    """The outputs the provider adds (stand-ins here): those that are not an input as given."""
    return {
        key: value
        for key, value in resource.outputs.items()
        if key not in resource.inputs or unwrap(resource.inputs[key]) != unwrap(value)
    }


def _options(resource: Registered, names: Mapping[str, str]) -> dict[str, Any]:
    options = resource.options
    recorded: dict[str, Any] = {
        "ignoreChanges": sorted(options.ignore_changes),
        "replaceOnChanges": sorted(options.replace_on_changes),
        "deleteBeforeReplace": options.delete_before_replace,
        "replacementTrigger": redact(options.replacement_trigger, names, digests=True),
    }
    return {k: v for k, v in recorded.items() if v not in ([], False, None)}


def records(plan: Plan, stack_input: StackInput) -> list[dict[str, Any]]:
    """Every resource as resources.json holds it, ordered by type and name."""
    names = secret_names(stack_input)
    known = _known_values(plan, stack_input.config)
    recorded = []
    for resource in sorted(plan.resources, key=lambda r: (r.type, r.name)):
        # A dynamic resource's serialized provider is code, not configuration.
        inputs = {k: v for k, v in resource.inputs.items() if k != DYNAMIC_PROVIDER_INPUT}
        record: dict[str, Any] = {
            "type": resource.type,
            "name": resource.name,
            "inputs": redact(inputs, names, digests=True),
            "computed": redact(_computed(resource), names, digests=True),
            "options": _options(resource, names),
            "dependsOn": sorted({_resource_key(urn) for urn in resource.options.dependencies}),
        }
        if resource.type in COMMAND_TYPES:
            record["triggers"] = trigger_names(resource, known)
        recorded.append(record)
    return recorded


def refuse_a_full_directory(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise PlanError(
            f"--out {directory} is not an empty directory: give a new or empty one (the plan "
            "never overwrites files), e.g. --out plan-$(date +%Y%m%d-%H%M%S)"
        )


def write_out(directory: Path, plan: Plan, stack_input: StackInput) -> list[Path]:
    refuse_a_full_directory(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, content in sorted(host_files(plan, secret_names(stack_input)).items()):
        path = directory / name
        path.write_text(content)
        written.append(path)
    path = directory / RESOURCES_FILE
    path.write_text(json.dumps(records(plan, stack_input), indent=2, sort_keys=True) + "\n")
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


def _command_lines(resource: Registered, known: Sequence[tuple[Any, str]]) -> list[str]:
    inputs = resource.inputs
    stdin = inputs.get("stdin")
    carried = "none" if stdin is None else ("secret" if is_secret_value(stdin) else "plain")
    triggers = trigger_names(resource, known)
    return [
        f"stdin: {carried}",
        "re-runs (replaced) when a trigger changes: " + ("; ".join(triggers) or "none"),
        "re-runs (updated) when any other input changes: its script, its stdin, ...",
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


def resource_lines(resource: Registered, known: Sequence[tuple[Any, str]] = ()) -> list[str]:
    if resource.type in _SUMMARIES:
        return _SUMMARIES[resource.type](_tidy(resource.plain))
    if resource.type in COMMAND_TYPES:
        return _command_lines(resource, known)
    if resource.type.startswith(f"{PROJECT}:"):
        return []
    inputs = {k: v for k, v in resource.inputs.items() if k != DYNAMIC_PROVIDER_INPUT}
    return _generic_lines(_tidy(inputs))


def _given_mark(stack_input: StackInput, *keys: str) -> str:
    given = [k for k in stack_input.given if any(k.startswith(key) for key in keys)]
    return " (from --set)" if given else ""


def serving_lines(stack: StackConfig, stack_input: StackInput) -> list[str]:
    """What the stack serves, on what: what a reviewer checks first."""
    model = stack.model
    machine = stack.machine
    key = f"{PROJECT}:model"

    def mark(field_name: str) -> str:
        return _given_mark(stack_input, f"{key}.{field_name}", f"{key}=")

    served = model.served_model_name
    parser = model.effective_tool_call_parser
    context = (
        "vLLM's default (the model's own)"
        if model.max_model_len is None
        else (str(model.max_model_len))
    )
    host_mark = _given_mark(stack_input, f"{PROJECT}:host.machineType", f"{PROJECT}:host=")
    fleet = stack.fleet
    if fleet is None:
        where = f"one VM in {stack.zone}"
    else:
        zones = ", ".join(stack.fleet_zones)
        size = (
            f"{fleet.min_replicas} to {fleet.max_replicas} (autoscaled)"
            if fleet.autoscaled
            else str(fleet.size)
        )
        where = f"a fleet of {size} replicas in {stack.region} ({zones})"
    image = stack.host.image
    image_mark = _given_mark(stack_input, f"{PROJECT}:host.image", f"{PROJECT}:host=")
    prepared = (
        "prepared (vllm-gcp image build): the software comes in the image"
        if is_prepared_image(image)
        else "not prepared: each host installs Docker, the container toolkit, Nginx"
        + (" and the Ops Agent" if stack.observability.enabled else "")
        + " at its first boot"
    )
    return [
        "Serving:",
        f"  model: {model.id}{mark('id')}, served as {served}{mark('servedName')}",
        f"  GPUs: {machine.gpu_count} x {machine.gpu.display_name} ({machine.name}){host_mark}",
        f"  tensor parallel size: {stack.tensor_parallel_size}{mark('tensorParallelSize')}",
        f"  GPU memory utilisation: {model.gpu_memory_utilization}{mark('gpuMemoryUtilization')}",
        f"  maxModelLen: {context}{mark('maxModelLen')}",
        f"  tool-call parser: {parser or 'none (tool calling off)'}{mark('toolCallParser')}",
        f"  vLLM image: {model.image}{mark('image')}",
        f"  where: {where}",
        f"  host image: {image}{image_mark}, {prepared}",
    ]


# The resources observability makes (components/observability.py, components/fleet.py).
_DASHBOARD = "gcp:monitoring/dashboard:Dashboard"
_ALERT_POLICY = "gcp:monitoring/alertPolicy:AlertPolicy"
_AUTOSCALER = "gcp:compute/regionAutoscaler:RegionAutoscaler"


def _collected(agent_config: Mapping[str, Any]) -> list[str]:
    """What the hosts' Ops Agent collects, read from the configuration it is given."""
    lines: list[str] = []
    for receiver in agent_config["metrics"]["receivers"].values():
        for scrape in receiver["config"]["scrape_configs"]:
            targets = [t for group in scrape["static_configs"] for t in group["targets"]]
            lines.append(
                f"metrics: job {scrape['job_name']} from {', '.join(targets)}"
                f"{scrape['metrics_path']} every {scrape['scrape_interval']}"
            )
    lines.append("metrics: the GPUs' utilisation and memory (the agent's own NVML receiver)")
    for name, receiver in agent_config["logging"]["receivers"].items():
        paths = ", ".join(receiver.get("include_paths", [])) or "the systemd journal"
        lines.append(f"logs: {name} ({receiver['type']}) from {paths}")
    guards = agent_config["logging"]["processors"]
    dropped = [p for p in guards.values() if p["type"] == "exclude_logs"]
    if dropped:
        lines.append(
            f"logs dropped before they leave the host: {len(dropped[0]['match_any'])} rules"
        )
    return lines


def observability_lines(stack: StackConfig, plan: Plan) -> list[str]:
    """What the stack collects, charts, alerts on and scales on."""
    if not stack.observability.enabled:
        return ["Observability: off (observability.enabled false): no agent, dashboard or alerts"]
    agent = yaml.safe_load(ops_agent_config(OpsAgent(stack.labels["stack"])))
    lines = ["Observability:", *(f"  {line}" for line in _collected(agent))]
    for dashboard in plan.of_type(_DASHBOARD):
        title = json.loads(str(dashboard.plain["dashboardJson"]))["displayName"]
        lines.append(f"  dashboard: {title}")
    channels = len(stack.notification_channels)
    to = f"to {channels} notification channel(s)" if channels else "in the console only"
    for policy in sorted(plan.of_type(_ALERT_POLICY), key=lambda p: p.name):
        for condition in policy.plain["conditions"]:
            query = condition["conditionPrometheusQueryLanguage"]
            lines.append(
                f"  alert: {policy.plain['displayName']} ({query['duration']} of "
                f"{query['query']}), {to}"
            )
    for autoscaler in plan.of_type(_AUTOSCALER):
        policy = autoscaler.plain["autoscalingPolicy"]
        targets = "; ".join(
            f"{metric['name'].split('/')[1]} {metric['singleInstanceAssignment']:g} per replica"
            for metric in policy["metrics"]
        )
        lines.append(
            f"  autoscaler: {policy['minReplicas']:g} to {policy['maxReplicas']:g} replicas on "
            f"{targets}; cool-down {policy['cooldownPeriod']:g} s"
        )
    return lines


def summary(stack_input: StackInput, plan: Plan, stack: StackConfig) -> list[str]:
    lines = [
        f"Offline plan of stack {stack_input.source.name} ({stack_input.source.shown}) under "
        "Pulumi's mocks: nothing was deployed; addresses and generated values are stand-ins."
    ]
    if stack_input.placeholders:
        lines.append("Placeholders for values the stack file leaves to you (override with --set):")
        lines += [f"  {k} = {json.dumps(v)}" for k, v in stack_input.placeholders.items()]
    if stack_input.given:
        lines.append("Values given with --set:")
        lines += [f"  {k} = {json.dumps(v)}" for k, v in stack_input.given.items()]
    if stack_input.secrets:
        lines.append(f"Stand-ins for the stack's secrets: {', '.join(sorted(stack_input.secrets))}")
    lines += [f"warning: {w}" for w in plan.warnings]
    lines += ["", *serving_lines(stack, stack_input), ""]
    lines += [*observability_lines(stack, plan), ""]
    lines += prices.cost_lines(
        [{"type": r.type, "name": r.name, "inputs": _tidy(r.plain)} for r in plan.resources]
    )
    lines += ["", f"Configuration valid. {len(plan.resources)} resources:"]
    known = _known_values(plan, stack_input.config)
    by_type: dict[str, list[Registered]] = {}
    for resource in plan.resources:
        by_type.setdefault(resource.type, []).append(resource)
    for typ in sorted(by_type):
        lines.append("")
        lines.append(typ)
        for resource in sorted(by_type[typ], key=lambda r: r.name):
            lines.append(f"  {resource.name}")
            lines += [f"      {line}" for line in resource_lines(resource, known)]
    lines.append("")
    lines.append("Outputs:")
    for key in sorted(plan.outputs):
        value = plan.outputs[key]
        shown = "[secret]" if key in plan.secret_outputs else json.dumps(unwrap(value))
        if len(shown) > MAX_SHOWN_OUTPUT:
            shown = shown[: MAX_SHOWN_OUTPUT - 3] + "..."
        lines.append(f"  {key} = {shown}")
    return lines


@dataclass
class PlannedStack:
    stack_input: StackInput
    plan: Plan
    stack: StackConfig


def plan_stack(
    reference: str, settings: Iterable[str] = (), stand_ins: Iterable[str] = ()
) -> PlannedStack:
    """Read the stack and run the program on it; a configuration error in the plan's words."""
    stack_input = read_stack(reference, settings, stand_ins)
    seen: dict[str, Any] = {}

    def observe(program_globals: Mapping[str, Any]) -> Mapping[str, object]:
        seen["stack"] = program_globals["stack"]
        return {}

    try:
        plan = run_program(
            stack_input.config,
            stack=stack_input.source.name,
            secrets=stack_input.secrets,
            observe=observe,
        )
    except ConfigError as error:
        raise PlanConfigError(plan_speaks(str(error))) from None
    return PlannedStack(stack_input, plan, seen["stack"])


class PlanConfigError(Exception):
    """The stack's configuration is invalid: every problem, as the plan words them."""


def is_written_plan(reference: str) -> bool:
    """A directory written by --out; a stack's name wins over a directory of that name unless
    the reference has a slash (`./prod/`)."""
    if not (Path(reference) / RESOURCES_FILE).is_file():
        return False
    return "/" in reference or not _named_stack(reference).is_file()


def plan_records(reference: str, stand_ins: Iterable[str]) -> tuple[list[dict[str, Any]], str]:
    """One side of a diff and its label: a directory written by --out, or a stack (name or
    file), planned."""
    if is_written_plan(reference):
        path = Path(reference) / RESOURCES_FILE
        try:
            recorded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise PlanError(f"{reference}: no plan written by --out there ({error})") from None
        return recorded, f"the plan in {reference}"
    planned = plan_stack(reference, (), stand_ins)
    return records(planned.plan, planned.stack_input), _label(planned.stack_input)


def _label(stack_input: StackInput) -> str:
    given = "".join(f", --set {k}={json.dumps(v)}" for k, v in stack_input.given.items())
    return f"stack {stack_input.source.name} ({stack_input.source.shown}{given})"


def _print_diff(
    new: Sequence[Mapping[str, Any]], base: Sequence[Mapping[str, Any]], label: str, base_label: str
) -> None:
    changes = plan_diff.diff(new, base)
    print("\n".join(plan_diff.diff_lines(changes, new, label, base_label)))


def _diff_recorded(args: argparse.Namespace) -> int:
    """A directory written by --out, against BASE: the diff from the records alone."""
    if args.against is None or args.set or args.out is not None:
        raise PlanError(
            f"{args.stack} is a directory: a written plan is only read with --against BASE "
            "(without --set or --out)"
        )
    new, label = plan_records(args.stack, args.stand_in)
    base, base_label = plan_records(args.against, args.stand_in)
    _print_diff(new, base, label, base_label)
    return 0


def main(argv: list[str] | None = None, prog: str = "vllm-gcp plan") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "stack",
        help="a stack name (reads stacks/Pulumi.<stack>.yaml) or a stack file's path; with "
        "--against, also a directory written by --out",
    )
    parser.add_argument("--out", type=Path, help="write the host's files (redacted) here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, YAML-parsed, the key path as `pulumi config set --path` "
        "takes it (e.g. gcp:project=my-project, 'vllm-gcp:access.sshCidrs[0]=203.0.113.7/32', "
        "vllm-gcp:model.maxModelLen=8192)",
    )
    parser.add_argument(
        "--stand-in",
        action="append",
        default=[],
        metavar="SECRET",
        help="plan with a stand-in for a secret the stack file does not hold "
        f"({', '.join(SECRET_KEYS)})",
    )
    parser.add_argument(
        "--against",
        metavar="BASE",
        help="show what would change from BASE (a stack name, a stack file, or a directory "
        "written by --out) to this plan, instead of the summary",
    )
    args = parser.parse_args(argv)
    try:
        if args.out is not None:
            refuse_a_full_directory(args.out)
        if is_written_plan(args.stack):
            return _diff_recorded(args)
        planned = plan_stack(args.stack, args.set, args.stand_in)
        if args.against is None:
            print("\n".join(summary(planned.stack_input, planned.plan, planned.stack)))
        else:
            base, base_label = plan_records(args.against, args.stand_in)
            new = records(planned.plan, planned.stack_input)
            _print_diff(new, base, _label(planned.stack_input), base_label)
        if args.out is not None:
            written = write_out(args.out, planned.plan, planned.stack_input)
            print(f"\nWrote {len(written)} files (secrets redacted) to {args.out}:")
            print("\n".join(f"  {path.name}" for path in written))
    except PlanConfigError as error:
        print(str(error), file=sys.stderr)
        return 2
    except PlanError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
