"""Runs the real `__main__.py` offline, under the engine's mocks, and records what it would manage.

Nothing here talks to GCP or the Pulumi CLI: `pulumi.runtime.set_mocks` stands in for the engine,
and the mocks return, for each resource type the program reads outputs of, values of the shape
the provider would return. Used by the tests and by the offline plan (`python -m tools.plan`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import runpy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pulumi
from google.protobuf import json_format
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

ROOT = Path(__file__).resolve().parents[1]
MOCK_PUBLIC_IP = "203.0.113.10"
MOCK_PRIVATE_IP = "10.42.0.10"
MOCK_API_KEY = "mock-api-key-0123456789abcdefghijklmnopqrstuv"
MOCK_HF_TOKEN = "hf_mocktoken0123456789"  # noqa: S105 (a stand-in, not a credential)
MOCK_KIBANA_KEY = "mock-kibana-api-key-VGhpcyBpcyBhIHRlc3Q="
MOCK_ELASTICSEARCH_KEY = "mock-elasticsearch-api-key-RWxhc3RpY3NlYXJjaA=="
MOCK_SSH_PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nmock-ssh-key\n-----END OPENSSH PRIVATE KEY-----\n"
)
MOCK_TLS_KEY = "-----BEGIN PRIVATE KEY-----\nmock-tls-key\n-----END PRIVATE KEY-----\n"
# Every stand-in secret: none may appear outside a secret value, nor in a redacted file.
MOCK_SECRETS = (
    MOCK_API_KEY,
    MOCK_HF_TOKEN,
    MOCK_KIBANA_KEY,
    MOCK_ELASTICSEARCH_KEY,
    MOCK_SSH_PRIVATE_KEY,
    MOCK_TLS_KEY,
)

_SECRET_SIG = rpc._special_secret_sig  # pyright: ignore[reportPrivateUsage]
_SIG_KEY = rpc._special_sig_key  # pyright: ignore[reportPrivateUsage]


def is_secret_value(value: Any) -> bool:
    return isinstance(value, dict) and value.get(_SIG_KEY) == _SECRET_SIG


def unwrap(value: Any) -> Any:
    """The plain value with secret markers removed."""
    if is_secret_value(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def plain_strings(value: Any) -> Iterator[str]:
    """Every string reachable without passing through a secret marker."""
    if is_secret_value(value):
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from plain_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from plain_strings(v)


@dataclass(frozen=True)
class RegistrationOptions:
    """The resource options a registration request carried. The engine acts on these (diff,
    replacement, timeouts); the mocks' `new_resource` never sees them, so tests assert them here.
    """

    ignore_changes: tuple[str, ...] = ()
    replace_on_changes: tuple[str, ...] = ()
    delete_before_replace: bool = False
    replacement_trigger: Any = None  # the plain value; None when the option is unset
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    additional_secret_outputs: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()  # URNs the resource depends on
    alias_parents: tuple[str, ...] = ()  # the former parents' URNs its aliases name


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]  # camelCase, secrets still wrapped
    outputs: dict[str, Any]
    options: RegistrationOptions = field(default_factory=RegistrationOptions)

    @property
    def plain(self) -> dict[str, Any]:
        return unwrap(self.inputs)


def _group_outputs(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    group = inputs.get("name") or name  # auto-named from the resource name, as the engine does
    return {"name": group, "instanceGroup": f"https://compute/regions/r/instanceGroups/{group}"}


# What the provider adds that the program reads, as a function of a resource's name and inputs.
_DERIVED_FAKES: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
    "gcp:artifactregistry/repository:Repository": lambda name, inputs: {
        "name": inputs.get("repositoryId", name)
    },
    "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate": lambda name, _: {
        "selfLink": f"https://compute/regions/r/instanceTemplates/{name}"
    },
    "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager": _group_outputs,
    "gcp:secretmanager/secretVersion:SecretVersion": lambda _, inputs: {
        "name": f"{inputs['secret']}/versions/1"
    },
}


# Resources the program leaves to Pulumi's autonaming and whose name it reads (the dashboard and
# the alerts read the forwarding rule's).
_AUTO_NAMED = ("gcp:compute/forwardingRule:ForwardingRule",)


def _auto_name(typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Pulumi's autonaming: the resource name, a hyphen and 7 random hex characters (fixed here)."""
    if typ not in _AUTO_NAMED or inputs.get("name"):
        return {}
    return {"name": f"{name}-{hashlib.sha256(name.encode()).hexdigest()[:7]}"}


