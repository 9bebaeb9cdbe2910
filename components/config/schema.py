"""The model tree of the stack configuration: sections, field types and their validators.

Exactly the keys of the configuration contract (README, Configuration), camelCase in the stack
file. What one field can check on its own is checked here; what needs several is in `rules`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

import pulumi
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
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
    if network.version != 4:  # noqa: PLR2004 (IP version 4)
        raise ValueError(f"{value!r} is IPv6; give IPv4 ranges such as 203.0.113.7/32")
    if str(network) != value and f"{value}/32" != str(network):
        raise ValueError(f"{value!r} has host bits set; did you mean {network}?")
    return str(network)


Cidr = Annotated[str, AfterValidator(_cidr)]

# Each pattern matches a whole value: checked with fullmatch, and anchored with \Z, not $ (which
# also matches before a final newline), for any caller that uses match. ASCII: \w and \d would
# take any script's letters and digits (a Cyrillic a, U+0430, in a model id names another
# repository).
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z", re.ASCII
)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+\Z")
_LINUX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
_IMAGE_REF = re.compile(
    r"^[a-z0-9][a-z0-9._/:-]*[a-z0-9](:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})\Z", re.ASCII
)
_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+\Z", re.ASCII)
_GCS_URI = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\s]*)?\Z")
_SPACE_ID = re.compile(r"^[a-z0-9_-]+\Z")
_JUMP_HOST = re.compile(r"^[a-z_][a-z0-9_-]{0,31}@[A-Za-z0-9.-]+(:\d{1,5})?\Z", re.ASCII)
ZONE_NAME = re.compile(r"^[a-z]+-[a-z]+\d+-[a-z]\Z", re.ASCII)
# A GCE image by project and name or family (projects/P/global/images/[family/]NAME), the forms
# components/host.py resolves and the provider's DiskImageDiffSuppress compares.
HOST_IMAGE = re.compile(
    r"(?:https://www\.googleapis\.com/compute/v1/)?projects/(?P<project>[a-z][-a-z0-9.:]*[a-z0-9])"
    r"/global/images/(?P<family>family/)?(?P<name>[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)"
)


# A GCP project id, as Resource Manager defines it (Project.projectId in the v3 API reference: "6 to
# 30 lowercase ASCII letters, digits, or hyphens. It must start with a letter. Trailing hyphens are
# prohibited."), optionally after the `domain:` of a legacy domain-scoped project (example.com:
# my-project), whose form is that of terraform-provider-google's verify.ProjectRegex ("copied from
# the official Google Cloud auto-generated client"). The rule for the id does not bind those older
# ids, so after a domain any label is taken.
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]\Z", re.ASCII)
_DOMAIN_SCOPED_PROJECT_ID = re.compile(
    r"^(?:[-a-z0-9]{1,63}\.)*[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"  # the domain
    r":[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?\Z",
    re.ASCII,
)


def project_id(value: str) -> str:
    """gcp:project, a project id (the provider's setting: checked here with the rest)."""
    if _PROJECT_ID.fullmatch(value) or _DOMAIN_SCOPED_PROJECT_ID.fullmatch(value):
        return value
    if value.isdigit():
        raise ValueError(
            f"{value} is a project number; give the project id (`gcloud projects describe "
            f"{value} --format='value(projectId)'`)"
        )
    raise ValueError(
        f"{value!r} is not a GCP project id: 6 to 30 lowercase letters, digits and hyphens, "
        "starting with a letter and not ending with a hyphen, such as my-project-123 (the id, "
        "not the project's display name: `gcloud projects list` shows both)"
    )


def _gpu_memory_fraction(value: float) -> float:
    if 0 < value <= 1:
        return value
    # vLLM takes a fraction ("which can range from 0 to 1. For example, a value of 0.5 would imply
    # 50% GPU memory utilization", CacheConfig.gpu_memory_utilization, vllm/config/cache.py):
    # from 10 to 100, the value is most likely a percentage.
    if 10 <= value <= 100:  # noqa: PLR2004 (the range of a likely percentage)
        raise ValueError(
            f"{value:g} looks like a percentage, and this is a fraction of each GPU's memory "
            f"(at most 1); did you mean {value / 100:g}?"
        )
    raise ValueError(
        f"{value:g} is not in (0, 1]: the fraction of each GPU's memory vLLM may use, such as 0.9"
    )


def _ssh_user(value: str) -> str:
    if not _LINUX_USER.fullmatch(value):
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
    if not _HOSTNAME.fullmatch(lowered):
        raise ValueError(f"{value!r} is not a DNS name such as llm.example.com")
    return lowered


def _pattern(regex: re.Pattern[str], example: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"{value!r} is not valid; expected something like {example}")
        return value

    return check


# ------------------------------------------------------------------------------------------------
# The sections


class Section(BaseModel):
    """One `vllm-gcp:<section>` object: camelCase keys, unknown keys refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class HostConfig(Section):
    machine_type: str = "a2-ultragpu-2g"
    boot_disk_gb: int = Field(default=500, ge=50, le=65536)
    provisioning: Literal["standard", "spot"] = "standard"
    image: Annotated[str, AfterValidator(_host_image)] = catalogue.DEFAULT_HOST_IMAGE
    ssh_user: Annotated[str, AfterValidator(_ssh_user)] = "vllm"
    skip_zone_check: bool = False

    @property
    def machine(self) -> catalogue.MachineSpec:
        return catalogue.MACHINE_TYPES[self.machine_type]


class ModelConfig(Section):
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
    gpu_memory_utilization: Annotated[float, AfterValidator(_gpu_memory_fraction)] = 0.90
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


class AccessConfig(Section):
    api_cidrs: list[Cidr] = Field(default_factory=lambda: ["0.0.0.0/0"], min_length=1)
    ssh_cidrs: list[Cidr] = Field(default_factory=list)


class NetworkConfig(Section):
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


class MirrorConfig(Section):
    docker_remote: bool = False
    apt_remote: bool = False


class TlsConfig(Section):
    mode: Literal["self-signed", "letsencrypt", "provided"] = "self-signed"
    domain: Annotated[str, AfterValidator(_hostname)] | None = None
    email: Annotated[str, AfterValidator(_pattern(_EMAIL, "ops@example.com"))] | None = None


_HTTP_URL = re.compile(r"^https?://[^\s/]+(/[^\s]*)?$")
# Elasticsearch's rule for ids (MlStrings.isValidId, used by the inference API): lowercase
# alphanumerics, hyphens, underscores and dots, starting and ending alphanumeric, at most 64.
INFERENCE_ID = re.compile(r"^(?=.{1,64}$)[a-z0-9](?:[a-z0-9_.-]*[a-z0-9])?$")


class ElasticConfig(Section):
    """vllm-gcp:elastic: a Kibana connector (kibanaUrl), an inference endpoint (elasticsearchUrl),
    or both; at least one of the two (rules.check_elastic)."""

    kibana_url: (
        Annotated[str, AfterValidator(_pattern(_HTTP_URL, "https://my-deployment.kb.example.com"))]
        | None
    ) = None
    space: Annotated[str, AfterValidator(_pattern(_SPACE_ID, "default"))] = "default"
    connector_name: str | None = Field(default=None, min_length=1, max_length=200)
    verify: bool = True
    elasticsearch_url: (
        Annotated[str, AfterValidator(_pattern(_HTTP_URL, "https://my-deployment.es.example.com"))]
        | None
    ) = None
    inference_id: Annotated[str, AfterValidator(_pattern(INFERENCE_ID, "vllm-prod"))] | None = (
        None  # default: vllm-<stack> (inference_id_for)
    )

    @property
    def base_url(self) -> str:
        """The Kibana URL without a trailing slash ("" without one)."""
        return (self.kibana_url or "").rstrip("/")

    @property
    def elasticsearch_base_url(self) -> str:
        return (self.elasticsearch_url or "").rstrip("/")

    def inference_id_for(self, stack: str) -> str:
        """The configured id, else `vllm-<stack>` made valid for Elasticsearch."""
        if self.inference_id:
            return self.inference_id
        tail = re.sub(r"[^a-z0-9_.-]+", "-", stack.lower()).strip("-_.") or "stack"
        return f"vllm-{tail}"[:64].rstrip("-_.")


# Requests one replica runs at the autoscaler's target (fleet.targetRequestsPerReplica): about
# what the reference machine's KV cache holds of Elastic's long prompts (docs/observability.md).
DEFAULT_TARGET_REQUESTS_PER_REPLICA = 16


class FleetConfig(Section):
    """vllm-gcp:fleet: replicas on a regional managed instance group behind a load balancer."""

    replicas: int | None = Field(default=None, ge=1)  # a fixed size, or min/max (autoscaled)
    min_replicas: int | None = Field(default=None, ge=1)
    max_replicas: int | None = Field(default=None, ge=1)
    # The autoscaler keeps vLLM's running requests per replica at or below this.
    target_requests_per_replica: int = Field(default=DEFAULT_TARGET_REQUESTS_PER_REPLICA, ge=1)
    zones: list[Annotated[str, AfterValidator(_pattern(ZONE_NAME, "us-central1-a"))]] | None = (
        None  # default: the region's zones that offer the machine's GPU
    )
    target_shape: Literal["even", "balanced", "any", "any-single-zone"] = "balanced"
    # The proxy-only subnet the regional load balancer's proxies take their addresses from.
    proxy_subnet_cidr: Cidr = "10.43.0.0/23"

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def size(self) -> int:
        """The group's fixed size, or the size an autoscaled group starts at (minReplicas)."""
        return self.replicas or self.min_replicas or DEFAULT_FLEET_REPLICAS


DEFAULT_FLEET_REPLICAS = 2


# A Cloud Monitoring notification channel: its resource name, or the numeric id that ends it
# (`gcloud beta monitoring channels list` shows the name; the console shows the id).
_NOTIFICATION_CHANNEL = re.compile(
    r"^(projects/[a-z][a-z0-9:.-]{4,61}/notificationChannels/)?\d+\Z"
)


def _channel_id_as_text(value: object) -> object:
    """A bare channel id as YAML or `pulumi config set --path ... 123` gives it: a number."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ObservabilityConfig(Section):
    """vllm-gcp:observability: the host's metrics and logs agent, a dashboard, alert policies."""

    enabled: bool = True
    notification_channels: list[
        Annotated[
            str,
            BeforeValidator(_channel_id_as_text),
            AfterValidator(
                _pattern(_NOTIFICATION_CHANNEL, "projects/my-project/notificationChannels/123")
            ),
        ]
    ] = Field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# The validated stack

# The secret keys of the namespace, as the stack file names them. StackSecrets holds those the
# program reads; the Kibana connector's and the inference endpoint's providers read kibanaApiKey
# and elasticsearchApiKey themselves (their configure()).
SECRET_KEYS = (
    "tlsCertificate",
    "tlsPrivateKey",
    "huggingFaceToken",
    "kibanaApiKey",
    "elasticsearchApiKey",
)


@dataclass(frozen=True)
class StackSecrets:
    """Secret configuration values, kept as secret Outputs from the moment they are read."""

    tls_certificate: pulumi.Output[str] | None = None
    tls_private_key: pulumi.Output[str] | None = None
    hugging_face_token: pulumi.Output[str] | None = None


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
    fleet: FleetConfig | None = None  # None: one VM configured over SSH
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    secrets: StackSecrets = field(default_factory=StackSecrets)

    @property
    def region(self) -> str:
        return self.zone.rsplit("-", 1)[0]

    @property
    def machine(self) -> catalogue.MachineSpec:
        return self.host.machine

    @property
    def fleet_zones(self) -> list[str]:
        """The zones the fleet's group spreads across: fleet.zones, else the region's zones that
        offer the machine's GPU (the catalogue's dated list)."""
        if self.fleet is not None and self.fleet.zones:
            return list(self.fleet.zones)
        return catalogue.region_zones(self.machine.gpu, self.region)

    @property
    def tensor_parallel_size(self) -> int:
        return self.model.tensor_parallel_size or self.machine.gpu_count

    @property
    def notification_channels(self) -> list[str]:
        """observability.notificationChannels as resource names: a bare id names a channel of
        this stack's project."""
        return [
            channel
            if channel.startswith("projects/")
            else f"projects/{self.project}/notificationChannels/{channel}"
            for channel in self.observability.notification_channels
        ]

    @property
    def labels(self) -> dict[str, str]:
        """GCE labels naming the project and stack (lowercase, at most 63 characters)."""
        return {"app": PROJECT, "stack": _label_value(self.stack)}


def _label_value(value: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]
