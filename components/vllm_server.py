"""The vLLM server on the GPU host: four remote steps over SSH that configure the workload in place.

0. first contact (only through a jump host): dial afresh until the host accepts the stack's key
   (components/remote_access.py `first_contact`).
1. host ready: wait for the startup script's readiness marker (fail fast with its log).
2. secrets: the API key (and Hugging Face token) into a root-only env file, on stdin.
3. run: pull the image, install the systemd unit that runs the container, restart it.
4. serving: wait until `/v1/models` on loopback lists the served model.

A model, flag or image change re-runs steps 3 and 4 only; a key change re-runs 2, 3 and 4. The
VM is never touched. Each step runs under a host-side limit a minute under its timeout
(remote_access.host_step), and each network or long operation in it under one of its own.
Everything rendered here is a pure function of the configuration, so a second plan of the same
configuration is identical.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_random as random
from pulumi_command import local, remote

from components import host_paths
from components.config import ModelConfig
from components.remote_access import first_contact, host_step
from components.templates import read, render

SERVICE_NAME = "vllm.service"
CONTAINER_NAME = "vllm"
CONTAINER_PORT = 8000
HF_CACHE_DIR = f"{host_paths.CACHE_DIR}/huggingface"
VLLM_CACHE_DIR = f"{host_paths.CACHE_DIR}/vllm"
# Markers that this exact configuration has served once: their presence switches Hugging Face to
# offline mode. They live in the cache, so they vanish with it (a wiped local SSD).
OFFLINE_MARKER_DIR = f"{host_paths.CACHE_DIR}/vllm-gcp"
# Weights copied from Cloud Storage for images that cannot stream them.
GCS_WEIGHTS_DIR = f"{host_paths.CACHE_DIR}/gcs-weights"
CONTAINER_GCS_WEIGHTS = "/model"
# scripts/registry_login.sh, installed by the run step where images come through Artifact Registry.
REGISTRY_LOGIN_PATH = "/usr/local/libexec/vllm-gcp/registry-login"

# 0.9.x images start the OpenAI server module; from 0.10 the image's entrypoint is `vllm serve`.
FIRST_VLLM_SERVE_RELEASE = (0, 10, 0)
# `--disable-log-requests` was removed in v0.12.0, where request logging is off by default.
DISABLE_LOG_REQUESTS_REMOVED = (0, 12, 0)
# From v0.11.1 the image's Run:ai Model Streamer reads gs:// itself (--load-format runai_streamer).
FIRST_GCS_STREAMING_RELEASE = (0, 11, 1)

HOST_READY_TIMEOUT_MINUTES = 30
SECRETS_TIMEOUT_MINUTES = 5  # writes one file on a host already reachable
RUN_TIMEOUT_MINUTES = 45  # a first pull of the ~12 GB image, or a copy of the weights from GCS
SERVING_TIMEOUT_MINUTES = 65  # a first start downloads tens of GB of weights
# A copy of the weights from Cloud Storage before a start, within the unit's TimeoutStartSec.
WEIGHTS_COPY_SECONDS = 2100

_SYSTEMD_BARE = re.compile(r"^[A-Za-z0-9_./:=,@+-]+$")
_REGISTRY_HOST = re.compile(r"^[a-z0-9.-]+$")


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


def _streams_from_gcs(model: ModelConfig) -> bool:
    return model.source == "gcs" and _at_least(model.vllm_version, FIRST_GCS_STREAMING_RELEASE)


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


def container_spec(model: ModelConfig, tensor_parallel_size: int, image: str) -> ContainerSpec:
    version = model.vllm_version
    streaming = _streams_from_gcs(model)
    volumes = [
        f"{HF_CACHE_DIR}:/root/.cache/huggingface",
        f"{VLLM_CACHE_DIR}:/root/.cache/vllm",
    ]
    gcs_copy: tuple[str, str] | None = None
    if model.source == "gcs":
        assert model.gcs_uri is not None, "config validation requires gcsUri for source gcs"
        if streaming:
            model_path = model.gcs_uri
        else:
            local = f"{GCS_WEIGHTS_DIR}/{hashlib.sha256(model.gcs_uri.encode()).hexdigest()[:12]}"
            gcs_copy = (model.gcs_uri, local)
            volumes.append(f"{local}:{CONTAINER_GCS_WEIGHTS}:ro")
            model_path = CONTAINER_GCS_WEIGHTS
    else:
        model_path = model.id

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
        fingerprint = settings_fingerprint(image, arguments)
        offline_marker = f"{OFFLINE_MARKER_DIR}/served-{fingerprint}.env"
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


def systemd_quote(argument: str) -> str:
    """One argument as systemd's command-line parser reads it back (systemd.service, "COMMAND
    LINES"): specifiers need %%, variable expansion $$, and quotes C-style escapes."""
    escaped = argument.replace("%", "%%").replace("$", "$$")
    if _SYSTEMD_BARE.match(argument):
        return escaped
    escaped = escaped.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def systemd_command_line(argv: Sequence[str], own_line: Sequence[str] = ()) -> str:
    """argv as one ExecStart value: an option and its values per continued line, and a new line
    at each of `own_line` (the image)."""
    lines: list[list[str]] = []
    for argument in argv:
        if not lines or argument.startswith("-") or argument in own_line:
            lines.append([])
        lines[-1].append(systemd_quote(argument))
    return " \\\n    ".join(" ".join(line) for line in lines)


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


