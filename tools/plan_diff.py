"""The offline stand-in for `pulumi preview --diff`: two recorded plans, compared resource by
resource.

A record is one entry of a plan's resources.json (tools/plan.py `records`): type, name, inputs
(secrets redacted, a secret that holds no known stand-in by its digest), the outputs the provider
computes (stand-ins), the resource options the engine acts on, what it depends on, and for a
command the names of its triggers. The diff says what the engine and the providers would do if
the stack whose plan is the base were updated to the other: create, delete, replace (and why),
update in place (which inputs), and which remote steps run again.

What replaces, from the providers' own code (each table below cites its file), the program's
resource options (replaceOnChanges, replacementTrigger, ignoreChanges) and pulumi-command's
triggers. A replaced resource's computed outputs are unknown until it exists: a dependent whose
input carries one changes too (and is replaced where that input replaces it), as in a preview.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Record = Mapping[str, Any]

INSTANCE = "gcp:compute/instance:Instance"
REGION_TEMPLATE = "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate"
COMMAND_TYPES = ("command:remote:Command", "command:local:Command")

# Inputs a change of which replaces the resource: the `ForceNew: true` fields of
# terraform-provider-google v7.45.0 (commit e03b762, the schemas of the files named), as
# pulumi-gcp names them. `x[*].y` is field y of any item of list x; a list named alone replaces
# when its length changes (a ForceNew list's count).
FORCE_NEW: dict[str, tuple[str, ...]] = {
    # google/services/compute/resource_compute_instance.go. Not machine_type: it updates in place
    # with allow_stopping_for_update (the program replaces on it with replaceOnChanges instead).
    INSTANCE: (
        "name",
        "zone",
        "project",
        "hostname",
        "bootDisk.deviceName",
        "bootDisk.mode",
        "bootDisk.source",
        "bootDisk.kmsKeySelfLink",
        "bootDisk.guestOsFeatures",
        "bootDisk.initializeParams.image",
        "bootDisk.initializeParams.type",
        "bootDisk.initializeParams.snapshot",
        "bootDisk.initializeParams.resourceManagerTags",
        "bootDisk.initializeParams.resourcePolicies",
        "bootDisk.initializeParams.provisionedIops",
        "bootDisk.initializeParams.provisionedThroughput",
        "bootDisk.initializeParams.enableConfidentialCompute",
        "bootDisk.initializeParams.storagePool",
        "bootDisk.initializeParams.architecture",
        "networkInterfaces[*].networkAttachment",
        "networkInterfaces[*].vlan",
        "networkInterfaces[*].nicType",
        "networkInterfaces[*].queueCount",
        "networkPerformanceConfig",
        "guestAccelerators",
        "guestAccelerators[*].count",
        "guestAccelerators[*].type",
        "params",
        "scheduling.preemptible",
        "scheduling.provisioningModel",
        "scheduling.terminationTime",
        "scheduling.maxRunDuration",
        "scheduling.onInstanceStopAction",
        "scheduling.localSsdRecoveryTimeout",
        "scratchDisks",
        "confidentialInstanceConfig",
        "reservationAffinity",
        "keyRevocationActionType",
        "instanceEncryptionKey",
    ),
    # google/services/compute/resource_compute_region_instance_group_manager.go
    "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager": (
        "baseInstanceName",
        "name",
        "region",
        "description",
        "project",
        "distributionPolicyZones",
    ),
    # google/services/compute/resource_compute_address.go
    "gcp:compute/address:Address": (
        "name",
        "address",
        "addressType",
        "description",
        "ipVersion",
        "network",
        "networkTier",
        "prefixLength",
        "purpose",
        "region",
        "subnetwork",
        "project",
    ),
    # google/services/compute/resource_compute_firewall.go
    "gcp:compute/firewall:Firewall": ("name", "direction", "params", "project"),
    # google/services/compute/resource_compute_network.go
    "gcp:compute/network:Network": (
        "name",
        "autoCreateSubnetworks",
        "description",
        "internalIpv6Range",
        "networkProfile",
        "params",
        "project",
    ),
    # google/services/compute/resource_compute_subnetwork.go
    "gcp:compute/subnetwork:Subnetwork": (
        "name",
        "network",
        "description",
        "params",
        "region",
        "reservedInternalRange",
        "project",
    ),
    # google/services/compute/resource_compute_forwarding_rule.go
    "gcp:compute/forwardingRule:ForwardingRule": (
        "name",
        "ipAddress",
        "ipProtocol",
        "allPorts",
        "backendService",
        "description",
        "ipVersion",
        "loadBalancingScheme",
        "network",
        "networkTier",
        "portRange",
        "ports",
        "region",
        "serviceLabel",
        "sourceIpRanges",
        "subnetwork",
        "project",
    ),
    # google/services/compute/resource_compute_region_backend_service.go
    "gcp:compute/regionBackendService:RegionBackendService": (
        "name",
        "loadBalancingScheme",
        "network",
        "params",
        "project",
    ),
    # google/services/compute/resource_compute_region_health_check.go
    "gcp:compute/regionHealthCheck:RegionHealthCheck": ("name", "region", "project"),
    # google/services/compute/resource_compute_region_ssl_certificate.go
    "gcp:compute/regionSslCertificate:RegionSslCertificate": (
        "certificate",
        "description",
        "name",
        "privateKey",
        "region",
        "namePrefix",
        "project",
    ),
    # google/services/compute/resource_compute_region_target_https_proxy.go
    "gcp:compute/regionTargetHttpsProxy:RegionTargetHttpsProxy": (
        "name",
        "description",
        "httpKeepAliveTimeoutSec",
        "region",
        "project",
    ),
    # google/services/compute/resource_compute_region_url_map.go
    "gcp:compute/regionUrlMap:RegionUrlMap": ("name", "project"),
    # google/services/compute/resource_compute_router.go
    "gcp:compute/router:Router": ("name", "network", "params", "region", "project"),
    # google/services/compute/resource_compute_router_nat.go
    "gcp:compute/routerNat:RouterNat": (
        "name",
        "router",
        "endpointTypes",
        "initialNatIps",
        "region",
        "type",
        "project",
    ),
    # google/services/resourcemanager/resource_google_service_account.go
    "gcp:serviceaccount/account:Account": ("accountId", "project"),
    # google/services/resourcemanager/resource_google_project_service.go
    "gcp:projects/service:Service": ("service", "project"),
    # google/tpgiamresource/resource_iam_member.go (IamMemberBaseSchema); the project is the
    # parent's identifier, ForceNew in every IAM member's parent schema.
    "gcp:projects/iAMMember:IAMMember": ("role", "member", "condition", "project"),
    "gcp:secretmanager/secretIamMember:SecretIamMember": (
        "role",
        "member",
        "condition",
        "secretId",
        "project",
    ),
    # google/services/secretmanager/resource_secret_manager_secret.go
    "gcp:secretmanager/secret:Secret": ("replication", "secretId", "tags", "project"),
    # google/services/secretmanager/resource_secret_manager_secret_version.go
    "gcp:secretmanager/secretVersion:SecretVersion": (
        "secretData",
        "secret",
        "isSecretDataBase64",
    ),
}
# ForceNew blocks whose fields update in place: adding or removing the block (its count)
# replaces, a change inside it only where the field is ForceNew too (the SDK's diff of a list's
# count, schema.ForceNew on the block).
FORCE_NEW_BLOCKS: dict[str, tuple[str, ...]] = {
    INSTANCE: ("bootDisk", "bootDisk.initializeParams", "networkInterfaces"),
}
# Inputs that update in place where every other input replaces: an instance template is immutable
# (resource_compute_region_instance_template.go, resourceComputeRegionInstanceTemplateUpdate:
# "Only the field deletion_policy, labels and terraform_labels is mutable").
MUTABLE_ONLY: dict[str, tuple[str, ...]] = {REGION_TEMPLATE: ("labels",)}
# Providers whose every input replaces: each attribute carries RequiresReplace
# (terraform-provider-tls internal/provider/resource_*.go; terraform-provider-random
# internal/provider/resource_password.go).
REPLACE_ON_ANY = ("tls:index/", "random:index/")
# pulumi-command: `triggers` is replace-on-change (provider/pkg/provider/common/inputs.go,
# `provider:"replaceOnChanges"`); any other change is an update, which runs `update` (or `create`
# where there is none: remote/commandController.go and local/commandController.go, Update).
COMMAND_TRIGGERS = "triggers"
# A computed output shorter than this is not looked for in a dependent's inputs (it would match
# by accident: a size, a flag).
MIN_TRACED_OUTPUT = 8

_INDEX = re.compile(r"\[\d+\]")
DIGEST_CHARS = 16


def redacted_digest(value: Any) -> str:
    """How a record shows a secret value that holds no known stand-in: by a digest, so that a
    diff sees it change (it derives from the stack file and the published stand-ins only)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return f"<redacted:sha256:{hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]}>"


