"""The stack configuration: one pydantic model tree, and the only reader of `pulumi.Config`.

`load()` reads every key of the `vllm-gcp` namespace (plus `gcp:project` and `gcp:zone`),
validates all of it at once and either returns a `StackConfig` or raises `ConfigError` listing
every problem by its key path, before the program registers any resource.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import pulumi
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from components import catalogue

PROJECT = "vllm-gcp"

# ------------------------------------------------------------------------------------------------
# Field types


def _cidr(value: str) -> str:
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR range such as 203.0.113.7/32") from None
    if network.version != 4:
        raise ValueError(f"{value!r} is IPv6; give IPv4 ranges such as 203.0.113.7/32")
    if str(network) != value and f"{value}/32" != str(network):
        raise ValueError(f"{value!r} has host bits set; did you mean {network}?")
    return str(network)


Cidr = Annotated[str, AfterValidator(_cidr)]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_LINUX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_IMAGE_REF = re.compile(
    r"^[a-z0-9][a-z0-9._/:-]*[a-z0-9](:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})$"
)
_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GCS_URI = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\s]*)?$")
_ZONE = re.compile(r"^[a-z]+-[a-z]+\d+-[a-z]$")
_SPACE_ID = re.compile(r"^[a-z0-9_-]+$")
# A GCE image by project and name or family (projects/P/global/images/[family/]NAME), the forms
# components/host.py resolves and the provider's DiskImageDiffSuppress compares.
HOST_IMAGE = re.compile(
    r"(?:https://www\.googleapis\.com/compute/v1/)?projects/(?P<project>[a-z][-a-z0-9.:]*[a-z0-9])"
    r"/global/images/(?P<family>family/)?(?P<name>[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)"
)
_JUMP_HOST = re.compile(r"^[a-z_][a-z0-9_-]{0,31}@[A-Za-z0-9.-]+(:\d{1,5})?$")
# Flags the stack sets itself: overriding them in extraArgs would break the proxy or the key.
_RESERVED_VLLM_FLAGS = ("--host", "--port", "--api-key", "--uds")


def _ssh_user(value: str) -> str:
    if not _LINUX_USER.match(value):
        raise ValueError(f"{value!r} is not a Linux user name such as vllm")
    if value == "root":
        raise ValueError("root cannot log in over SSH on GCE images; use a user such as vllm")
    return value


def _host_image(value: str) -> str:
    if not HOST_IMAGE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an image reference; give "
            "projects/PROJECT/global/images/family/FAMILY (the family's newest image when the VM "
            "is created) or projects/PROJECT/global/images/IMAGE"
        )
    return value


def _hostname(value: str) -> str:
    lowered = value.lower().rstrip(".")
    if not _HOSTNAME.match(lowered):
        raise ValueError(f"{value!r} is not a DNS name such as llm.example.com")
    return lowered


def _pattern(regex: re.Pattern[str], example: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"{value!r} is not valid; expected something like {example}")
        return value

    return check


# ------------------------------------------------------------------------------------------------
# The model tree: exactly the keys of the contract in DESIGN.md, camelCase in the stack file.


class _Section(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class HostConfig(_Section):
    machine_type: str = "a2-ultragpu-2g"
    boot_disk_gb: int = Field(default=500, ge=50, le=65536)
    provisioning: Literal["standard", "spot"] = "standard"
    image: Annotated[str, AfterValidator(_host_image)] = catalogue.DEFAULT_HOST_IMAGE
    ssh_user: Annotated[str, AfterValidator(_ssh_user)] = "vllm"
    skip_zone_check: bool = False

    @property
    def machine(self) -> catalogue.MachineSpec:
        return catalogue.MACHINE_TYPES[self.machine_type]


class ModelConfig(_Section):
    id: Annotated[
        str, AfterValidator(_pattern(_MODEL_ID, "mistralai/Mistral-Small-3.2-24B-Instruct-2506"))
    ] = "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
    served_name: str | None = Field(default=None, min_length=1)
    revision: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_./-]{1,255}$")
    image: Annotated[str, AfterValidator(_pattern(_IMAGE_REF, catalogue.DEFAULT_VLLM_IMAGE))] = (
        catalogue.DEFAULT_VLLM_IMAGE
    )
    tool_call_parser: str | None = None
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float = Field(default=0.90, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=256)
    extra_args: list[str] = Field(default_factory=list)
    source: Literal["huggingface", "gcs"] = "huggingface"
    gcs_uri: (
        Annotated[str, AfterValidator(_pattern(_GCS_URI, "gs://my-bucket/models/mistral"))] | None
    ) = None

    @property
    def family(self) -> catalogue.ModelFamily | None:
        return catalogue.family_of(self.id)

    @property
    def served_model_name(self) -> str:
        return self.served_name or self.id

    @property
    def effective_tool_call_parser(self) -> str | None:
        """The parser vLLM uses, or None when tool calling is off."""
        if self.tool_call_parser == "none":
            return None
        if self.tool_call_parser is not None:
            return self.tool_call_parser
        family = self.family
        return None if family is None else family.tool_call_parser

    @property
    def vllm_version(self) -> tuple[int, int, int] | None:
        return catalogue.vllm_version(self.image)


class AccessConfig(_Section):
    api_cidrs: list[Cidr] = Field(default_factory=lambda: ["0.0.0.0/0"], min_length=1)
    ssh_cidrs: list[Cidr] = Field(default_factory=list)

    @property
    def api_open_to_all(self) -> bool:
        return "0.0.0.0/0" in self.api_cidrs


class NetworkConfig(_Section):
    exposure: Literal["public", "private"] = "public"
    vpc: str | None = Field(default=None, pattern=r"^[a-z]([-a-z0-9/]*[a-z0-9])?$")
    subnet: str | None = Field(default=None, pattern=r"^[a-z]([-a-z0-9/]*[a-z0-9])?$")
    subnet_cidr: Cidr = "10.42.0.0/24"
    ssh_jump_host: (
        Annotated[str, AfterValidator(_pattern(_JUMP_HOST, "admin@bastion.internal"))] | None
    ) = None

    @property
    def private(self) -> bool:
        return self.exposure == "private"


class MirrorConfig(_Section):
    docker_remote: bool = False
    apt_remote: bool = False


class TlsConfig(_Section):
    mode: Literal["self-signed", "letsencrypt", "provided"] = "self-signed"
    domain: Annotated[str, AfterValidator(_hostname)] | None = None
    email: Annotated[str, AfterValidator(_pattern(_EMAIL, "ops@example.com"))] | None = None


class ElasticConfig(_Section):
    kibana_url: Annotated[
        str,
        AfterValidator(
            _pattern(
                re.compile(r"^https?://[^\s/]+(/[^\s]*)?$"), "https://my-deployment.kb.example.com"
            )
        ),
    ]
    space: Annotated[str, AfterValidator(_pattern(_SPACE_ID, "default"))] = "default"
    connector_name: str | None = Field(default=None, min_length=1, max_length=200)
    verify: bool = True

    @property
    def base_url(self) -> str:
        return self.kibana_url.rstrip("/")


@dataclass(frozen=True)
class StackSecrets:
    """Secret configuration values, kept as secret Outputs from the moment they are read."""

    tls_certificate: pulumi.Output[str] | None = None
    tls_private_key: pulumi.Output[str] | None = None
    hugging_face_token: pulumi.Output[str] | None = None
    kibana_api_key: pulumi.Output[str] | None = None


@dataclass(frozen=True)
class StackConfig:
    """The validated configuration of one stack."""

    project: str
    zone: str
    stack: str
    host: HostConfig
    model: ModelConfig
    access: AccessConfig
    network: NetworkConfig
    mirror: MirrorConfig
    tls: TlsConfig
    elastic: ElasticConfig | None
    secrets: StackSecrets = field(default_factory=StackSecrets)

    @property
    def region(self) -> str:
        return self.zone.rsplit("-", 1)[0]

    @property
    def machine(self) -> catalogue.MachineSpec:
        return self.host.machine

    @property
    def tensor_parallel_size(self) -> int:
        return self.model.tensor_parallel_size or self.machine.gpu_count

    @property
    def labels(self) -> dict[str, str]:
        """GCE labels naming the project and stack (lowercase, at most 63 characters)."""
        return {"app": PROJECT, "stack": _label_value(self.stack)}


def _label_value(value: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


# ------------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class Problem:
    key: str  # full key path, e.g. vllm-gcp:model.tensorParallelSize
    message: str

    def __str__(self) -> str:
        return f"  - {self.key}: {self.message}"


class ConfigError(pulumi.RunError):
    """Every problem found in the stack configuration, each by its key path.

    A RunError, so the engine prints the message alone, without a Python traceback.
    """

    def __init__(self, problems: list[Problem], hint: str = "") -> None:
        self.problems = problems
        lines = [f"The stack configuration has {len(problems)} problem(s):"]
        lines += [str(p) for p in problems]
        if hint:
            lines += ["", hint]
        super().__init__("\n".join(lines))


SECTIONS: dict[str, type[_Section]] = {
    "host": HostConfig,
    "model": ModelConfig,
    "access": AccessConfig,
    "network": NetworkConfig,
    "mirror": MirrorConfig,
    "tls": TlsConfig,
    "elastic": ElasticConfig,
}
SECRET_KEYS = ("tlsCertificate", "tlsPrivateKey", "huggingFaceToken", "kibanaApiKey")
KNOWN_KEYS = (*SECTIONS, *SECRET_KEYS)
GCP_KEYS_READ = ("project", "zone", "region")


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _aliases(model: type[_Section]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _key_path(section: str, loc: tuple[int | str, ...]) -> str:
    path = f"{PROJECT}:{section}"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _describe(error: Mapping[str, Any], model: type[_Section]) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        known = _aliases(model) if len(loc) == 1 else []
        valid = f" (valid keys: {', '.join(known)})" if known else ""
        return f"unknown key{_did_you_mean(str(loc[-1]), known)}{valid}"
    if kind == "literal_error":
        return f"{error['input']!r} is not one of {error['ctx']['expected']}"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    return f"{error['msg']} (got {error['input']!r})"


def _parse_section(name: str, raw: object, problems: list[Problem]) -> _Section | None:
    model = SECTIONS[name]
    if not isinstance(raw, dict):
        problems.append(
            Problem(
                f"{PROJECT}:{name}", f"must be an object with keys {', '.join(_aliases(model))}"
            )
        )
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        failed = {item["loc"][0] for item in error.errors() if item["loc"]}
        for item in error.errors():
            problems.append(Problem(_key_path(name, tuple(item["loc"])), _describe(item, model)))
    # Keep checking the rest of the section: the valid keys, with defaults for the failed ones,
    # so one run reports every problem. The problems above already stop the program.
    try:
        return model.model_validate({k: v for k, v in raw.items() if k not in failed})
    except ValidationError:
        return None


# ------------------------------------------------------------------------------------------------
# Cross-field rules: what no single field can say on its own.


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _check_machine(host: HostConfig, zone: str | None, problems: list[Problem]) -> None:
    spec = catalogue.MACHINE_TYPES.get(host.machine_type)
    if spec is None:
        problems.append(
            Problem(
                f"{PROJECT}:host.machineType",
                f"{host.machine_type!r} is not a supported GPU machine type"
                f"{_did_you_mean(host.machine_type, catalogue.MACHINE_TYPES)} "
                f"(supported: {', '.join(sorted(catalogue.MACHINE_TYPES))})",
            )
        )
        return
    if spec.spot_only and host.provisioning != "spot":
        problems.append(
            Problem(
                f"{PROJECT}:host.provisioning",
                f"{spec.name} is offered only as Spot; set it to spot or choose a3-highgpu-8g",
            )
        )
    if zone and _ZONE.match(zone) and zone not in spec.gpu.zones and not host.skip_zone_check:
        problems.append(
            Problem(
                "gcp:zone",
                f"{zone} is not known to offer {spec.gpu.display_name} ({spec.name}) as of "
                f"{catalogue.GPU_ZONES_AS_OF}; zones that do: {', '.join(sorted(spec.gpu.zones))}. "
                f"If `gcloud compute accelerator-types list --filter=zone:{zone}` lists "
                f"{spec.gpu.accelerator}, set `pulumi config set --path "
                f"{PROJECT}:host.skipZoneCheck true`",
            )
        )


def _check_model(model: ModelConfig, host: HostConfig | None, problems: list[Problem]) -> None:
    key = f"{PROJECT}:model"
    parser = model.tool_call_parser
    if parser is not None and parser != "none" and parser not in catalogue.TOOL_CALL_PARSERS:
        problems.append(
            Problem(
                f"{key}.toolCallParser",
                f"{parser!r} is not a vLLM tool-call parser"
                f"{_did_you_mean(parser, catalogue.TOOL_CALL_PARSERS)} (valid: none, "
                f"{', '.join(sorted(catalogue.TOOL_CALL_PARSERS))})",
            )
        )
    for index, arg in enumerate(model.extra_args):
        flag = arg.split("=", 1)[0]
        if flag in _RESERVED_VLLM_FLAGS:
            problems.append(
                Problem(
                    f"{key}.extraArgs[{index}]",
                    f"{flag} is set by the stack (vLLM listens on 127.0.0.1:8000 behind Nginx, "
                    "with the stack's key); remove it",
                )
            )
    tag = model.image.rpartition(":")[2]
    if "@" not in model.image and tag == "latest":
        problems.append(
            Problem(
                f"{key}.image",
                "'latest' moves under a running stack; pin a release such as "
                f"{catalogue.DEFAULT_VLLM_IMAGE}",
            )
        )
    if model.source == "gcs" and model.gcs_uri is None:
        problems.append(
            Problem(f"{key}.gcsUri", "required when model.source is gcs (gs://bucket/prefix)")
        )
    if model.source != "gcs" and model.gcs_uri is not None:
        problems.append(
            Problem(f"{key}.gcsUri", "is only read when model.source is gcs; set source: gcs")
        )
    if host is None or host.machine_type not in catalogue.MACHINE_TYPES:
        return
    spec = host.machine
    tensor_parallel = model.tensor_parallel_size or spec.gpu_count
    if spec.gpu_count % tensor_parallel != 0:
        problems.append(
            Problem(
                f"{key}.tensorParallelSize",
                f"{tensor_parallel} does not divide the {spec.gpu_count} GPU(s) of {spec.name}; "
                f"valid: {', '.join(str(d) for d in _divisors(spec.gpu_count))}",
            )
        )
        return
    needed = catalogue.weights_gb(model.id)
    available = tensor_parallel * spec.gpu.memory_gb * model.gpu_memory_utilization
    if needed is not None and needed > available * catalogue.MAX_WEIGHTS_SHARE:
        problems.append(
            Problem(
                f"{key}.id",
                f"{model.id} needs about {needed:.0f} GB for its bf16 weights; vLLM may use "
                f"{available:.1f} GB ({tensor_parallel} x {spec.gpu.memory_gb} GB x "
                f"{model.gpu_memory_utilization}), and the weights may take at most "
                f"{catalogue.MAX_WEIGHTS_SHARE:.0%} of it to leave room for the KV cache; choose a "
                "machine with more GPU memory, a higher tensorParallelSize or a smaller model",
            )
        )
    cache_on_boot_disk = spec.local_ssd_count == 0
    minimum_disk = catalogue.BOOT_DISK_BASE_GB + (
        round((needed or 0) * 1.1) if cache_on_boot_disk else 0
    )
    if host.boot_disk_gb < minimum_disk:
        held = f" and {model.id}'s weights" if cache_on_boot_disk and needed else ""
        problems.append(
            Problem(
                f"{PROJECT}:host.bootDiskGb",
                f"{host.boot_disk_gb} GB cannot hold the OS, the vLLM image{held}; "
                f"give at least {minimum_disk}",
            )
        )
    version = model.vllm_version
    driver = catalogue.image_driver_major(host.image)
    if (
        version is not None
        and version >= catalogue.FIRST_CUDA13_VLLM
        and driver is not None
        and driver < catalogue.MIN_DRIVER_FOR_CUDA13
    ):
        problems.append(
            Problem(
                f"{key}.image",
                f"vLLM {'.'.join(map(str, version))} images are CUDA 13 builds that need NVIDIA "
                f"driver {catalogue.MIN_DRIVER_FOR_CUDA13}+, but host.image carries {driver}; use "
                f"the default host image or a vLLM release before 0.20",
            )
        )


# RFC 1918 and the shared address space (RFC 6598) that VPCs may use for subnets.
_PRIVATE_RANGES = tuple(
    ipaddress.IPv4Network(r)
    for r in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
# Identity-Aware Proxy's TCP forwarding range: how operators reach a host with no external IP.
IAP_TCP_FORWARDING_RANGE = "35.235.240.0/20"


def _is_private_range(cidr: str) -> bool:
    network = ipaddress.IPv4Network(cidr)
    return any(network.subnet_of(private) for private in _PRIVATE_RANGES)


def _check_exposure(
    network: NetworkConfig,
    access: AccessConfig | None,
    tls: TlsConfig | None,
    model: ModelConfig | None,
    mirror: MirrorConfig | None,
    host: HostConfig | None,
    problems: list[Problem],
) -> None:
    key = f"{PROJECT}:network"
    if network.subnet and not network.vpc:
        problems.append(Problem(f"{key}.subnet", "needs network.vpc, the VPC it belongs to"))
    if not _is_private_range(network.subnet_cidr):
        problems.append(
            Problem(f"{key}.subnetCidr", f"{network.subnet_cidr} is not a private (RFC 1918) range")
        )
    if not network.private:
        return
    if access is not None:
        for name, cidrs in (("apiCidrs", access.api_cidrs), ("sshCidrs", access.ssh_cidrs)):
            for index, cidr in enumerate(cidrs):
                if name == "sshCidrs" and cidr == IAP_TCP_FORWARDING_RANGE:
                    continue
                if not _is_private_range(cidr):
                    problems.append(
                        Problem(
                            f"{PROJECT}:access.{name}[{index}]",
                            f"{cidr} is not a private range; a private endpoint admits only "
                            "private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, "
                            f"100.64.0.0/10), and SSH also {IAP_TCP_FORWARDING_RANGE} (IAP)",
                        )
                    )
    if tls is not None and tls.mode == "letsencrypt":
        problems.append(
            Problem(
                f"{PROJECT}:tls.mode",
                "letsencrypt needs the host reachable from the internet on port 80, which a "
                "private endpoint is not; use self-signed or provided",
            )
        )
    prepared_image = host is not None and host.image != catalogue.DEFAULT_HOST_IMAGE
    if model is not None and model.source != "gcs":
        problems.append(
            Problem(
                f"{PROJECT}:model.source",
                "a private host cannot reach Hugging Face; stage the weights in Cloud Storage "
                "and set source: gcs with gcsUri",
            )
        )
    if mirror is not None and not mirror.docker_remote:
        problems.append(
            Problem(
                f"{PROJECT}:mirror.dockerRemote",
                "a private host cannot pull from Docker Hub; set it to true (the vLLM image "
                "then comes through an Artifact Registry remote repository)",
            )
        )
    if host is not None and not prepared_image:
        problems.append(
            Problem(
                f"{PROJECT}:host.image",
                "a private host cannot install the NVIDIA container toolkit: only NVIDIA's apt "
                "repository publishes it and Artifact Registry cannot mirror it "
                "(mirror.aptRemote covers the Ubuntu archive); give host.image a prepared "
                "image with Docker, the NVIDIA container toolkit and Nginx",
            )
        )


def _check_tls(tls: TlsConfig, secrets: Mapping[str, str | None], problems: list[Problem]) -> None:
    key = f"{PROJECT}:tls"
    if tls.mode == "letsencrypt":
        if tls.domain is None:
            problems.append(
                Problem(f"{key}.domain", "required for letsencrypt: a name that resolves to the IP")
            )
        if tls.email is None:
            problems.append(Problem(f"{key}.email", "required for letsencrypt (expiry notices)"))
    if tls.mode != "provided":
        for name in ("tlsCertificate", "tlsPrivateKey"):
            if secrets.get(name) is not None:
                problems.append(
                    Problem(f"{PROJECT}:{name}", "is only read when tls.mode is provided")
                )
        return
    if tls.domain is None:
        problems.append(
            Problem(f"{key}.domain", "required for provided: the name the certificate covers")
        )
    certificate_pem = secrets.get("tlsCertificate")
    key_pem = secrets.get("tlsPrivateKey")
    for name, value in (("tlsCertificate", certificate_pem), ("tlsPrivateKey", key_pem)):
        if value is None:
            problems.append(
                Problem(
                    f"{PROJECT}:{name}",
                    f"required for provided: pulumi config set --secret {PROJECT}:{name} "
                    f"< {'server.crt' if name == 'tlsCertificate' else 'server.key'}",
                )
            )
    if certificate_pem is None or key_pem is None:
        return
    for problem in check_provided_certificate(certificate_pem, key_pem, tls.domain):
        problems.append(Problem(f"{PROJECT}:tlsCertificate", problem))


def check_provided_certificate(
    certificate_pem: str, key_pem: str, domain: str | None, now: datetime | None = None
) -> list[str]:
    """What is wrong with a provided certificate and key (nothing secret in the messages)."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError:
        return ["is not a PEM certificate"]
    try:
        private_key: PrivateKeyTypes = serialization.load_pem_private_key(
            key_pem.encode(), password=None
        )
    except (ValueError, TypeError):
        return ["tlsPrivateKey is not an unencrypted PEM private key"]
    found: list[str] = []
    public = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if (
        private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        != public
    ):
        found.append("does not match tlsPrivateKey")
    moment = now or datetime.now(UTC)
    if certificate.not_valid_after_utc <= moment:
        found.append(f"expired on {certificate.not_valid_after_utc:%Y-%m-%d}")
    if domain is not None and not _certificate_names(certificate, domain):
        found.append(f"does not name {domain} in its subject alternative names")
    return found


