"""What the host runs: every file the GPU host receives, rendered from the configuration.

Each function here is pure: the same configuration (and the same runtime values: addresses, the
API key, mirror names) gives the same bytes, whichever way the files travel. The templates are
in scripts/; components/render.py owns all quoting. How the files get to the host is not this
module's business: over SSH in single-VM mode (components/vllm_server.py, tls_proxy.py), or
through an instance's metadata.

- `startup_script`: scripts/startup.sh, which GCE runs at every boot (host software, cache disk,
  GPU check; the readiness contract in components/host_paths.py), carrying `ops_agent_config`,
  the Ops Agent's configuration (docs/host-agent.md).
- the vLLM service: `container_spec` (the vLLM command line), `vllm_unit` (the systemd unit),
  `secrets_env` (its root-only env file).
- the Nginx site: `SiteSettings`, `nginx_site`.
- the remote steps' scripts: `host_ready_script`, `secrets_script`, `run_script`,
  `serving_script`, `proxy_script`, `letsencrypt_script`, and `file_bundle` (what
  proxy_script reads on stdin).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from components import catalogue, host_paths
from components.config import ModelConfig
from components.render import (
    Fragment,
    Value,
    nginx_comment,
    nginx_exact_regex,
    nginx_lines,
    render,
    systemd_command_line,
    systemd_lines,
)

# ------------------------------------------------------------------------------------------------
# The startup script

# The readiness check's image (`docker run --gpus all IMAGE nvidia-smi`): the container toolkit
# injects the host's nvidia-smi into any image, as NVIDIA's own sample workload shows, so a plain
# Ubuntu image does (CUDA tags are removed from Docker Hub at their end of life). On Docker Hub,
# so a Docker Hub remote repository can serve it to a private host.
GPU_CHECK_IMAGE = "ubuntu:24.04"
# The hosts the startup script hands the VM's access token to: Artifact Registry only.
_DOCKER_REGISTRY_HOST = re.compile(r"[a-z0-9-]+-docker\.pkg\.dev")
_APT_MIRROR_HOST = re.compile(r"[a-z0-9-]+-apt\.pkg\.dev")


@dataclass(frozen=True)
class AptMirror:
    """Artifact Registry remote repositories for the Ubuntu archive (components/mirror.py)."""

    host: str  # REGION-apt.pkg.dev
    sources: str  # deb822 sources text naming the repositories


@dataclass(frozen=True)
class OpsAgent:
    """The host half of observability.enabled: the Ops Agent, its scrape of vLLM labelled with
    the stack (components/observability.py selects the stack's series by it)."""

    stack_label: str  # StackConfig.labels["stack"]


def startup_script(
    machine: catalogue.MachineSpec,
    gpu_check_image: str = GPU_CHECK_IMAGE,
    docker_registry_host: str | None = None,
    apt_mirror: AptMirror | None = None,
    ops_agent: OpsAgent | None = None,
) -> str:
    """scripts/startup.sh for this machine (host properties and mirrors, never workload ones);
    with `ops_agent`, the Ops Agent and its configuration, without it no agent runs."""
    if docker_registry_host is not None and not _DOCKER_REGISTRY_HOST.fullmatch(
        docker_registry_host
    ):
        raise ValueError(f"{docker_registry_host!r} is not an Artifact Registry Docker host")
    if apt_mirror is not None and not _APT_MIRROR_HOST.fullmatch(apt_mirror.host):
        raise ValueError(f"{apt_mirror.host!r} is not an Artifact Registry apt host")
    return render(
        "startup.sh",
        {
            "GPU_COUNT": str(machine.gpu_count),
            "DRIVER_BRANCH": str(catalogue.MIN_DRIVER_FOR_CUDA13),
            "GPU_CHECK_IMAGE": gpu_check_image,
            "DOCKER_REGISTRY_HOST": docker_registry_host or "",
            "REGISTRY_LOGIN_PATH": host_paths.REGISTRY_LOGIN_PATH,
            "APT_SOURCES_MODE": "internet" if apt_mirror is None else "mirror",
            "APT_MIRROR_HOST": apt_mirror.host if apt_mirror is not None else "",
            # Base64: multi-line text travels as one plain word.
            "APT_MIRROR_SOURCES_B64": base64.b64encode(
                (apt_mirror.sources if apt_mirror is not None else "").encode()
            ).decode(),
            "STATE_DIR": host_paths.STATE_DIR,
            "READY_MARKER": host_paths.READY_MARKER,
            "STARTUP_FAILED_MARKER": host_paths.STARTUP_FAILED_MARKER,
            "REBOOTING_MARKER": host_paths.REBOOTING_MARKER,
            "PREPARED_IMAGE_MARKER": host_paths.PREPARED_IMAGE_MARKER,
            "STARTUP_LOG": host_paths.STARTUP_LOG,
            "CACHE_DIR": host_paths.CACHE_DIR,
            "OBSERVABILITY": "enabled" if ops_agent is not None else "disabled",
            "OPS_AGENT_CONFIG": host_paths.OPS_AGENT_CONFIG,
            "OPS_AGENT_CONFIG_B64": base64.b64encode(
                (ops_agent_config(ops_agent) if ops_agent is not None else "").encode()
            ).decode(),
        },
    )


# ------------------------------------------------------------------------------------------------
# The Ops Agent's configuration (docs/host-agent.md; schema: cloud.google.com/stackdriver/docs/
# solutions/agents/ops-agent/configuration). The agent merges it with its built-in one, which on a
# GPU VM already has the `hostmetrics` and `nvml` receivers (confgenerator/
# built-in-config-linux-gpu.yaml in GoogleCloudPlatform/ops-agent): GPU utilisation and memory
# need nothing here.

# vLLM's Prometheus metrics, on loopback only (Nginx never serves /metrics).
VLLM_METRICS_JOB = "vllm"
VLLM_METRICS_SCRAPE_INTERVAL = "30s"
VLLM_METRICS_TARGET = f"127.0.0.1:{host_paths.VLLM_LOOPBACK_PORT}"
# The label the scrape puts on every vLLM series: the stack's label value.
STACK_METRIC_LABEL = "vllm_gcp_stack"
_STACK_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
# The access log's fields, in scripts/nginx-site.conf's `log_format vllm_gcp` order.
# $uri is decoded, so a path may hold spaces (Nginx escapes a quote as \x22); a request passed
# to more than one upstream server logs each one's time, comma-separated.
NGINX_ACCESS_LOG_REGEX = (
    r"^(?<remote_addr>\S+) \[(?<time_local>[^\]]+)\] "
    r'"(?<method>\S+) (?<path>[^"]*) (?<protocol>[^" ]+)" '
    r"(?<status>\d{3}) (?<body_bytes_sent>\d+) (?<request_length>\d+) (?<request_time>[\d.]+) "
    r'(?<upstream_response_time>\S+(?:, \S+)*) "(?<user_agent>[^"]*)"$'
)
# Journal lines never shipped: any that looks like it carries a credential (vLLM releases before
# PR #52523 could print the key; nothing in the pinned release does, this is the second guard),
# and vLLM's own access-log line for each of the agent's scrapes of /metrics.
JOURNAL_EXCLUDED = (
    'jsonPayload.MESSAGE =~ "(?i)(authorization|bearer|api[_-]?key|hf_token)"',
    'jsonPayload._SYSTEMD_UNIT = "vllm.service" AND jsonPayload.MESSAGE =~ "GET /metrics "',
)
_OPS_AGENT_HEADER = (
    "# vllm-gcp: the Google Cloud Ops Agent's configuration (components/host_bundle.py,\n"
    "# ops_agent_config), written by the startup script; the agent merges it with its own.\n"
)


def ops_agent_config(agent: OpsAgent) -> str:
    """/etc/google-cloud-ops-agent/config.yaml: vLLM's metrics, Nginx's logs, the journal."""
    if not _STACK_LABEL.fullmatch(agent.stack_label):
        raise ValueError(f"{agent.stack_label!r} is not a GCE label value")
    target = {"targets": [VLLM_METRICS_TARGET], "labels": {STACK_METRIC_LABEL: agent.stack_label}}
    config: dict[str, Any] = {
        "metrics": {
            "receivers": {
                "vllm_gcp_vllm": {
                    "type": "prometheus",
                    "config": {
                        "scrape_configs": [
                            {
                                "job_name": VLLM_METRICS_JOB,
                                "scrape_interval": VLLM_METRICS_SCRAPE_INTERVAL,
                                "metrics_path": "/metrics",
                                "static_configs": [target],
                            }
                        ]
                    },
                }
            },
            "service": {"pipelines": {"vllm_gcp_vllm": {"receivers": ["vllm_gcp_vllm"]}}},
        },
        "logging": {
            "receivers": {
                "vllm_gcp_nginx_access": {"type": "files", "include_paths": [ACCESS_LOG]},
                "vllm_gcp_nginx_error": {"type": "nginx_error", "include_paths": [ERROR_LOG]},
                "vllm_gcp_journal": {"type": "systemd_journald"},
            },
            "processors": {
                "vllm_gcp_nginx_access_fields": {
                    "type": "parse_regex",
                    "regex": NGINX_ACCESS_LOG_REGEX,
                    "time_key": "time_local",
                    "time_format": "%d/%b/%Y:%H:%M:%S %z",
                },
                "vllm_gcp_journal_guard": {
                    "type": "exclude_logs",
                    "match_any": list(JOURNAL_EXCLUDED),
                },
            },
            "service": {
                "pipelines": {
                    # The built-in pipeline tails /var/log/syslog, which rsyslog fills from the
                    # journal: the journal pipeline below replaces it, with its guard.
                    "default_pipeline": {"receivers": []},
                    "vllm_gcp_nginx": {
                        "receivers": ["vllm_gcp_nginx_access"],
                        "processors": ["vllm_gcp_nginx_access_fields"],
                    },
                    "vllm_gcp_nginx_error": {"receivers": ["vllm_gcp_nginx_error"]},
                    "vllm_gcp_journal": {
                        "receivers": ["vllm_gcp_journal"],
                        "processors": ["vllm_gcp_journal_guard"],
                    },
                }
            },
        },
    }
    return _OPS_AGENT_HEADER + yaml.safe_dump(config, sort_keys=False, width=1000)


# The journal lines kept: vLLM's unit, the host scripts' own tags, and the kernel (NVIDIA Xid
# errors are kernel lines).

SERVICE_NAME = "vllm.service"
CONTAINER_NAME = "vllm"
CONTAINER_PORT = 8000
HF_CACHE_DIR = f"{host_paths.CACHE_DIR}/huggingface"
VLLM_CACHE_DIR = f"{host_paths.CACHE_DIR}/vllm"
# Markers that this exact configuration has served once: their presence switches Hugging Face to
# offline mode. They live in the cache, so they vanish with it (a wiped local SSD).
OFFLINE_MARKER_DIR = f"{host_paths.CACHE_DIR}/vllm-gcp"
CACHE_DIRS = (HF_CACHE_DIR, VLLM_CACHE_DIR, OFFLINE_MARKER_DIR)
# Weights copied from Cloud Storage for images that cannot stream them.
GCS_WEIGHTS_DIR = f"{host_paths.CACHE_DIR}/gcs-weights"
CONTAINER_GCS_WEIGHTS = "/model"
# A copy of the weights from Cloud Storage before a start, within the unit's TimeoutStartSec.
WEIGHTS_COPY_SECONDS = 2100
# The unit's TimeoutStartSec=40min (scripts/vllm.service): the start gate, a pull, a copy of the
# weights.
START_TIMEOUT_SECONDS = 2400

# Drain on stop (scripts/drain_vllm.sh, docs/host-agent.md). The answers in flight get up to
# DRAIN_LIMIT_SECONDS: Kibana waits 300 s for one (xpack.actions.responseTimeout, as
# kibanaSettings sets it), so none it still waits for is cut off. The drain lasts at least
# DRAIN_SETTLE_SECONDS: the load balancer's health check (components/load_balancer.py: every
# 10 s, 5 s timeout, unhealthy after 3 failures) sees the failing health route within 35 s and
# sends requests until then.
DRAIN_LIMIT_SECONDS = 300
DRAIN_SETTLE_SECONDS = 35
DRAIN_POLL_SECONDS = 2
# vLLM's own shutdown after SIGTERM, before Docker kills it.
DOCKER_STOP_SECONDS = 60
# The unit's TimeoutStopSec: the drain (its limit, a last poll) and docker stop, with a margin.
# A VM that GCE stops or deletes gets about 90 s to shut down (compute/docs/instances/
# graceful-shutdown-overview, which managed groups cannot use): there the drain is cut short,
# and a fleet's answers in flight have already finished in the load balancer's connection
# draining (components/load_balancer.py).
STOP_TIMEOUT_SECONDS = DRAIN_LIMIT_SECONDS + DOCKER_STOP_SECONDS + 30
VLLM_METRICS_URL = f"http://127.0.0.1:{host_paths.VLLM_LOOPBACK_PORT}/metrics"


def drain_command(behind_load_balancer: bool) -> list[str]:
    """The unit's drain (its first ExecStop): scripts/drain_vllm.sh with its limits. Only a
    replica waits for a health check to see it go; the single VM has none to wait for, so a
    restart without answers in flight goes at once."""
    return [
        host_paths.DRAIN_HELPER_PATH,
        host_paths.DRAIN_MARKER,
        VLLM_METRICS_URL,
        str(DRAIN_SETTLE_SECONDS if behind_load_balancer else 0),
        str(DRAIN_LIMIT_SECONDS),
        str(DRAIN_POLL_SECONDS),
    ]


# 0.9.x images start the OpenAI server module; from 0.10 the image's entrypoint is `vllm serve`.
FIRST_VLLM_SERVE_RELEASE = (0, 10, 0)
# `--disable-log-requests` was removed in v0.12.0, where request logging is off by default.
DISABLE_LOG_REQUESTS_REMOVED = (0, 12, 0)
# From v0.11.1 the image's Run:ai Model Streamer reads gs:// itself (--load-format runai_streamer).
FIRST_GCS_STREAMING_RELEASE = (0, 11, 1)


def _at_least(version: tuple[int, int, int] | None, release: tuple[int, int, int]) -> bool:
    """An image whose release is unknown (a digest, a nightly) is taken to be current."""
    return version is None or version >= release


@dataclass(frozen=True)
class ContainerSpec:
    """How the container runs: everything the unit needs, derived from the model settings."""

    entrypoint: str
    arguments: tuple[str, ...]  # after the image: the rest of the vLLM command line
    environment: tuple[str, ...]  # docker --env values
    volumes: tuple[str, ...]  # docker --volume values
    gcs_copy: tuple[str, str] | None  # (gs:// source, host directory) copied before each start
    offline_marker: str | None  # written once serving; None when always offline


def _family_flags(model: ModelConfig, streaming: bool) -> list[str]:
    """The family's format flags; streaming replaces its --load-format (only one loader runs)."""
    family = model.family
    flags = list(family.vllm_flags) if family is not None else []
    if streaming and "--load-format" in flags:
        index = flags.index("--load-format")
        del flags[index : index + 2]
    return flags


def settings_fingerprint(image: str, arguments: Sequence[str]) -> str:
    """Names one exact run configuration (image and vLLM arguments), for the offline marker."""
    digest = hashlib.sha256(json.dumps([image, *arguments]).encode()).hexdigest()
    return digest[:16]


def _model_path(model: ModelConfig, streaming: bool) -> tuple[str, tuple[str, str] | None]:
    """Where vLLM loads the weights from, and the copy from Cloud Storage that puts them there."""
    if model.source == "huggingface":
        return model.id, None
    if model.gcs_uri is None:
        raise ValueError("model.source gcs needs model.gcsUri (the configuration requires it)")
    if streaming:
        return model.gcs_uri, None
    local = f"{GCS_WEIGHTS_DIR}/{hashlib.sha256(model.gcs_uri.encode()).hexdigest()[:12]}"
    return CONTAINER_GCS_WEIGHTS, (model.gcs_uri, local)


def container_spec(model: ModelConfig, tensor_parallel_size: int, image: str) -> ContainerSpec:
    """The container and the full vLLM command line for this model on this image."""
    version = model.vllm_version
    streaming = model.source == "gcs" and _at_least(version, FIRST_GCS_STREAMING_RELEASE)
    model_path, gcs_copy = _model_path(model, streaming)
    volumes = [f"{HF_CACHE_DIR}:/root/.cache/huggingface", f"{VLLM_CACHE_DIR}:/root/.cache/vllm"]
    if gcs_copy is not None:
        volumes.append(f"{gcs_copy[1]}:{CONTAINER_GCS_WEIGHTS}:ro")

    if _at_least(version, FIRST_VLLM_SERVE_RELEASE):
        entrypoint, command = "vllm", ["serve", model_path]
    else:
        entrypoint, command = "python3", ["-m", "vllm.entrypoints.openai.api_server"]
        command += ["--model", model_path]

    arguments = [
        *command,
        # Inside the container; the publish on 127.0.0.1 is what keeps it off the network.
        "--host",
        "0.0.0.0",  # noqa: S104
        "--port",
        str(CONTAINER_PORT),
        "--served-model-name",
        model.served_model_name,
    ]
    if model.revision is not None and model.source == "huggingface":
        arguments += ["--revision", model.revision]
    arguments += ["--tensor-parallel-size", str(tensor_parallel_size)]
    arguments += ["--gpu-memory-utilization", f"{model.gpu_memory_utilization:g}"]
    if model.max_model_len is not None:
        arguments += ["--max-model-len", str(model.max_model_len)]
    arguments += _family_flags(model, streaming)
    if streaming:
        arguments += ["--load-format", "runai_streamer"]
    parser = model.effective_tool_call_parser
    if parser is not None:
        arguments += ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    if not _at_least(version, DISABLE_LOG_REQUESTS_REMOVED):
        arguments.append("--disable-log-requests")  # keep prompts out of the journal
    arguments += model.extra_args

    if model.source == "gcs":
        # Weights come from the bucket: Hugging Face is never contacted.
        environment = ["HF_HUB_OFFLINE=1"]
        offline_marker = None
    else:
        # Passed through from the unit's environment: set (to 1) only once the marker exists.
        environment = ["HF_HUB_OFFLINE"]
        offline_marker = f"{OFFLINE_MARKER_DIR}/served-{settings_fingerprint(image, arguments)}.env"
    return ContainerSpec(
        entrypoint=entrypoint,
        arguments=tuple(arguments),
        environment=tuple(environment),
        volumes=tuple(volumes),
        gcs_copy=gcs_copy,
        offline_marker=offline_marker,
    )


def docker_run_command(spec: ContainerSpec, image: str) -> list[str]:
    """The full `docker run` argv of the unit's ExecStart."""
    command = [
        "/usr/bin/docker",
        "run",
        "--rm",
        "--name",
        CONTAINER_NAME,
        "--gpus",
        "all",
        "--ipc=host",  # shared memory for tensor parallelism
        "--publish",
        f"127.0.0.1:{host_paths.VLLM_LOOPBACK_PORT}:{CONTAINER_PORT}",
        "--env-file",
        host_paths.SECRETS_ENV_FILE,
    ]
    for value in spec.environment:
        command += ["--env", value]
    for volume in spec.volumes:
        command += ["--volume", volume]
    # The unit's output goes to the journal; a second copy in Docker's json-file log would grow
    # without bound.
    command += ["--log-driver", "none", "--entrypoint", spec.entrypoint, image]
    return command + list(spec.arguments)


def weights_copy_command(source: str, target: str) -> list[str]:
    """The unit's copy of the weights from Cloud Storage, under its own time limit: a copy that
    hangs ends with a journal line naming it (which the run step prints) instead of using up the
    unit's whole start timeout silently."""
    # gcloud comes as a snap on Google's Ubuntu images, outside systemd's default PATH.
    script = (
        f"timeout --kill-after=30 {WEIGHTS_COPY_SECONDS} "
        'env PATH=/snap/bin:/usr/local/bin:/usr/bin:/bin gcloud storage rsync --recursive "$1" "$2"'
        ' || { status=$?; if [ "$status" -eq 124 ]; then'
        f' echo "vllm-gcp: timed out after {WEIGHTS_COPY_SECONDS} s: copying the weights from $1'
        ' to $2" >&2; fi; exit "$status"; }'
    )
    return ["/bin/sh", "-c", script, "weights-copy", source, target]


def vllm_unit(
    spec: ContainerSpec,
    image: str,
    registry_host: str | None = None,
    *,
    behind_load_balancer: bool = False,
) -> str:
    """The systemd unit that runs the container (scripts/vllm.service). With `registry_host`,
    a pull of a missing image logs Docker in there first (tokens last an hour); a fleet's
    replica (`behind_load_balancer`) drains until its health check has failed."""
    weights_copy = Fragment("")
    if spec.gcs_copy is not None:
        source, target = spec.gcs_copy
        weights_copy = systemd_lines(
            [
                ("ExecStartPre", ["/usr/bin/install", "-d", "-m", "0755", target]),
                ("ExecStartPre", weights_copy_command(source, target)),
            ]
        )
    offline = Fragment("")
    if spec.offline_marker is not None:
        offline = systemd_lines([("EnvironmentFile", [spec.offline_marker])], prefix="-")
    return render(
        "vllm.service",
        {
            "CONTAINER_NAME": CONTAINER_NAME,
            "READY_MARKER": host_paths.READY_MARKER,
            "STARTUP_FAILED_MARKER": host_paths.STARTUP_FAILED_MARKER,
            "STARTUP_LOG": host_paths.STARTUP_LOG,
            "IMAGE": image,
            "REGISTRY_HOST": registry_host or "",
            "REGISTRY_LOGIN_PATH": host_paths.REGISTRY_LOGIN_PATH,
            "OFFLINE_ENVIRONMENT": offline,
            "WEIGHTS_COPY": weights_copy,
            "DOCKER_RUN": systemd_command_line(docker_run_command(spec, image), own_line=[image]),
            "STOP_TIMEOUT_SECONDS": str(STOP_TIMEOUT_SECONDS),
            "DRAIN_COMMAND": drain_command(behind_load_balancer),
            "DRAIN_MARKER": host_paths.DRAIN_MARKER,
            "DOCKER_STOP_SECONDS": str(DOCKER_STOP_SECONDS),
        },
    )


def secrets_env(api_key: str, hugging_face_token: str | None) -> str:
    """The root-only env file's content: vLLM reads VLLM_API_KEY, huggingface_hub HF_TOKEN."""
    lines = [f"VLLM_API_KEY={api_key}"]
    if hugging_face_token:
        lines.append(f"HF_TOKEN={hugging_face_token}")
    return "\n".join(lines) + "\n"


# The vLLM steps' scripts ------------------------------------------------------------------------


def host_ready_script(timeout_seconds: int) -> str:
    """Wait for the startup script's readiness marker (scripts/wait_host_ready.sh)."""
    return render(
        "wait_host_ready.sh",
        {
            "READY_MARKER": host_paths.READY_MARKER,
            "STARTUP_FAILED_MARKER": host_paths.STARTUP_FAILED_MARKER,
            "REBOOTING_MARKER": host_paths.REBOOTING_MARKER,
            "STARTUP_LOG": host_paths.STARTUP_LOG,
            "TIMEOUT_SECONDS": str(timeout_seconds),
        },
    )


def secrets_script() -> str:
    """Write the env file read from stdin, root-only (scripts/write_secrets.sh)."""
    return render(
        "write_secrets.sh",
        {"CONFIG_DIR": host_paths.CONFIG_DIR, "SECRETS_ENV_FILE": host_paths.SECRETS_ENV_FILE},
    )


def run_script(image: str, registry_host: str | None = None) -> str:
    """Pull `image` (logging in to `registry_host` first where given), install the unit read
    from stdin, restart it (scripts/install_vllm.sh)."""
    return render(
        "install_vllm.sh",
        {
            "IMAGE": image,
            "SERVICE_NAME": SERVICE_NAME,
            "CACHE_DIRS": CACHE_DIRS,
            "SECRETS_ENV_FILE": host_paths.SECRETS_ENV_FILE,
            "REGISTRY_HOST": registry_host or "",
            "REGISTRY_LOGIN_PATH": host_paths.REGISTRY_LOGIN_PATH,
            "DRAIN_HELPER_PATH": host_paths.DRAIN_HELPER_PATH,
            "PREPARED_IMAGE_MARKER": host_paths.PREPARED_IMAGE_MARKER,
            # A restart stops (drain included) and starts; systemd's own limits end first.
            "RESTART_SECONDS": str(STOP_TIMEOUT_SECONDS + START_TIMEOUT_SECONDS + 60),
        },
    )


def serving_script(served_model_name: str, offline_marker: str | None, timeout_seconds: int) -> str:
    """Wait until vLLM lists the served model, then mark its weights cached
    (scripts/wait_serving.sh)."""
    return render(
        "wait_serving.sh",
        {
            "SERVICE_NAME": SERVICE_NAME,
            "MODELS_URL": f"http://127.0.0.1:{host_paths.VLLM_LOOPBACK_PORT}/v1/models",
            "SERVED_MODEL_NAME": served_model_name,
            "SECRETS_ENV_FILE": host_paths.SECRETS_ENV_FILE,
            "OFFLINE_MARKER": offline_marker or "",
            "TIMEOUT_SECONDS": str(timeout_seconds),
        },
    )


# ------------------------------------------------------------------------------------------------
# A fleet replica's boot

# The instance metadata attributes a fleet replica's boot reads (scripts/fleet_boot.sh), to the
# files of this module they hold.
FLEET_ATTRIBUTES = (
    "vllm-gcp-host-setup",  # startup_script
    "vllm-gcp-step-secrets",  # secrets_script
    "vllm-gcp-unit",  # vllm_unit
    "vllm-gcp-step-run",  # run_script
    "vllm-gcp-step-proxy",  # proxy_script
    "vllm-gcp-step-serving",  # serving_script
)


@dataclass(frozen=True)
class FleetBootLimits:
    """Each boot stage's limit in seconds: the single VM's step limits."""

    host_setup: int
    secrets: int
    run: int
    proxy: int
    serving: int


def fleet_boot_script(
    env_secret_version: str, proxy_secret_version: str, limits: FleetBootLimits
) -> str:
    """scripts/fleet_boot.sh: the replica's boot, reading the files above from its metadata and
    the two secret versions (projects/P/secrets/S/versions/N) from Secret Manager."""
    return render(
        "fleet_boot.sh",
        {
            "READY_MARKER": host_paths.READY_MARKER,
            "REBOOTING_MARKER": host_paths.REBOOTING_MARKER,
            "ENV_SECRET_VERSION": env_secret_version,
            "PROXY_SECRET_VERSION": proxy_secret_version,
            "HOST_SETUP_SECONDS": str(limits.host_setup),
            "SECRETS_SECONDS": str(limits.secrets),
            "RUN_SECONDS": str(limits.run),
            "PROXY_SECONDS": str(limits.proxy),
            "SERVING_SECONDS": str(limits.serving),
        },
    )


# ------------------------------------------------------------------------------------------------
# The Nginx site

# Where the proxy's files go on the host (Debian/Ubuntu Nginx layout).
SITE_PATH = "/etc/nginx/sites-available/vllm-gcp.conf"
SITE_ENABLED_PATH = "/etc/nginx/sites-enabled/vllm-gcp.conf"
DEFAULT_SITE_ENABLED_PATH = "/etc/nginx/sites-enabled/default"  # also claims port 80
ACME_BOOTSTRAP_SITE_PATH = "/etc/nginx/sites-enabled/vllm-gcp-acme.conf"
ACCESS_LOG = "/var/log/nginx/vllm-gcp-access.log"
# The distribution's error log: the site's servers write to it at a level of their own.
ERROR_LOG = "/var/log/nginx/error.log"
# The distribution's main configuration: the proxy step sizes its workers (the site, inside
# `http {}`, cannot).
NGINX_CONF_PATH = "/etc/nginx/nginx.conf"
ACME_WEBROOT = "/var/www/vllm-gcp-acme"
CERTIFICATE_PATH = f"{host_paths.TLS_DIR}/server.crt"
CERTIFICATE_KEY_PATH = f"{host_paths.TLS_DIR}/server.key"
LETSENCRYPT_LIVE_DIR = "/etc/letsencrypt/live"

# The proxy's limits (README: "The TLS proxy").
# Past anything Kibana waits: 120 s for the OpenAI connector's non-streamed calls, 180 s for the
# Security AI Assistant's, xpack.actions.responseTimeout (300 s as kibanaSettings sets it).
PROXY_TIMEOUT = "900s"
CLIENT_MAX_BODY_SIZE = "32m"  # >= 16 MB prompts
FAILED_AUTH_RATE = "30r/m"  # sustained wrong-token attempts per client address
FAILED_AUTH_BURST = 10  # wrong-token attempts answered 401 before 429 starts
# Slow clients (README: "What the proxy guarantees"). Nginx's default for both is 60 s; a client
# on any working network sends a request header in well under a second.
CLIENT_HEADER_TIMEOUT = "10s"  # the whole header, from the connection's start (TLS included)
CLIENT_BODY_TIMEOUT = "10s"  # between two reads of a body
# Requests in progress per client address: above what vLLM runs at once by default
# (max_num_seqs), so one address never waits on the proxy rather than on vLLM.
CONNECTIONS_PER_ADDRESS = 256
# Each worker's connections (Ubuntu's nginx.conf: 768), and its open-file limit: one file per
# connection (a client's or one to vLLM) and as many again. Idle keep-alive connections are
# reclaimed when slots run out; stalled headers are not, until client_header_timeout.
WORKER_CONNECTIONS = 8192
WORKER_RLIMIT_NOFILE = 2 * WORKER_CONNECTIONS

MAX_API_KEY_LENGTH = 200  # the longest token the site takes (the stack makes 48 characters)
# RFC 6750 b64token: a bearer token is nothing else.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_SERVER_NAME = re.compile(r"[A-Za-z0-9.-]+")
_LISTEN = re.compile(r"([0-9.]+:)?[0-9]{1,5}")
_SIZE = re.compile(r"[0-9]+[km]?")
_SECONDS = re.compile(r"[1-9][0-9]*s")


@dataclass(frozen=True)
class LoadBalancerSite:
    """What a fleet replica's site adds behind the load balancer (components/fleet.py)."""

    # Connections from these carry the client's address in X-Forwarded-For: the proxy-only
    # subnet, and the forwarding rule's address, which may be the header's last entry.
    trusted_proxies: Sequence[str]
    # The only sources a replica takes connections from, and the health route answers: the
    # proxy-only subnet and Google's health checkers.
    health_check_sources: Sequence[str]


@dataclass(frozen=True)
class SiteSettings:
    """Everything the Nginx site depends on; the defaults are the host's values.

    The real-Nginx tests render the site from these settings with paths and ports of their own,
    so they check the very text the host gets.
    """

    api_key: str
    server_name: str
    certificate_path: str = CERTIFICATE_PATH
    certificate_key_path: str = CERTIFICATE_KEY_PATH
    api_cidrs: Sequence[str] = ("0.0.0.0/0",)
    https_listen: str = "443"
    http_listen: str = "80"
    upstream: str = f"127.0.0.1:{host_paths.VLLM_LOOPBACK_PORT}"
    access_log: str = ACCESS_LOG
    error_log: str = ERROR_LOG
    acme_webroot: str = ACME_WEBROOT
    proxy_timeout: str = PROXY_TIMEOUT
    client_max_body_size: str = CLIENT_MAX_BODY_SIZE
    failed_auth_rate: str = FAILED_AUTH_RATE
    failed_auth_burst: int = FAILED_AUTH_BURST
    client_header_timeout: str = CLIENT_HEADER_TIMEOUT
    client_body_timeout: str = CLIENT_BODY_TIMEOUT
    connections_per_address: int = CONNECTIONS_PER_ADDRESS
    load_balancer: LoadBalancerSite | None = None  # a fleet replica's; None on the single VM
    drain_marker: str = host_paths.DRAIN_MARKER  # present while vLLM drains before a stop


def access_rules(api_cidrs: Sequence[str]) -> Fragment:
    """`allow` lines for each range then `deny all`, or nothing where the API is open to all."""
    networks = [ipaddress.ip_network(cidr) for cidr in api_cidrs]
    if any(network.prefixlen == 0 for network in networks):
        return nginx_comment("access.apiCidrs includes 0.0.0.0/0: every source may connect.")
    return nginx_lines([*(("allow", str(n)) for n in networks), ("deny", "all")])


def nginx_site(settings: SiteSettings) -> str:
    """The Nginx site for these settings (scripts/nginx-site.conf rendered)."""
    if not _BEARER_TOKEN.fullmatch(settings.api_key) or len(settings.api_key) > MAX_API_KEY_LENGTH:
        raise ValueError(
            f"the API key must be a bearer token of at most {MAX_API_KEY_LENGTH} characters "
            "(letters, digits, -._~+/ and =)"
        )
    if not _SERVER_NAME.fullmatch(settings.server_name):
        raise ValueError(f"{settings.server_name!r} is not a host name or IPv4 address")
    for listen in (settings.https_listen, settings.http_listen, settings.upstream):
        if not _LISTEN.fullmatch(listen):
            raise ValueError(f"{listen!r} is not a port or address:port")
    if not _SIZE.fullmatch(settings.client_max_body_size):
        raise ValueError(f"{settings.client_max_body_size!r} is not an Nginx size")
    for timeout in (settings.client_header_timeout, settings.client_body_timeout):
        if not _SECONDS.fullmatch(timeout):
            raise ValueError(f"{timeout!r} is not a whole number of seconds such as 10s")
    if settings.connections_per_address < 1:
        raise ValueError("connections_per_address must be at least 1")
    paths = (
        settings.certificate_path,
        settings.certificate_key_path,
        settings.access_log,
        settings.error_log,
        settings.acme_webroot,
        settings.drain_marker,
    )
    for path in paths:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not an absolute path")
    behind = settings.load_balancer
    fleet_values: dict[str, Value] = {}
    if behind is not None:
        trusted = [str(ipaddress.ip_network(source)) for source in behind.trusted_proxies]
        sources = [str(ipaddress.ip_network(source)) for source in behind.health_check_sources]
        fleet_values = {
            "HEALTH_PATH": host_paths.HEALTH_PATH,
            "REAL_IP_FROM": nginx_lines([("set_real_ip_from", cidr) for cidr in trusted]),
            "LOAD_BALANCER_SOURCES": nginx_lines([(cidr, "1") for cidr in sources]),
            "HEALTH_CHECK_ACCESS": nginx_lines(
                [*(("allow", cidr) for cidr in sources), ("deny", "all")], indent=" " * 8
            ),
        }
    return render(
        "nginx-site.conf",
        {
            **fleet_values,
            "BEARER_CREDENTIALS": nginx_exact_regex(f"Bearer {settings.api_key}"),
            "SERVER_NAME": settings.server_name,
            "CERTIFICATE": settings.certificate_path,
            "CERTIFICATE_KEY": settings.certificate_key_path,
            "ACCESS_RULES": access_rules(settings.api_cidrs),
            "HTTPS_LISTEN": settings.https_listen,
            "HTTP_LISTEN": settings.http_listen,
            "UPSTREAM": settings.upstream,
            "ACCESS_LOG": settings.access_log,
            "ERROR_LOG": settings.error_log,
            "ACME_WEBROOT": settings.acme_webroot,
            "PROXY_TIMEOUT": settings.proxy_timeout,
            "CLIENT_MAX_BODY_SIZE": settings.client_max_body_size,
            "FAILED_AUTH_RATE": f"rate={settings.failed_auth_rate}",
            "FAILED_AUTH_BURST": f"burst={settings.failed_auth_burst}",
            "CLIENT_HEADER_TIMEOUT": settings.client_header_timeout,
            "CLIENT_BODY_TIMEOUT": settings.client_body_timeout,
            "CONNECTIONS_PER_ADDRESS": str(settings.connections_per_address),
            "DRAIN_MARKER": settings.drain_marker,
        },
        sections={"load_balancer": behind is not None},
    )


# The proxy steps' scripts -----------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyPaths:
    """Where proxy_script installs the files it receives, and the sites it manages."""

    site: str = SITE_PATH
    site_enabled: str = SITE_ENABLED_PATH
    default_site_enabled: str = DEFAULT_SITE_ENABLED_PATH
    certificate: str = CERTIFICATE_PATH
    certificate_key: str = CERTIFICATE_KEY_PATH
    acme_webroot: str = ACME_WEBROOT
    nginx_conf: str = NGINX_CONF_PATH


HOST_PROXY_PATHS = ProxyPaths()


def proxy_script(paths: ProxyPaths = HOST_PROXY_PATHS) -> str:
    """Install the site (and certificate and key) read from stdin, check, reload
    (scripts/configure_proxy.sh, run as root)."""
    return render(
        "configure_proxy.sh",
        {
            "SITE_PATH": paths.site,
            "SITE_ENABLED_PATH": paths.site_enabled,
            "DEFAULT_SITE_ENABLED_PATH": paths.default_site_enabled,
            "CERTIFICATE_PATH": paths.certificate,
            "CERTIFICATE_KEY_PATH": paths.certificate_key,
            "ACME_WEBROOT": paths.acme_webroot,
            "NGINX_CONF": paths.nginx_conf,
            "WORKER_CONNECTIONS": str(WORKER_CONNECTIONS),
            "WORKER_RLIMIT_NOFILE": str(WORKER_RLIMIT_NOFILE),
        },
    )


def letsencrypt_script(domain: str, email: str, address: str) -> str:
    """Obtain or keep the Let's Encrypt certificate for the domain (scripts/letsencrypt.sh, run
    as root)."""
    return render(
        "letsencrypt.sh",
        {
            "DOMAIN": domain,
            "EMAIL": email,
            "ADDRESS": address,
            "ACME_WEBROOT": ACME_WEBROOT,
            "BOOTSTRAP_SITE_PATH": ACME_BOOTSTRAP_SITE_PATH,
        },
    )


def file_bundle(files: Mapping[str, str]) -> str:
    """proxy_script's stdin: one `<name> <base64 of the content>` line per file."""
    return "".join(
        f"{name} {base64.b64encode(content.encode()).decode()}\n" for name, content in files.items()
    )
