"""The vLLM server on the GPU host: three remote steps over SSH that configure it in place.

After the host's own ready step (components/host.py):
1. secrets: the API key (and Hugging Face token) into a root-only env file, on stdin.
2. run: pull the image, install the systemd unit that runs the container, restart it.
3. serving: wait until `/v1/models` on loopback lists the served model.

A model, flag or image change re-runs steps 2 and 3 only; a key change re-runs all three. The
VM is never touched. What each step runs is rendered by components/host_bundle.py; each step runs
under a host-side limit a minute under its timeout (components/remote_access.py `host_step`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.config import ModelConfig
from components.credentials import secrets_env_output
from components.host_bundle import (
    container_spec,
    run_script,
    secrets_script,
    serving_script,
    vllm_unit,
)
from components.remote_access import host_step

SECRETS_TIMEOUT_MINUTES = 5  # writes one file on a host already reachable
# A first pull of the ~12 GB image (its own limit: 30 min), then the unit's restart: the drain
# of the answers in flight and docker stop (6.5 min), its start gate and a copy of the weights
# from Cloud Storage (41 min): all fit under the step's limit.
RUN_TIMEOUT_MINUTES = 80
SERVING_TIMEOUT_MINUTES = 65  # a first start downloads tens of GB of weights
# The serving wait ends a few minutes before its step's limit, so it reports the container's
# journal before the limit cuts it off.
SERVING_WAIT_SECONDS = (SERVING_TIMEOUT_MINUTES - 5) * 60


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class VllmServerArgs:
    model: ModelConfig
    tensor_parallel_size: int
    connection: remote.ConnectionArgs
    instance_id: pulumi.Input[str]
    host_ready: pulumi.Resource  # GpuHost.ready: the startup script has prepared this boot
    api_key: pulumi.Output[str]  # secret: components/credentials.py
    hugging_face_token: pulumi.Output[str] | None  # secret
    # The image reference to pull (an Artifact Registry mirror of model.image); model.image if None.
    image: pulumi.Input[str] | None = None
    # The Artifact Registry host serving `image` (Mirror.registry_host): log Docker in to it.
    registry_host: str | None = None


class VllmServer(pulumi.ComponentResource):
    secrets: remote.Command
    run: remote.Command
    serving: remote.Command

    def __init__(
        self, name: str, args: VllmServerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:vllm_server:VllmServer", name, None, opts)
        model = args.model
        env_content = secrets_env_output(args.api_key, args.hugging_face_token)
        env_digest = pulumi.Output.secret(env_content.apply(_sha256))

        self.secrets = host_step(
            f"{name}-secrets",
            connection=args.connection,
            script=secrets_script(),
            instance_id=args.instance_id,
            parent=self,
            timeout_minutes=SECRETS_TIMEOUT_MINUTES,
            stdin=env_content,
            depends_on=[args.host_ready],
            log_output=False,
        )

        image = pulumi.Output.from_input(args.image if args.image is not None else model.image)
        spec = image.apply(lambda ref: container_spec(model, args.tensor_parallel_size, ref))
        registry_host = args.registry_host
        unit = pulumi.Output.all(spec, image).apply(lambda v: vllm_unit(v[0], v[1], registry_host))
        run = image.apply(lambda ref: run_script(ref, registry_host))
        self.run = host_step(
            f"{name}-run",
            connection=args.connection,
            script=run,
            instance_id=args.instance_id,
            parent=self,
            timeout_minutes=RUN_TIMEOUT_MINUTES,
            stdin=unit,
            # A key change rewrites the env file in step 1; the container reads it only on start.
            extra_triggers=[env_digest],
            depends_on=[self.secrets],
        )

        wait_serving = spec.apply(
            lambda s: serving_script(
                model.served_model_name, s.offline_marker, SERVING_WAIT_SECONDS
            )
        )
        # Re-run whenever step 2 does: its script, its unit, the secrets, the VM.
        run_digest = pulumi.Output.all(run, unit).apply(lambda v: _sha256(v[0] + v[1]))
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

        self.register_outputs({"serving": self.serving.stdout})
