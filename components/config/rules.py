"""Cross-field rules: what no single field can say on its own.

Each rule takes the parsed sections it needs (None where a section did not parse, its problems
already reported) and returns the problems it finds, each by its key path.
"""

from __future__ import annotations

import ipaddress
import re

from components import catalogue
from components.config.certificates import check_provided_certificate
from components.config.problems import Problem, did_you_mean
from components.config.schema import (
    PROJECT,
    ZONE_NAME,
    AccessConfig,
    ElasticConfig,
    FleetConfig,
    HostConfig,
    MirrorConfig,
    ModelConfig,
    NetworkConfig,
    ObservabilityConfig,
    TlsConfig,
)

# Flags the stack sets itself: overriding them in extraArgs would break the proxy or the key.
# --config reads flags from a YAML file, these among them.
# The vLLM flags the stack sets or rules out, and why (extraArgs may override any other flag).
_BEHIND_NGINX = "vLLM listens on 127.0.0.1:8000 behind Nginx"
_RESERVED_VLLM_FLAGS: dict[str, str] = {
    "host": _BEHIND_NGINX,
    "port": _BEHIND_NGINX,
    "uds": _BEHIND_NGINX,
    "api-key": "vLLM reads the stack's key from its root-only secrets file",
    "config": "--config would read more flags from a file",
    # The outputs, the Kibana connector and the inference endpoint name the served model.
    "served-model-name": "set model.servedName instead",
    "model": "set model.id instead",
    # A TLS listener would break Nginx's plain-HTTP hop on loopback.
    "ssl-keyfile": "Nginx terminates TLS; vLLM speaks plain HTTP on loopback",
    "ssl-certfile": "Nginx terminates TLS; vLLM speaks plain HTTP on loopback",
}
# RFC 1918 and the shared address space (RFC 6598) that VPCs may use for subnets.
_PRIVATE_RANGES = tuple(
    ipaddress.IPv4Network(r)
    for r in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
# Identity-Aware Proxy's TCP forwarding range: how operators reach a host with no external IP.
IAP_TCP_FORWARDING_RANGE = "35.235.240.0/20"

# A value the stack files leave to the user (the loader's hint names the command that sets it).
MISSING_SSH_CIDRS = Problem(
    f"{PROJECT}:access.sshCidrs",
    "required, non-empty: the address(es) the deployer runs `pulumi up` from, "
    "such as 203.0.113.7/32",
)


# ------------------------------------------------------------------------------------------------
# The machine and its zone


def check_machine(host: HostConfig, zone: str | None) -> list[Problem]:
    """A catalogued GPU machine, provisioned as it is offered, in a zone known to offer its GPU."""
    spec = catalogue.MACHINE_TYPES.get(host.machine_type)
    if spec is None:
        return [
            Problem(
                f"{PROJECT}:host.machineType",
                f"{host.machine_type!r} is not a supported GPU machine type"
                f"{did_you_mean(host.machine_type, catalogue.MACHINE_TYPES)} "
                f"(supported: {', '.join(sorted(catalogue.MACHINE_TYPES))})",
            )
        ]
    found: list[Problem] = []
    if spec.spot_only and host.provisioning != "spot":
        found.append(
            Problem(
                f"{PROJECT}:host.provisioning",
                f"{spec.name} is offered only as Spot; set it to spot or choose a3-highgpu-8g",
            )
        )
    if zone and ZONE_NAME.match(zone) and zone not in spec.gpu.zones and not host.skip_zone_check:
        found.append(
            Problem(
                "gcp:zone",
                f"{zone} is not known to offer {spec.gpu.display_name} ({spec.name}) as of "
                f"{catalogue.GPU_ZONES_AS_OF}; zones that do: {', '.join(sorted(spec.gpu.zones))}. "
                f"If `gcloud compute accelerator-types list --filter=zone:{zone}` lists "
                f"{spec.gpu.accelerator}, set `pulumi config set --path "
                f"{PROJECT}:host.skipZoneCheck true`",
            )
        )
    return found


# ------------------------------------------------------------------------------------------------
# The model: its flags, and whether it fits the machine


def check_model_flags(model: ModelConfig) -> list[Problem]:
    """The tool-call parser, extraArgs, the image tag, the weights' source and maxModelLen."""
    key = f"{PROJECT}:model"
    found: list[Problem] = []
    parser = model.tool_call_parser
    if parser is not None and parser != "none" and parser not in catalogue.TOOL_CALL_PARSERS:
        found.append(
            Problem(
                f"{key}.toolCallParser",
                f"{parser!r} is not a vLLM tool-call parser"
                f"{did_you_mean(parser, catalogue.TOOL_CALL_PARSERS)} (valid: none, "
                f"{', '.join(sorted(catalogue.TOOL_CALL_PARSERS))})",
            )
        )
    for index, arg in enumerate(model.extra_args):
        flag = reserved_vllm_flag(arg)
        if flag is None:
            continue
        given = re.split(r"[=\s]", arg, maxsplit=1)[0]  # never the value: it may be a key
        read_as = "" if given == flag else f" is read by vLLM as {flag}, which"
        found.append(
            Problem(
                f"{key}.extraArgs[{index}]",
                f"{given}{read_as} is set by the stack ({_RESERVED_VLLM_FLAGS[flag[2:]]}); "
                "remove it",
            )
        )
    tag = model.image.rpartition(":")[2]
    if "@" not in model.image and tag == "latest":
        found.append(
            Problem(
                f"{key}.image",
                "'latest' moves under a running stack; pin a release such as "
                f"{catalogue.DEFAULT_VLLM_IMAGE}",
            )
        )
    if model.source == "gcs" and model.gcs_uri is None:
        found.append(
            Problem(f"{key}.gcsUri", "required when model.source is gcs (gs://bucket/prefix)")
        )
    if model.source != "gcs" and model.gcs_uri is not None:
        found.append(
            Problem(f"{key}.gcsUri", "is only read when model.source is gcs; set source: gcs")
        )
    return found + _check_context_length(model)


def _check_context_length(model: ModelConfig) -> list[Problem]:
    """maxModelLen within the context vLLM derives from the model's config (catalogue)."""
    limit = catalogue.KNOWN_CONTEXT_TOKENS.get(model.id)
    length = model.max_model_len
    if limit is None or length is None or length <= limit or _overrides_model_config(model):
        return []
    return [
        Problem(
            f"{PROJECT}:model.maxModelLen",
            f"{length} is above the {limit}-token context vLLM derives for {model.id} from its "
            f"config, and vLLM refuses to start with a longer one; give at most {limit} (a RoPE "
            "scaling through extraArgs --hf-overrides lifts this check)",
        )
    ]


# The flags that change the model's config, and with it the context vLLM derives: --hf-overrides
# (any config key, rope_scaling among them) and, in releases before it took their place,
# --rope-scaling and --rope-theta.
_CONFIG_OVERRIDE_FLAGS = ("hf-overrides", "rope-scaling", "rope-theta")


def _overrides_model_config(model: ModelConfig) -> bool:
    return any(_vllm_flag_name(arg) in _CONFIG_OVERRIDE_FLAGS for arg in model.extra_args)


def _vllm_flag_name(arg: str) -> str | None:
    """The name of the flag an argument sets, as vLLM's parser reads it (see reserved_vllm_flag),
    without its dashes; None for a value, or for `--` alone."""
    if not arg.startswith("--"):
        return None
    return re.split(r"[=.\s]", arg[2:], maxsplit=1)[0].replace("_", "-") or None


def reserved_vllm_flag(arg: str) -> str | None:
    """The reserved flag an extra argument sets as vLLM's parser reads it, else None.

    vLLM's FlexibleArgumentParser (vllm/utils/argparse_utils.py) turns `_` into `-` in a name up
    to its first `.`, takes `--name=value`, reads `--name.key value` as a JSON value of `--name`,
    and keeps argparse's allow_abbrev (on): a unique prefix of a flag is that flag, and a prefix
    of several is an error at start. So any prefix of a reserved name is refused. An argument
    with a space in its name is not a flag to argparse (vLLM refuses it as an extra positional),
    and is refused here like the flag it spells.
    """
    name = _vllm_flag_name(arg)
    if name is None:
        return None
    return next((f"--{flag}" for flag in _RESERVED_VLLM_FLAGS if flag.startswith(name)), None)


def check_model_fit(model: ModelConfig, host: HostConfig) -> list[Problem]:
    """Tensor parallelism, GPU memory, boot disk and driver for this model on this machine."""
    spec = catalogue.MACHINE_TYPES.get(host.machine_type)
    if spec is None:
        return []  # check_machine reports the machine type
    tensor_parallel = model.tensor_parallel_size or spec.gpu_count
    if spec.gpu_count % tensor_parallel != 0:
        divisors = [d for d in range(1, spec.gpu_count + 1) if spec.gpu_count % d == 0]
        return [
            Problem(
                f"{PROJECT}:model.tensorParallelSize",
                f"{tensor_parallel} does not divide the {spec.gpu_count} GPU(s) of {spec.name}; "
                f"valid: {', '.join(str(d) for d in divisors)}",
            )
        ]
    needed = catalogue.weights_gb(model.id)
    return [
        *_check_weights_fit(model, spec, tensor_parallel, needed),
        *_check_boot_disk(host, model, spec, needed),
        *_check_driver(model, host),
    ]


def _check_weights_fit(
    model: ModelConfig, spec: catalogue.MachineSpec, tensor_parallel: int, needed: float | None
) -> list[Problem]:
    available = tensor_parallel * spec.gpu.memory_gb * model.gpu_memory_utilization
    if needed is None or needed <= available * catalogue.MAX_WEIGHTS_SHARE:
        return []
    return [
        Problem(
            f"{PROJECT}:model.id",
            f"{model.id} needs about {needed:.0f} GB for its weights; vLLM may use "
            f"{available:.1f} GB ({tensor_parallel} x {spec.gpu.memory_gb} GB x "
            f"{model.gpu_memory_utilization}), and the weights may take at most "
            f"{catalogue.MAX_WEIGHTS_SHARE:.0%} of it to leave room for the KV cache; choose a "
            "machine with more GPU memory, a higher tensorParallelSize or a smaller model",
        )
    ]


def _check_boot_disk(
    host: HostConfig, model: ModelConfig, spec: catalogue.MachineSpec, needed: float | None
) -> list[Problem]:
    # Without local SSD, the Hugging Face cache (the weights) lives on the boot disk too.
    cache_on_boot_disk = spec.local_ssd_count == 0
    minimum_disk = catalogue.BOOT_DISK_BASE_GB + (
        round((needed or 0) * 1.1) if cache_on_boot_disk else 0
    )
    if host.boot_disk_gb >= minimum_disk:
        return []
    held = f" and {model.id}'s weights" if cache_on_boot_disk and needed else ""
    return [
        Problem(
            f"{PROJECT}:host.bootDiskGb",
            f"{host.boot_disk_gb} GB cannot hold the OS, the vLLM image{held}; "
            f"give at least {minimum_disk}",
        )
    ]


def _check_driver(model: ModelConfig, host: HostConfig) -> list[Problem]:
    version = model.vllm_version
    driver = catalogue.image_driver_major(host.image)
    if (
        version is None
        or version < catalogue.FIRST_CUDA13_VLLM
        or driver is None
        or driver >= catalogue.MIN_DRIVER_FOR_CUDA13
    ):
        return []
    return [
        Problem(
            f"{PROJECT}:model.image",
            f"vLLM {'.'.join(map(str, version))} images are CUDA 13 builds that need NVIDIA "
            f"driver {catalogue.MIN_DRIVER_FOR_CUDA13}+, but host.image carries {driver}; use "
            f"the default host image or a vLLM release before 0.20",
        )
    ]


# ------------------------------------------------------------------------------------------------
# Who may reach the host, and private (air-gapped) mode


def check_ssh_sources(access: AccessConfig) -> list[Problem]:
    """SSH open to the deployer: at least one source, never the whole internet."""
    found = [] if access.ssh_cidrs else [MISSING_SSH_CIDRS]
    found += [
        Problem(
            f"{PROJECT}:access.sshCidrs[{index}]",
            "0.0.0.0/0 opens SSH to the whole internet; give the deployer's "
            "address, such as 203.0.113.7/32",
        )
        for index, cidr in enumerate(access.ssh_cidrs)
        if cidr == "0.0.0.0/0"
    ]
    return found


def check_network(network: NetworkConfig) -> list[Problem]:
    """A subnet named with its VPC, and a private range for the subnet the stack makes."""
    key = f"{PROJECT}:network"
    found: list[Problem] = []
    if network.subnet and not network.vpc:
        found.append(Problem(f"{key}.subnet", "needs network.vpc, the VPC it belongs to"))
    if not _is_private_range(network.subnet_cidr):
        found.append(
            Problem(f"{key}.subnetCidr", f"{network.subnet_cidr} is not a private (RFC 1918) range")
        )
    return found


def check_private_mode(  # noqa: PLR0913, PLR0917 (each config section the rule reads)
    network: NetworkConfig,
    access: AccessConfig | None,
    tls: TlsConfig | None,
    model: ModelConfig | None,
    mirror: MirrorConfig | None,
    host: HostConfig | None,
) -> list[Problem]:
    """A private endpoint admits only private sources and needs nothing from the internet."""
    if not network.private:
        return []
    return [
        *([] if access is None else _check_private_sources(access)),
        *([] if tls is None else _check_private_tls(tls)),
        *_check_private_supplies(model, mirror, host),
    ]


def _is_private_range(cidr: str) -> bool:
    network = ipaddress.IPv4Network(cidr)
    return any(network.subnet_of(private) for private in _PRIVATE_RANGES)


def _check_private_sources(access: AccessConfig) -> list[Problem]:
    found: list[Problem] = []
    for name, cidrs in (("apiCidrs", access.api_cidrs), ("sshCidrs", access.ssh_cidrs)):
        for index, cidr in enumerate(cidrs):
            if name == "sshCidrs" and cidr == IAP_TCP_FORWARDING_RANGE:
                continue
            if not _is_private_range(cidr):
                found.append(
                    Problem(
                        f"{PROJECT}:access.{name}[{index}]",
                        f"{cidr} is not a private range; a private endpoint admits only "
                        "private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, "
                        f"100.64.0.0/10), and SSH also {IAP_TCP_FORWARDING_RANGE} (IAP)",
                    )
                )
    return found


def _check_private_tls(tls: TlsConfig) -> list[Problem]:
    if tls.mode != "letsencrypt":
        return []
    return [
        Problem(
            f"{PROJECT}:tls.mode",
            "letsencrypt needs the host reachable from the internet on port 80, which a "
            "private endpoint is not; use self-signed or provided",
        )
    ]


def _check_private_supplies(
    model: ModelConfig | None, mirror: MirrorConfig | None, host: HostConfig | None
) -> list[Problem]:
    """The weights, the vLLM image and the host's software, which a private host cannot fetch."""
    found: list[Problem] = []
    if model is not None and model.source != "gcs":
        found.append(
            Problem(
                f"{PROJECT}:model.source",
                "a private host cannot reach Hugging Face; stage the weights in Cloud Storage "
                "and set source: gcs with gcsUri",
            )
        )
    if mirror is not None and not mirror.docker_remote:
        found.append(
            Problem(
                f"{PROJECT}:mirror.dockerRemote",
                "a private host cannot pull from Docker Hub; set it to true (the vLLM image "
                "then comes through an Artifact Registry remote repository)",
            )
        )
    if host is not None and host.image == catalogue.DEFAULT_HOST_IMAGE:
        found.append(
            Problem(
                f"{PROJECT}:host.image",
                "the default image lacks what a private host cannot install: the NVIDIA "
                "container toolkit (only NVIDIA's apt repository publishes it and Artifact "
                "Registry cannot mirror it; mirror.aptRemote covers the Ubuntu archive) and the "
                "Ops Agent (Google's own repository); give host.image a prepared image, built "
                "once from a machine with gcloud by "
                "`vllm-gcp image build --project PROJECT --zone ZONE`: the family it prints, "
                "projects/PROJECT/global/images/family/vllm-host-2404-nvidia-580 "
                "(docs/prepared-image.md)",
            )
        )
    return found


# ------------------------------------------------------------------------------------------------
# The fleet: its size, its zones, and what its load balancer can serve


def check_fleet(  # noqa: PLR0913, PLR0917 (each config section the rule reads)
    fleet: FleetConfig,
    host: HostConfig,
    zone: str | None,
    tls: TlsConfig | None,
    network: NetworkConfig | None,
    observability: ObservabilityConfig | None,
) -> list[Problem]:
    """A size the group can have (and scale on), zones of the region that offer the GPU, and
    settings the load balancer can serve."""
    return [
        *_check_fleet_size(fleet),
        *_check_fleet_autoscaling(fleet, observability),
        *_check_fleet_zones(fleet, host, zone),
        *_check_fleet_serving(fleet, tls, network),
    ]


def _check_fleet_autoscaling(
    fleet: FleetConfig, observability: ObservabilityConfig | None
) -> list[Problem]:
    key = f"{PROJECT}:fleet"
    if fleet.autoscaled and observability is not None and not observability.enabled:
        # The autoscaler reads vLLM's load from what the host's metrics agent writes.
        return [
            Problem(
                f"{key}.minReplicas",
                "autoscaling scales on vLLM's load, which the hosts' metrics agent reports: set "
                f"{PROJECT}:observability.enabled to true, or give fleet.replicas instead",
            )
        ]
    if fleet.autoscaled and fleet.target_shape != "balanced":
        # GCE autoscales a regional group only with the EVEN or BALANCED target shape
        # (regional-mig-set-target-distribution-shape, Limitations), and EVEN only with proactive
        # redistribution (InstanceRedistributionType NONE is "for non-autoscaled groups"), which
        # deletes serving replicas to even the zones out: this stack keeps NONE.
        return [
            Problem(
                f"{key}.targetShape",
                f"{fleet.target_shape} cannot be autoscaled: GCE autoscales a regional group "
                "with the balanced shape (even would need proactive redistribution, which "
                "deletes serving replicas to rebalance zones); set targetShape: balanced, or "
                "give fleet.replicas instead",
            )
        ]
    if not fleet.autoscaled and "target_requests_per_replica" in fleet.model_fields_set:
        return [
            Problem(
                f"{key}.targetRequestsPerReplica",
                "only the autoscaler reads it: set minReplicas and maxReplicas, or remove it",
            )
        ]
    return []


def _check_fleet_size(fleet: FleetConfig) -> list[Problem]:
    key = f"{PROJECT}:fleet"
    if fleet.replicas is not None and fleet.autoscaled:
        return [
            Problem(
                f"{key}.replicas",
                "a fixed size or an autoscaled one, not both: remove replicas, or "
                "minReplicas and maxReplicas",
            )
        ]
    if fleet.autoscaled and (fleet.min_replicas is None or fleet.max_replicas is None):
        missing = "maxReplicas" if fleet.max_replicas is None else "minReplicas"
        return [Problem(f"{key}.{missing}", "required with an autoscaled size (both bounds)")]
    low, high = fleet.min_replicas, fleet.max_replicas
    if low is not None and high is not None and low > high:
        return [Problem(f"{key}.minReplicas", f"{low} is above maxReplicas {high}")]
    return []


def _check_fleet_zones(fleet: FleetConfig, host: HostConfig, zone: str | None) -> list[Problem]:
    spec = catalogue.MACHINE_TYPES.get(host.machine_type)
    if spec is None or zone is None or not ZONE_NAME.match(zone):
        return []  # reported by check_machine and the provider-key check
    region = zone.rsplit("-", 1)[0]
    offering = catalogue.region_zones(spec.gpu, region)
    key = f"{PROJECT}:fleet.zones"
    if fleet.zones is None:
        if offering:
            return []
        if host.skip_zone_check:
            return [Problem(key, f"required: no zone of {region} is known to offer the GPU")]
        regions = sorted({z.rsplit("-", 1)[0] for z in spec.gpu.zones})
        return [
            Problem(
                "gcp:zone",
                f"no zone of {region} is known to offer {spec.gpu.display_name} as of "
                f"{catalogue.GPU_ZONES_AS_OF} (gcp:zone names the fleet's region); regions "
                f"that do: {', '.join(regions)}",
            )
        ]
    found: list[Problem] = []
    for index, name in enumerate(fleet.zones):
        if name.rsplit("-", 1)[0] != region:
            found.append(
                Problem(f"{key}[{index}]", f"{name} is not in {region}, the region of gcp:zone")
            )
        elif name not in spec.gpu.zones and not host.skip_zone_check:
            found.append(
                Problem(
                    f"{key}[{index}]",
                    f"{name} is not known to offer {spec.gpu.display_name} as of "
                    f"{catalogue.GPU_ZONES_AS_OF}; zones of {region} that do: "
                    f"{', '.join(offering) or 'none'}",
                )
            )
    if len(set(fleet.zones)) != len(fleet.zones):
        found.append(Problem(key, "names a zone twice"))
    if not fleet.zones:
        found.append(Problem(key, "must name at least one zone, or be left out"))
    return found


def _check_fleet_serving(
    fleet: FleetConfig, tls: TlsConfig | None, network: NetworkConfig | None
) -> list[Problem]:
    found: list[Problem] = []
    if tls is not None and tls.mode == "letsencrypt":
        found.append(
            Problem(
                f"{PROJECT}:tls.mode",
                "a fleet's load balancer terminates TLS, and certbot on the replicas cannot "
                "answer Let's Encrypt through it; use self-signed, or provided with a "
                "certificate for tls.domain",
            )
        )
    if network is not None:
        if network.ssh_jump_host is not None:
            found.append(
                Problem(
                    f"{PROJECT}:network.sshJumpHost",
                    "a fleet is configured at boot, not over SSH: remove it",
                )
            )
        proxy = ipaddress.IPv4Network(fleet.proxy_subnet_cidr)
        if not _is_private_range(fleet.proxy_subnet_cidr):
            found.append(
                Problem(
                    f"{PROJECT}:fleet.proxySubnetCidr",
                    f"{proxy} is not a private (RFC 1918) range",
                )
            )
        elif proxy.overlaps(ipaddress.IPv4Network(network.subnet_cidr)):
            found.append(
                Problem(
                    f"{PROJECT}:fleet.proxySubnetCidr",
                    f"{proxy} overlaps network.subnetCidr {network.subnet_cidr}",
                )
            )
        elif proxy.prefixlen > 26:  # noqa: PLR2004 (GCE's largest proxy-only subnet prefix)
            found.append(
                Problem(
                    f"{PROJECT}:fleet.proxySubnetCidr",
                    f"{proxy} is too small: a proxy-only subnet needs /26 or larger (/23 advised)",
                )
            )
    return found


# ------------------------------------------------------------------------------------------------
# TLS modes and the secrets they read


def check_letsencrypt(tls: TlsConfig) -> list[Problem]:
    """Let's Encrypt needs the name to certify and an address for expiry notices."""
    if tls.mode != "letsencrypt":
        return []
    key = f"{PROJECT}:tls"
    found: list[Problem] = []
    if tls.domain is None:
        found.append(
            Problem(f"{key}.domain", "required for letsencrypt: a name that resolves to the IP")
        )
    if tls.email is None:
        found.append(Problem(f"{key}.email", "required for letsencrypt (expiry notices)"))
    return found


def check_tls_secrets(
    tls: TlsConfig, certificate_pem: str | None, key_pem: str | None
) -> list[Problem]:
    """Provided mode: a domain, a certificate and key that belong together; else neither secret."""
    given = (("tlsCertificate", certificate_pem), ("tlsPrivateKey", key_pem))
    if tls.mode != "provided":
        return [
            Problem(f"{PROJECT}:{name}", "is only read when tls.mode is provided")
            for name, value in given
            if value is not None
        ]
    found: list[Problem] = []
    if tls.domain is None:
        found.append(
            Problem(
                f"{PROJECT}:tls.domain", "required for provided: the name the certificate covers"
            )
        )
    found += [
        Problem(
            f"{PROJECT}:{name}",
            f"required for provided: pulumi config set --secret {PROJECT}:{name} "
            f"< {'server.crt' if name == 'tlsCertificate' else 'server.key'}",
        )
        for name, value in given
        if value is None
    ]
    if certificate_pem is None or key_pem is None:
        return found
    found += [
        Problem(f"{PROJECT}:tlsCertificate", problem)
        for problem in check_provided_certificate(certificate_pem, key_pem, tls.domain)
    ]
    return found


# ------------------------------------------------------------------------------------------------
# Elastic


# Elastic Cloud's deployment and project hosts (Hosted: <name>.<region>.<csp>.cloud.es.io, the
# older found.io and Azure's elastic-cloud.com; Serverless: <project>.<region>.<csp>.elastic.cloud).
ELASTIC_CLOUD_HOSTS = (".cloud.es.io", ".found.io", ".elastic-cloud.com", ".elastic.cloud")


def is_elastic_cloud(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
    return host.endswith(ELASTIC_CLOUD_HOSTS)


def check_elastic(
    elastic: ElasticConfig | None,
    kibana_api_key: str | None,
    elasticsearch_api_key: str | None = None,
    tls: TlsConfig | None = None,
) -> list[Problem]:
    """Kibana, Elasticsearch or both; each with its API key; a model Elasticsearch can trust."""
    if elastic is None:
        return []
    key = f"{PROJECT}:elastic"
    if elastic.kibana_url is None and elastic.elasticsearch_url is None:
        return [
            Problem(
                key,
                "set kibanaUrl (a Kibana connector), elasticsearchUrl (an Elasticsearch inference "
                "endpoint, Kibana 9.4+) or both",
            )
        ]
    found: list[Problem] = []
    if elastic.kibana_url is not None and kibana_api_key is None:
        found.append(
            Problem(
                f"{PROJECT}:kibanaApiKey",
                f"required when elastic.kibanaUrl is set: pulumi config set --secret "
                f"{PROJECT}:kibanaApiKey <a Kibana API key with the Actions and Connectors "
                "All privilege>",
            )
        )
    if elastic.elasticsearch_url is None:
        if elastic.inference_id is not None:
            found.append(
                Problem(f"{key}.inferenceId", "is only read with elastic.elasticsearchUrl")
            )
        return found
    if elasticsearch_api_key is None:
        found.append(
            Problem(
                f"{PROJECT}:elasticsearchApiKey",
                f"required when elastic.elasticsearchUrl is set: pulumi config set --secret "
                f"{PROJECT}:elasticsearchApiKey <an Elasticsearch API key with the cluster "
                "privilege manage_inference>",
            )
        )
    self_signed = tls is not None and tls.mode == "self-signed"
    if self_signed and is_elastic_cloud(elastic.elasticsearch_url):
        # The inference API calls the model with the JVM's default trust store (its HTTP client
        # has TLS settings for the elastic service only: xpack.inference.elastic.http.ssl.*), and
        # Elastic Cloud lets no one add a CA to it.
        found.append(
            Problem(
                f"{PROJECT}:tls.mode",
                "self-signed cannot work with an inference endpoint on Elastic Cloud "
                f"(elastic.elasticsearchUrl {elastic.elasticsearch_url}): Elasticsearch, not "
                "Kibana, calls the model, trusting only the public CAs of its JVM, and Elastic "
                "Cloud offers no way to add one; use letsencrypt (with tls.domain and tls.email) "
                "or provided (a certificate from a public CA)",
            )
        )
    return found


# ------------------------------------------------------------------------------------------------
# Warnings: allowed, but worth saying


def vllm_advisory_warnings(model: ModelConfig) -> list[str]:
    """The known vulnerabilities of the configured vLLM release."""
    version = model.vllm_version
    advisories = [] if version is None else catalogue.advisories_for(version)
    if not advisories:
        return []
    listed = "; ".join(f"{a.name} ({a.summary})" for a in advisories)
    return [
        f"{PROJECT}:model.image {model.image} carries known vulnerabilities: {listed}. "
        f"Pin {catalogue.DEFAULT_VLLM_IMAGE} or later unless you must match a tested setup"
    ]


def unchecked_model_warnings(model: ModelConfig) -> list[str]:
    """What the catalogue could not check for a model it does not know."""
    found: list[str] = []
    if catalogue.weights_gb(model.id) is None:
        found.append(
            f"{PROJECT}:model.id {model.id} is not in the catalogue, so whether its weights fit "
            "the GPUs (and the boot disk, where no local SSD holds them) was not checked: a model "
            "too large for them fails when vLLM starts, after the VM is up"
        )
    length = model.max_model_len
    if (
        length is not None
        and model.id not in catalogue.KNOWN_CONTEXT_TOKENS
        and not _overrides_model_config(model)
    ):
        found.append(
            f"{PROJECT}:model.maxModelLen {length} was not checked against {model.id}'s context, "
            "which the catalogue does not know: vLLM will not start with one above the context "
            "it derives from the model's config"
        )
    return found


def unused_secret_warnings(
    model: ModelConfig | None,
    elastic: ElasticConfig | None,
    hugging_face_token: str | None,
    kibana_api_key: str | None,
    elasticsearch_api_key: str | None = None,
) -> list[str]:
    """Secrets set but not read by this configuration."""
    found: list[str] = []
    if model is not None and model.source == "gcs" and hugging_face_token is not None:
        found.append(f"{PROJECT}:huggingFaceToken is unused: weights come from {model.gcs_uri}")
    if (elastic is None or elastic.kibana_url is None) and kibana_api_key is not None:
        found.append(
            f"{PROJECT}:kibanaApiKey is unused: elastic.kibanaUrl is not set (keep it until a "
            "connector an earlier `pulumi up` made is deleted: deleting it needs the key)"
        )
    if (elastic is None or elastic.elasticsearch_url is None) and elasticsearch_api_key:
        found.append(
            f"{PROJECT}:elasticsearchApiKey is unused: elastic.elasticsearchUrl is not set (keep "
            "it until an inference endpoint an earlier `pulumi up` made is deleted: deleting it "
            "needs the key)"
        )
    return found