@dataclass
class Change:
    kind: str  # create | delete | replace | update
    type: str
    name: str
    paths: list[str] = field(default_factory=list)  # the inputs that change
    replaced_by: list[str] = field(default_factory=list)  # why it is replaced
    carried: dict[str, str] = field(default_factory=dict)  # path -> the replaced resource


def key_of(record: Record) -> tuple[str, str]:
    return str(record["type"]), str(record["name"])


def changed_paths(new: Any, old: Any, prefix: str = "") -> list[str]:
    """Every input path whose value differs: objects key by key, lists item by item (a list whose
    length changes is one path)."""
    if isinstance(new, dict) and isinstance(old, dict):
        found: list[str] = []
        for key in sorted(set(new) | set(old)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in new or key not in old:
                found.append(path)
            else:
                found += changed_paths(new[key], old[key], path)
        return found
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        found = []
        for index, (item_new, item_old) in enumerate(zip(new, old, strict=True)):
            found += changed_paths(item_new, item_old, f"{prefix}[{index}]")
        return found
    return [] if new == old else [prefix]


def _covers(pattern: str, path: str) -> bool:
    """Whether a change at `path` is a change of `pattern` (or of something inside it)."""
    general = _INDEX.sub("[*]", path)
    return general == pattern or general.startswith((f"{pattern}.", f"{pattern}["))


def _leaf_paths(value: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _leaf_paths(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaf_paths(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


def _replace_reasons(record: Record, old: Record, paths: Sequence[str]) -> list[str]:
    typ = str(record["type"])
    options = record.get("options") or {}
    reasons: list[str] = []
    for path in paths:
        if typ in COMMAND_TYPES and _covers(COMMAND_TRIGGERS, path):
            reasons.append(f"{path} (a trigger: replace-on-change in pulumi-command)")
        elif any(_covers(pattern, path) for pattern in options.get("replaceOnChanges") or ()):
            reasons.append(f"{path} (the program's replaceOnChanges)")
        elif _INDEX.sub("[*]", path) in FORCE_NEW_BLOCKS.get(typ, ()):
            reasons.append(f"{path} (a ForceNew block in the provider, added or removed)")
        elif any(_covers(pattern, path) for pattern in FORCE_NEW.get(typ, ())):
            reasons.append(f"{path} (ForceNew in the provider)")
        elif typ in MUTABLE_ONLY and not any(_covers(p, path) for p in MUTABLE_ONLY[typ]):
            reasons.append(f"{path} (the provider cannot update it: immutable)")
        elif typ.startswith(REPLACE_ON_ANY):
            reasons.append(f"{path} (the provider replaces on any change)")
    old_trigger = (old.get("options") or {}).get("replacementTrigger")
    if options.get("replacementTrigger") != old_trigger:
        reasons.append("replacementTrigger: replaces (the program's replacement trigger changed)")
    return reasons


def _ignored(record: Record, path: str) -> bool:
    ignored = (record.get("options") or {}).get("ignoreChanges") or ()
    return any(_covers(pattern, path) for pattern in ignored)


def _traced_outputs(record: Record) -> list[tuple[str, str]]:
    computed = record.get("computed") or {}
    return [
        (key, value)
        for key, value in sorted(computed.items())
        if isinstance(value, str) and len(value) >= MIN_TRACED_OUTPUT
    ]


def _carried_paths(record: Record, replaced: Mapping[tuple[str, str], Record]) -> dict[str, str]:
    """Inputs that carry a computed output of a replaced resource this one depends on: unknown
    until the replacement exists, so they change."""
    carried: dict[str, str] = {}
    for dependency in record.get("dependsOn") or ():
        typ, _, name = str(dependency).partition("::")
        source = replaced.get((typ, name))
        if source is None:
            continue
        outputs = [output for _, output in _traced_outputs(source)]
        # A non-secret output inside a secret input (a list with one secret item is secret
        # whole) is recorded by its digest.
        digests = {redacted_digest(output) for output in outputs}
        for path, value in _leaf_paths(record.get("inputs") or {}):
            if isinstance(value, str) and (
                value in digests or any(output in value for output in outputs)
            ):
                carried.setdefault(path, name)
    return carried


def diff(new: Sequence[Record], old: Sequence[Record]) -> list[Change]:
    """What updating the stack planned as `old` to the plan `new` does, in `new`'s order, deleted
    resources last."""
    old_by_key = {key_of(r): r for r in old}
    new_keys = {key_of(r) for r in new}
    direct: dict[tuple[str, str], list[str]] = {}
    for record in new:
        previous = old_by_key.get(key_of(record))
        if previous is not None:
            paths = changed_paths(record.get("inputs") or {}, previous.get("inputs") or {})
            direct[key_of(record)] = [p for p in paths if not _ignored(record, p)]

    # Replacements carry unknown outputs to their dependents, which may then be replaced in turn:
    # repeated until nothing more is replaced.
    replaced: dict[tuple[str, str], Record] = {}
    changes: dict[tuple[str, str], Change] = {}
    while True:
        for record in new:
            key = key_of(record)
            previous = old_by_key.get(key)
            if previous is None:
                changes[key] = Change("create", *key)
                continue
            carried = {
                p: n for p, n in _carried_paths(record, replaced).items() if not _ignored(record, p)
            }
            paths = sorted(set(direct[key]) | set(carried))
            reasons = _replace_reasons(record, previous, paths)
            if reasons:
                changes[key] = Change("replace", *key, paths, reasons, carried)
            elif paths:
                changes[key] = Change("update", *key, paths, [], carried)
            else:
                changes.pop(key, None)
        now_replaced = {
            key: record
            for record in new
            if (key := key_of(record)) in changes and changes[key].kind in ("replace", "create")
        }
        if now_replaced.keys() == replaced.keys():
            break
        replaced = now_replaced
    ordered = [changes[key_of(r)] for r in new if key_of(r) in changes]
    ordered += [Change("delete", *key_of(r)) for r in old if key_of(r) not in new_keys]
    return ordered


_SYMBOLS = {"create": "+", "delete": "-", "replace": "+-", "update": "~"}


def _trigger_name(record: Record | None, path: str) -> str:
    """A trigger's path with what the trigger is (tools/plan.py names them in the record)."""
    match = re.match(rf"^{COMMAND_TRIGGERS}\[(\d+)\]$", path)
    names = list((record or {}).get("triggers") or ())
    if match is None or int(match.group(1)) >= len(names):
        return path
    return f"{path} ({names[int(match.group(1))]})"


def _path_lines(change: Change, record: Record | None) -> list[str]:
    replacing = {reason.split(" ", 1)[0]: reason.split(" ", 1)[1] for reason in change.replaced_by}
    lines = []
    for path in change.paths:
        text = _trigger_name(record, path)
        if path in replacing:
            text += f": replaces {replacing[path]}"
        if path in change.carried:
            text += f", known only once {change.carried[path]} is replaced"
        lines.append(text)
    lines += [r for r in change.replaced_by if r.startswith("replacementTrigger")]
    return lines


def rerun_lines(changes: Sequence[Change], new: Sequence[Record]) -> list[str]:
    """The remote and local steps that run again, each with why."""
    by_key = {key_of(r): r for r in new}
    lines = []
    for change in changes:
        if change.type not in COMMAND_TYPES or change.kind == "delete":
            continue
        record = by_key.get((change.type, change.name))
        if change.kind == "create":
            lines.append(f"  {change.name}: new, so its create script runs")
            continue
        if change.kind == "replace":
            why = [
                p for p in change.paths if any(r.startswith(f"{p} ") for r in change.replaced_by)
            ]
            lines.append(f"  {change.name}: replaced, so its create script runs again: ")
        else:
            why = list(change.paths)
            lines.append(f"  {change.name}: updated in place, so its update script runs again: ")
        lines[-1] += "; ".join(
            f"{_trigger_name(record, p)} changed"
            + (f" ({change.carried[p]} is replaced)" if p in change.carried else "")
            for p in why
        )
        if change.kind == "replace" and not why:
            lines[-1] += "its replacement trigger changed"
    return lines


def diff_lines(
    changes: Sequence[Change], new: Sequence[Record], new_label: str, old_label: str
) -> list[str]:
    counts = {kind: sum(1 for c in changes if c.kind == kind) for kind in _SYMBOLS}
    unchanged = len(new) - counts["create"] - counts["replace"] - counts["update"]
    lines = [
        f"Offline plan diff: {new_label}",
        f"  against {old_label}",
        "What `pulumi up` would do to a stack deployed as the second, to make it the first "
        "(under Pulumi's mocks: from the program's inputs and the providers' replace rules).",
        "",
    ]
    by_key = {key_of(r): r for r in new}
    for change in changes:
        lines.append(f"{_SYMBOLS[change.kind]:<2} {change.kind:<7} {change.type} {change.name}")
        record = by_key.get((change.type, change.name))
        lines += [f"      {line}" for line in _path_lines(change, record)]
    if not changes:
        lines.append("No changes.")
    reruns = rerun_lines(changes, new)
    lines += ["", f"Remote steps that run again: {len(reruns) or 'none'}", *reruns]
    lines += [
        "",
        f"{counts['create']} to create, {counts['replace']} to replace, {counts['update']} to "
        f"update in place, {counts['delete']} to delete, {unchanged} unchanged.",
    ]
    return lines