def render_unit(spec: ContainerSpec, image: str, registry_host: str | None = None) -> str:
    login = ""
    if registry_host is not None:
        # Tokens last an hour: log in again before each pull. A shell word inside the unit's
        # pull command, so only a plain host name is accepted.
        if not _REGISTRY_HOST.match(registry_host):
            raise ValueError(f"not a registry host name: {registry_host!r}")
        login = f"{REGISTRY_LOGIN_PATH} {registry_host}; "
    pre_start = ""
    if spec.gcs_copy is not None:
        source, target = spec.gcs_copy
        copy = " ".join(systemd_quote(a) for a in weights_copy_command(source, target))
        pre_start = (
            f"ExecStartPre=/usr/bin/install -d -m 0755 {systemd_quote(target)}\n"
            f"ExecStartPre={copy}\n"
        )
    offline = (
        ""
        if spec.offline_marker is None
        else f"EnvironmentFile=-{systemd_quote(spec.offline_marker)}\n"
    )
    return render(
        "vllm.service",
        {
            "CONTAINER_NAME": CONTAINER_NAME,
            "READY_MARKER": systemd_quote(host_paths.READY_MARKER),
            "STARTUP_FAILED_MARKER": systemd_quote(host_paths.STARTUP_FAILED_MARKER),
            "STARTUP_LOG": systemd_quote(host_paths.STARTUP_LOG),
            "IMAGE": systemd_quote(image),
            "REGISTRY_LOGIN": login,
            "OFFLINE_ENVIRONMENT": offline,
            "WEIGHTS_COPY": pre_start,
            "DOCKER_RUN": systemd_command_line(docker_run_command(spec, image), own_line=[image]),
        },
    )


def render_script(name: str, values: dict[str, str]) -> str:
    """A script of scripts/ whose placeholders all sit inside single quotes: escape the quote."""
    return render(name, {key: value.replace("'", "'\\''") for key, value in values.items()})