def _fake_outputs(
    typ: str, name: str, inputs: dict[str, Any], stashed: Mapping[str, Any]
) -> dict[str, Any]:
    """What the provider adds to a resource's inputs, for the outputs the program reads."""
    fakes: dict[str, Any] = {}
    if typ == "gcp:compute/address:Address":
        internal = inputs.get("addressType") == "INTERNAL"
        fakes["address"] = MOCK_PRIVATE_IP if internal else MOCK_PUBLIC_IP
        fakes["selfLink"] = f"https://compute/regions/r/addresses/{name}"
    elif typ == "gcp:compute/instance:Instance":
        interfaces = inputs.get("networkInterfaces") or [{}]
        first = dict(interfaces[0])
        first.setdefault("networkIp", MOCK_PRIVATE_IP)
        if first.get("accessConfigs"):
            first["accessConfigs"] = [
                {**ac, "natIp": ac.get("natIp") or MOCK_PUBLIC_IP} for ac in first["accessConfigs"]
            ]
        fakes["networkInterfaces"] = [first, *interfaces[1:]]
        fakes["instanceId"] = "1234567890"
        # The provider auto-names an instance without a name from its resource name.
        fakes["name"] = inputs.get("name") or name
        fakes["selfLink"] = f"https://compute/zones/z/instances/{inputs.get('name', name)}"
    elif typ in ("gcp:compute/network:Network", "gcp:compute/subnetwork:Subnetwork"):
        fakes["selfLink"] = f"https://compute/{typ.rsplit(':', 1)[-1].lower()}s/{name}"
        fakes["id"] = f"projects/test-project/{name}"
    elif typ == "gcp:serviceaccount/account:Account":
        account = inputs.get("accountId", name)
        fakes["email"] = f"{account}@test-project.iam.gserviceaccount.com"
        fakes["member"] = f"serviceAccount:{fakes['email']}"
    elif typ == "random:index/randomPassword:RandomPassword":
        fakes["result"] = MOCK_API_KEY
    elif typ == "tls:index/privateKey:PrivateKey":
        fakes["privateKeyPem"] = MOCK_TLS_KEY
        fakes["privateKeyOpenssh"] = MOCK_SSH_PRIVATE_KEY
        fakes["publicKeyOpenssh"] = f"ssh-ed25519 AAAAmock{name}\n"
        fakes["publicKeyPem"] = "-----BEGIN PUBLIC KEY-----\nmock\n-----END PUBLIC KEY-----\n"
    elif typ in (
        "tls:index/selfSignedCert:SelfSignedCert",
        "tls:index/locallySignedCert:LocallySignedCert",
    ):
        fakes["certPem"] = f"-----BEGIN CERTIFICATE-----\nmock-{name}\n-----END CERTIFICATE-----\n"
    elif typ == "tls:index/certRequest:CertRequest":
        fakes["certRequestPem"] = (
            "-----BEGIN CERTIFICATE REQUEST-----\nmock\n-----END CERTIFICATE REQUEST-----\n"
        )
    elif typ in _DERIVED_FAKES:
        fakes.update(_DERIVED_FAKES[typ](name, inputs))
    elif typ == "pulumi:index:Stash":
        # The engine's builtin: a create saves its input as its output, which later updates
        # keep (`stashed` stands for a value saved by an earlier `pulumi up`).
        fakes["output"] = stashed.get(name, inputs.get("input"))
    elif typ.startswith("command:"):
        fakes["stdout"] = ""
        fakes["stderr"] = ""
    return fakes


def _fake_id(typ: str, name: str, inputs: Mapping[str, Any]) -> str:
    """The provider's ID where the program passes it on in a documented form."""
    if typ == "gcp:secretmanager/secret:Secret":
        return f"projects/test-project/secrets/{inputs['secretId']}"
    return f"{name}-id"


def _options(request: Any) -> RegistrationOptions:
    trigger = None
    if request.HasField("replacement_trigger"):
        trigger = unwrap(json_format.MessageToDict(request.replacement_trigger))
    timeouts = {
        kind: getattr(request.customTimeouts, kind)
        for kind in ("create", "update", "delete")
        if getattr(request.customTimeouts, kind)
    }
    return RegistrationOptions(
        ignore_changes=tuple(request.ignoreChanges),
        replace_on_changes=tuple(request.replaceOnChanges),
        delete_before_replace=bool(request.deleteBeforeReplace),
        replacement_trigger=trigger,
        custom_timeouts=timeouts,
        additional_secret_outputs=tuple(request.additionalSecretOutputs),
        dependencies=tuple(sorted(request.dependencies)),
        alias_parents=tuple(
            alias.spec.parentUrn for alias in request.aliases if alias.spec.parentUrn
        ),
    )


class _RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, noting each registration request's options for RecordingMocks."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.recording = mocks

    def RegisterResource(self, request: Any) -> Any:
        self.recording.pending_options[(request.type, request.name)] = _options(request)
        return super().RegisterResource(request)


# Invokes the program makes, answered as the provider would for the values the program reads.
GET_IMAGE = "gcp:compute/getImage:getImage"
MOCK_IMAGE_VERSION = "v20261115"


def _fake_call(token: str, args: Mapping[str, Any]) -> dict[str, Any]:
    if token == GET_IMAGE:
        # The newest image of the family, as images.getFromFamily answers.
        project, family = args["project"], args["family"]
        name = f"{family}-{MOCK_IMAGE_VERSION}"
        return {
            "family": family,
            "name": name,
            "project": project,
            "selfLink": f"https://www.googleapis.com/compute/v1/projects/{project}/global/images/{name}",
        }
    raise ValueError(f"the offline engine has no answer for invoke {token}")