def _certificate_names(certificate: x509.Certificate, domain: str) -> bool:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    for dns_name in names.value.get_values_for_type(x509.DNSName):
        name = dns_name.lower()
        if name == domain or (
            name.startswith("*.") and domain.split(".", 1)[-1] == name[2:] and "." in domain
        ):
            return True
    return False


# ------------------------------------------------------------------------------------------------
# Reading the stack


def _configured_keys() -> dict[str, Any]:
    """Every key set in the stack, `namespace:key` to raw value (the engine's view of config)."""
    keys: dict[str, Any] = dict(pulumi.runtime.get_config_env())
    keys.update(pulumi.runtime.config.CONFIG.get())
    return keys


def _raw_value(raw: Any) -> Any:
    """Objects arrive as JSON text from the engine and as text or dicts from tests."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _missing_user_values_hint(missing: list[str]) -> str:
    commands = {
        "gcp:project": "pulumi config set gcp:project <your-gcp-project-id>",
        f"{PROJECT}:access.sshCidrs": (
            f"pulumi config set --path '{PROJECT}:access.sshCidrs[0]' <your-public-ip>/32"
        ),
    }
    lines = ["Set the values this stack leaves to you, then run `pulumi preview` again:"]
    lines += [f"  {commands[key]}" for key in missing if key in commands]
    return "\n".join(lines)


def validate(raw: Mapping[str, Any], stack: str) -> tuple[StackConfig, list[str]]:
    """Validate raw `namespace:key` values; return the config and warnings, or raise ConfigError."""
    problems: list[Problem] = []
    warnings: list[str] = []
    own = {k.split(":", 1)[1]: v for k, v in raw.items() if k.startswith(f"{PROJECT}:")}
    for key in own:
        if key not in KNOWN_KEYS:
            problems.append(
                Problem(
                    f"{PROJECT}:{key}",
                    f"unknown key{_did_you_mean(key, KNOWN_KEYS)} "
                    f"(valid keys: {', '.join(KNOWN_KEYS)})",
                )
            )

    sections: dict[str, _Section | None] = {}
    for name in SECTIONS:
        value = _raw_value(own.get(name))
        if name == "elastic" and value is None:
            sections[name] = None
            continue
        sections[name] = _parse_section(name, {} if value is None else value, problems)

    host = sections["host"]
    model = sections["model"]
    access = sections["access"]
    network = sections["network"]
    mirror = sections["mirror"]
    tls = sections["tls"]
    elastic = sections["elastic"]
    assert host is None or isinstance(host, HostConfig)
    assert model is None or isinstance(model, ModelConfig)
    assert access is None or isinstance(access, AccessConfig)
    assert network is None or isinstance(network, NetworkConfig)
    assert mirror is None or isinstance(mirror, MirrorConfig)
    assert tls is None or isinstance(tls, TlsConfig)
    assert elastic is None or isinstance(elastic, ElasticConfig)

    secrets = {name: _secret_text(raw.get(f"{PROJECT}:{name}")) for name in SECRET_KEYS}
    missing_user_values: list[str] = []

    project = raw.get("gcp:project")
    if not project:
        missing_user_values.append("gcp:project")
        problems.append(Problem("gcp:project", "required: the GCP project to deploy into"))
    zone = raw.get("gcp:zone")
    if not zone:
        problems.append(
            Problem("gcp:zone", "required: a zone that offers the GPU, e.g. us-central1-a")
        )
    elif not _ZONE.match(str(zone)):
        problems.append(Problem("gcp:zone", f"{zone!r} is not a zone name such as us-central1-a"))
    elif raw.get("gcp:region") and str(zone).rsplit("-", 1)[0] != raw.get("gcp:region"):
        problems.append(
            Problem("gcp:region", f"{raw.get('gcp:region')} is not the region of zone {zone}")
        )

    if host is not None:
        _check_machine(host, str(zone) if zone else None, problems)
    if model is not None:
        _check_model(model, host, problems)
        version = model.vllm_version
        advisories = [] if version is None else catalogue.advisories_for(version)
        if advisories:
            listed = "; ".join(f"{a.name} ({a.summary})" for a in advisories)
            warnings.append(
                f"{PROJECT}:model.image {model.image} carries known vulnerabilities: {listed}. "
                f"Pin {catalogue.DEFAULT_VLLM_IMAGE} or later unless you must match a tested setup"
            )
        if model.source == "gcs" and secrets["huggingFaceToken"] is not None:
            warnings.append(
                f"{PROJECT}:huggingFaceToken is unused: weights come from {model.gcs_uri}"
            )
    if access is not None:
        if not access.ssh_cidrs:
            missing_user_values.append(f"{PROJECT}:access.sshCidrs")
            problems.append(
                Problem(
                    f"{PROJECT}:access.sshCidrs",
                    "required, non-empty: the address(es) the deployer runs `pulumi up` from, "
                    "such as 203.0.113.7/32",
                )
            )
        for index, cidr in enumerate(access.ssh_cidrs):
            if cidr == "0.0.0.0/0":
                problems.append(
                    Problem(
                        f"{PROJECT}:access.sshCidrs[{index}]",
                        "0.0.0.0/0 opens SSH to the whole internet; give the deployer's "
                        "address, such as 203.0.113.7/32",
                    )
                )
    if network is not None:
        _check_exposure(network, access, tls, model, mirror, host, problems)
    if tls is not None:
        _check_tls(tls, secrets, problems)
    if elastic is not None and secrets["kibanaApiKey"] is None:
        problems.append(
            Problem(
                f"{PROJECT}:kibanaApiKey",
                f"required when elastic.kibanaUrl is set: pulumi config set --secret "
                f"{PROJECT}:kibanaApiKey <a Kibana API key with the Actions and Connectors "
                "All privilege>",
            )
        )
    if elastic is None and secrets["kibanaApiKey"] is not None:
        warnings.append(
            f"{PROJECT}:kibanaApiKey is unused: elastic.kibanaUrl is not set (keep it until a "
            "connector an earlier `pulumi up` made is deleted: deleting it needs the key)"
        )

    if problems:
        hint = _missing_user_values_hint(missing_user_values) if missing_user_values else ""
        raise ConfigError(problems, hint)
    assert host and model and access and network and mirror and tls
    config = StackConfig(
        project=str(project),
        zone=str(zone),
        stack=stack,
        host=host,
        model=model,
        access=access,
        network=network,
        mirror=mirror,
        tls=tls,
        elastic=elastic,
        secrets=StackSecrets(
            **{
                _snake(name): pulumi.Output.secret(value)
                for name, value in secrets.items()
                if value is not None
            }
        ),
    )
    return config, warnings


def _secret_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def load() -> StackConfig:
    """Read and validate this stack's configuration; warnings go to the Pulumi log."""
    config, warnings = validate(_configured_keys(), pulumi.get_stack())
    for warning in warnings:
        pulumi.log.warn(warning)
    return config