def wait_host_ready_script(timeout_seconds: int = (HOST_READY_TIMEOUT_MINUTES - 2) * 60) -> str:
    """Step 1's script. Its own wait ends a little before the step's limit, so it reports the
    startup log before the limit cuts it off."""
    return render_script(
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
    """Step 2's script."""
    return render_script(
        "write_secrets.sh",
        {"CONFIG_DIR": host_paths.CONFIG_DIR, "SECRETS_ENV_FILE": host_paths.SECRETS_ENV_FILE},
    )


def install_script(
    image: str,
    registry_host: str | None = None,
    cache_dirs: Sequence[str] = (HF_CACHE_DIR, VLLM_CACHE_DIR, OFFLINE_MARKER_DIR),
    login_script: str | None = None,
) -> str:
    """Step 3's script: pull `image`, logging in to `registry_host` first where given (with
    scripts/registry_login.sh unless `login_script`), install the unit, restart it."""
    if login_script is None:
        login_script = "" if registry_host is None else read("registry_login.sh")
    return render_script(
        "install_vllm.sh",
        {
            "IMAGE": image,
            "SERVICE_NAME": SERVICE_NAME,
            "CACHE_DIRS": " ".join(cache_dirs),
            "SECRETS_ENV_FILE": host_paths.SECRETS_ENV_FILE,
            "REGISTRY_HOST": registry_host or "",
            "REGISTRY_LOGIN_PATH": REGISTRY_LOGIN_PATH,
            "REGISTRY_LOGIN_SCRIPT": login_script,
        },
    )


def serving_script(
    served_model_name: str,
    offline_marker: str | None,
    timeout_seconds: int = (SERVING_TIMEOUT_MINUTES - 5) * 60,
) -> str:
    """Step 4's script. Its own wait ends a few minutes before the step's limit, so it reports
    the container's journal before the limit cuts it off."""
    return render_script(
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


def secrets_env(api_key: str, hugging_face_token: str | None) -> str:
    """The root-only env file's content: vLLM reads VLLM_API_KEY, huggingface_hub HF_TOKEN."""
    lines = [f"VLLM_API_KEY={api_key}"]
    if hugging_face_token:
        lines.append(f"HF_TOKEN={hugging_face_token}")
    return "\n".join(lines) + "\n"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class VllmServerArgs:
    model: ModelConfig
    tensor_parallel_size: int
    connection: remote.ConnectionArgs
    instance_id: pulumi.Input[str]
    hugging_face_token: pulumi.Output[str] | None  # secret
    # The image reference to pull (an Artifact Registry mirror of model.image); model.image if None.
    image: pulumi.Input[str] | None = None
    # The Artifact Registry host serving `image` (Mirror.registry_host): log Docker in to it.
    registry_host: str | None = None


class VllmServer(pulumi.ComponentResource):
    api_key: pulumi.Output[str]
    first_contact: local.Command | None  # only through a jump host
    host_ready: remote.Command
    secrets: remote.Command
    run: remote.Command
    serving: remote.Command

    def __init__(
        self, name: str, args: VllmServerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:vllm_server:VllmServer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        model = args.model

        # Letters and digits only: the key travels in an env file and an HTTP header unquoted.
        password = random.RandomPassword(f"{name}-api-key", length=48, special=False, opts=child)
        self.api_key = pulumi.Output.secret(password.result)

        # Through a jump host, the first SSH is made by the system's client, afresh each attempt.
        self.first_contact = first_contact(
            f"{name}-first-contact",
            connection=args.connection,
            instance_id=args.instance_id,
            parent=self,
        )
        self.host_ready = host_step(
            f"{name}-host-ready",
            connection=args.connection,
            script=wait_host_ready_script(),
            instance_id=args.instance_id,
            parent=self,
            timeout_minutes=HOST_READY_TIMEOUT_MINUTES,
            depends_on=[self.first_contact] if self.first_contact is not None else (),
        )

        token = args.hugging_face_token
        env_content: pulumi.Output[str] = (
            pulumi.Output.all(self.api_key, token).apply(lambda v: secrets_env(v[0], v[1]))
            if token is not None
            else self.api_key.apply(lambda key: secrets_env(key, None))
        )
        env_content = pulumi.Output.secret(env_content)
        env_digest = pulumi.Output.secret(env_content.apply(_sha256))

        self.secrets = host_step(
            f"{name}-secrets",
            connection=args.connection,
            script=secrets_script(),
            instance_id=args.instance_id,
            parent=self,
            timeout_minutes=SECRETS_TIMEOUT_MINUTES,
            stdin=env_content,
            depends_on=[self.host_ready],
            log_output=False,
        )

        image = pulumi.Output.from_input(args.image if args.image is not None else model.image)
        spec = image.apply(lambda ref: container_spec(model, args.tensor_parallel_size, ref))
        registry_host = args.registry_host
        unit = pulumi.Output.all(spec, image).apply(
            lambda v: render_unit(v[0], v[1], registry_host)
        )
        run_script = image.apply(lambda ref: install_script(ref, registry_host))
        self.run = host_step(
            f"{name}-run",
            connection=args.connection,
            script=run_script,
            instance_id=args.instance_id,
            parent=self,
            timeout_minutes=RUN_TIMEOUT_MINUTES,
            stdin=unit,
            # A key change rewrites the env file in step 2; the container reads it only on start.
            extra_triggers=[env_digest],
            depends_on=[self.secrets],
        )

        wait_serving = spec.apply(
            lambda s: serving_script(model.served_model_name, s.offline_marker)
        )
        # Re-run whenever step 3 does: its script, its unit, the secrets, the VM.
        run_digest = pulumi.Output.all(run_script, unit).apply(lambda v: _sha256(v[0] + v[1]))
        self.serving = host_step(
            f"{name}-serving",
            connection=args.connection,
            script=wait_serving,
            instance_id=args.instance_id,
            parent=self,
            timeout_minutes=SERVING_TIMEOUT_MINUTES,
            extra_triggers=[run_digest, env_digest],
            depends_on=[self.run],
        )

        self.register_outputs(
            {
                "apiKey": self.api_key,
                "hostReady": self.host_ready.stdout,
                "serving": self.serving.stdout,
            }
        )