class RecordingMocks(pulumi.runtime.Mocks):
    """Records every registration and its options; refuses a duplicate type and name, as the
    engine would. Install with `install_mocks`, which records the options."""

    def __init__(self, stashed: Mapping[str, Any] | None = None) -> None:
        self.resources: list[Registered] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.pending_options: dict[tuple[str, str], RegistrationOptions] = {}
        self.stashed = dict(stashed or {})  # Stash name -> the output an earlier up saved

    def new_resource(
        self, args: pulumi.runtime.MockResourceArgs
    ) -> tuple[str | None, dict[str, Any]]:
        if any(r.type == args.typ and r.name == args.name for r in self.resources):
            raise ValueError(f"duplicate resource {args.typ} {args.name}")
        outputs = {
            **args.inputs,
            **_auto_name(args.typ, args.name, args.inputs),
            **_fake_outputs(args.typ, args.name, args.inputs, self.stashed),
        }
        options = self.pending_options.pop((args.typ, args.name), RegistrationOptions())
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs), outputs, options))
        return _fake_id(args.typ, args.name, args.inputs), outputs

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        self.calls.append((args.token, dict(args.args)))
        return _fake_call(args.token, args.args), []


def install_mocks(
    mocks: RecordingMocks,
    *,
    stack: str,
    preview: bool = False,
    logger: logging.Logger | None = None,
    organization: str | None = None,
) -> None:
    """Point the Pulumi runtime at these mocks, with a monitor that records resource options."""
    ensure_event_loop()
    pulumi.runtime.set_mocks(
        mocks,
        project="vllm-gcp",
        stack=stack,
        preview=preview,
        logger=logger,
        monitor=_RecordingMonitor(mocks),
        organization=organization,
    )


def ensure_event_loop() -> None:
    """Give the engine's mocks an open event loop: code run before (an `asyncio.run`, say) may
    have closed and unset the current one, and the mocks need one to register resources."""
    try:
        if not asyncio.get_event_loop().is_closed():
            return
    except RuntimeError:
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())


class WarningCollector(logging.Handler):
    """A logger of its own for `pulumi.runtime.set_mocks`, keeping the warnings logged to it."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.WARNING)
        self.warnings: list[str] = []
        self.logger = logging.getLogger(name)
        self.logger.addHandler(self)
        self.logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:
            self.warnings.append(record.getMessage())


@dataclass
class Plan:
    """What one run of the program registered and exported."""

    resources: list[Registered]
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # invokes made
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str) -> Registered:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, found {[r.name for r in found]}"
        return found[0]

    def named(self, name: str) -> Registered:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, found {len(found)}"
        return found[0]

    async def resolve_outputs(self, outputs: Mapping[str, object]) -> None:
        """Resolve these outputs (or plain values) into `outputs`, noting which are secret."""
        for key, value in outputs.items():
            output = pulumi.Output.from_input(value)
            self.outputs[key] = await output.future()
            if await output.is_secret():
                self.secret_outputs.add(key)


def run_program(
    config: Mapping[str, Any],
    *,
    stack: str = "dev",
    secrets: Mapping[str, str] | None = None,
    preview: bool = False,
    mocks: RecordingMocks | None = None,
    observe: Callable[[Mapping[str, Any]], Mapping[str, object]] | None = None,
) -> Plan:
    """Run __main__.py with this configuration; secrets are set as secret config values.

    `observe` receives the program's globals (its components, by the names __main__.py gives
    them) and returns more values to resolve into the plan's outputs, by name: how tests look at
    a component's attributes in the program as it is wired, not in a copy of the wiring.
    """
    mocks = mocks or RecordingMocks()
    collector = WarningCollector(f"vllm-gcp-test-{id(mocks)}")
    install_mocks(mocks, stack=stack, preview=preview, logger=collector.logger)
    values = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    secret_keys = [f"vllm-gcp:{k}" for k in (secrets or {})]
    values.update({f"vllm-gcp:{k}": v for k, v in (secrets or {}).items()})
    pulumi.runtime.set_all_config(values, secret_keys)
    exported: dict[str, Any] = {}
    plan = Plan(resources=mocks.resources, calls=mocks.calls)

    @pulumi.runtime.test
    def program() -> pulumi.Output[None]:
        program_globals = runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")
        observed = dict(observe(program_globals)) if observe is not None else {}
        return pulumi.Output.from_input(
            asyncio.ensure_future(plan.resolve_outputs({**exported, **observed}))
        )

    try:
        with mock.patch.object(pulumi, "export", exported.__setitem__):
            program()
    finally:
        plan.warnings = collector.warnings
        mocks.resources[:] = [r for r in mocks.resources if r.type != "pulumi:pulumi:Stack"]
        pulumi.runtime.set_all_config({})
    return plan
