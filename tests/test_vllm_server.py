"""The VllmServer component under Pulumi mocks: its three remote steps and what they carry."""

from __future__ import annotations

import json

import pulumi
import pytest
from pulumi_command import remote

from components import host_bundle as bundle
from components import host_paths
from components.config import ModelConfig
from components.vllm_server import VllmServer, VllmServerArgs
from tests.harness import (
    MOCK_API_KEY,
    MOCK_HF_TOKEN,
    MOCK_SSH_PRIVATE_KEY,
    Plan,
    build_components,
    is_secret_value,
    plain_strings,
    systemd_split,
)

MISTRAL = "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
STEPS = ("vllm-secrets", "vllm-run", "vllm-serving")
HOST_READY = "vllm-host-ready"  # GpuHost's step, stood in for here
COMMAND = "command:remote:Command"


def unit_text(built: Plan) -> str:
    """The systemd unit the run step installs."""
    return built.named("vllm-run").plain["stdin"]


def unit_argv(built: Plan) -> list[str]:
    """The ExecStart line of the unit, read back the way systemd splits it."""
    text = unit_text(built).replace("\\\n", "")
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    return systemd_split(line.removeprefix("ExecStart="))


def vllm_argv(built: Plan) -> list[str]:
    """What runs in the container: the entrypoint, then everything after the image."""
    argv = unit_argv(built)
    entrypoint = argv[argv.index("--entrypoint") + 1]
    return [entrypoint, *argv[argv.index("--entrypoint") + 3 :]]


def build(
    model: ModelConfig,
    *,
    tensor_parallel_size: int = 2,
    hugging_face_token: str | None = None,
    image: str | None = None,
    registry_host: str | None = None,
) -> Plan:
    def declare() -> dict[str, object]:
        connection = remote.ConnectionArgs(
            host="203.0.113.10", user="vllm", private_key=pulumi.Output.secret(MOCK_SSH_PRIVATE_KEY)
        )
        host_ready = remote.Command(HOST_READY, connection=connection, create="true")
        server = VllmServer(
            "vllm",
            VllmServerArgs(
                model=model,
                tensor_parallel_size=tensor_parallel_size,
                connection=connection,
                instance_id="1234567890",
                host_ready=host_ready,
                api_key=pulumi.Output.secret(MOCK_API_KEY),
                hugging_face_token=(
                    None if hugging_face_token is None else pulumi.Output.secret(hugging_face_token)
                ),
                image=image,
                registry_host=registry_host,
            ),
        )
        return {"serving": server.serving.id}

    return build_components(declare, stack="test")


def exec_start_pre(built: Plan, program: str) -> list[str]:
    """The ExecStartPre line running `/bin/sh -c SCRIPT <program> ARGS...`, split as by systemd."""
    for line in unit_text(built).splitlines():
        if line.startswith("ExecStartPre="):
            argv = systemd_split(line.removeprefix("ExecStartPre=").removeprefix("-"))
            if argv[:2] == ["/bin/sh", "-c"] and argv[3] == program:
                return argv
    raise AssertionError(f"no ExecStartPre runs {program}")


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# ------------------------------------------------------------------------------------------------
# The prod reference: Mistral Small 3.2 on 2 x A100 80GB


@pytest.fixture(scope="module")
def prod() -> Plan:
    return build(ModelConfig(), hugging_face_token=MOCK_HF_TOKEN)


def test_three_remote_steps_each_triggered_by_the_instance(prod: Plan) -> None:
    assert {r.name for r in prod.of_type(COMMAND)} == {HOST_READY, *STEPS}
    for name in STEPS:
        step = prod.named(name)
        assert step.type == COMMAND
        assert step.plain["triggers"][0] == "1234567890"
        # Ubuntu's sshd refuses the env vars, and old output has no business on the host.
        assert step.plain["addPreviousOutputInEnv"] is False
        assert step.plain["create"] == step.plain["update"]  # re-runs in place, never replaced
        assert "delete" not in step.plain  # the VM goes with the stack
    # Each step after the one before it, the first after the host's ready step.
    urn = "urn:pulumi:test::vllm-gcp::{}command:remote:Command::{}"
    server = "vllm-gcp:vllm_server:VllmServer$"
    steps_before = {
        name: {d for d in prod.named(name).options.dependencies if "remote:Command" in d}
        for name in STEPS
    }
    assert steps_before == {
        "vllm-secrets": {urn.format("pulumi:pulumi:Stack$", HOST_READY)},
        "vllm-run": {urn.format(server, "vllm-secrets")},
        "vllm-serving": {urn.format(server, "vllm-run")},
    }


def test_the_container_runs_mistral_with_tp2_tool_calling_and_loopback_only(prod: Plan) -> None:
    argv = unit_argv(prod)
    assert argv[:2] == ["/usr/bin/docker", "run"]
    assert flag_value(argv, "--gpus") == "all"
    assert "--ipc=host" in argv
    publishes = [argv[i + 1] for i, a in enumerate(argv) if a in ("--publish", "-p")]
    assert publishes == [f"127.0.0.1:{host_paths.VLLM_LOOPBACK_PORT}:8000"]
    assert flag_value(argv, "--env-file") == host_paths.SECRETS_ENV_FILE
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
    assert f"{host_paths.CACHE_DIR}/huggingface:/root/.cache/huggingface" in volumes
    assert f"{host_paths.CACHE_DIR}/vllm:/root/.cache/vllm" in volumes

    served = vllm_argv(prod)
    assert served[:3] == ["vllm", "serve", MISTRAL]
    assert flag_value(served, "--host") == "0.0.0.0"
    assert flag_value(served, "--port") == "8000"
    assert flag_value(served, "--served-model-name") == MISTRAL
    assert flag_value(served, "--tensor-parallel-size") == "2"
    assert flag_value(served, "--gpu-memory-utilization") == "0.9"
    assert flag_value(served, "--tokenizer-mode") == "mistral"
    assert flag_value(served, "--config-format") == "mistral"
    assert flag_value(served, "--load-format") == "mistral"
    assert "--enable-auto-tool-choice" in served
    assert flag_value(served, "--tool-call-parser") == "mistral"
    assert "--api-key" not in served  # vLLM reads VLLM_API_KEY from the env file
    assert "--disable-log-requests" not in served  # removed in v0.12; off by default there
    assert "--revision" not in served
    assert "--max-model-len" not in served


def test_unit_runs_under_systemd_and_survives_crashes_and_reboots(prod: Plan) -> None:
    unit = unit_text(prod)
    assert "Restart=always" in unit
    assert "WantedBy=multi-user.target" in unit
    assert "Requires=docker.service" in unit
    assert f"ExecStartPre=-/usr/bin/docker rm --force {bundle.CONTAINER_NAME}" in unit
    run_script = prod.named("vllm-run").plain["create"]
    assert "docker pull" in run_script
    assert "systemctl restart" in run_script


def test_unit_starts_only_on_a_host_the_startup_script_prepared(prod: Plan) -> None:
    gate = exec_start_pre(prod, "start-gate")
    assert gate[4:] == [
        host_paths.READY_MARKER,
        host_paths.STARTUP_FAILED_MARKER,
        host_paths.STARTUP_LOG,
    ]
    lines = unit_text(prod).splitlines()
    gate_line = next(i for i, x in enumerate(lines) if "start-gate" in x)
    assert lines[gate_line].startswith("ExecStartPre=/bin/sh")  # a failure stops the start
    assert gate_line < min(i for i, x in enumerate(lines) if x.startswith("ExecStartPre=-"))
    assert "TimeoutStartSec=40min" in lines  # bounds the wait


def test_unit_pulls_only_an_absent_image(prod: Plan) -> None:
    pull = exec_start_pre(prod, "pull-if-absent")
    # No registry host: the login ($3) is skipped.
    assert pull[4:] == ["vllm/vllm-openai:v0.32.0", "", host_paths.REGISTRY_LOGIN_PATH]
    assert pull[2].startswith('docker image inspect "$1" >/dev/null 2>&1 || {')
    assert 'if [ -n "$2" ]; then "$3" "$2"; fi; timeout 600 docker pull "$1"' in pull[2]
    assert "ExecStartPre=-/bin/sh -c" in unit_text(prod)  # tolerated: docker reports it itself


def test_the_key_and_token_are_only_in_secret_inputs(prod: Plan) -> None:
    for resource in prod.resources:
        for text in plain_strings(resource.inputs):
            assert MOCK_API_KEY not in text, f"{resource.name} carries the key in the clear"
            assert MOCK_HF_TOKEN not in text, f"{resource.name} carries the token in the clear"
    secrets = prod.named("vllm-secrets")
    assert is_secret_value(secrets.inputs["stdin"])
    assert secrets.plain["stdin"] == f"VLLM_API_KEY={MOCK_API_KEY}\nHF_TOKEN={MOCK_HF_TOKEN}\n"
    assert secrets.plain["logging"] == "none"
    assert MOCK_API_KEY not in secrets.plain["create"]
    # The run step restarts the container on a key change through a secret trigger.
    assert is_secret_value(prod.named("vllm-run").inputs["triggers"])


def test_the_serving_wait_reads_the_key_from_the_root_only_file(prod: Plan) -> None:
    script = prod.named("vllm-serving").plain["create"]
    assert "--header @<(authorization_header)" in script
    assert host_paths.SECRETS_ENV_FILE in script
    assert f"http://127.0.0.1:{host_paths.VLLM_LOOPBACK_PORT}/v1/models" in script
    assert f"readonly SERVED_MODEL_NAME='{MISTRAL}'" in script


def test_huggingface_goes_offline_once_this_configuration_has_served(prod: Plan) -> None:
    argv = unit_argv(prod)
    assert "HF_HUB_OFFLINE" in [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    marker_lines = [x for x in unit_text(prod).splitlines() if x.startswith("EnvironmentFile=-")]
    assert len(marker_lines) == 1
    marker = marker_lines[0].removeprefix("EnvironmentFile=-")
    assert marker.startswith(f"{bundle.OFFLINE_MARKER_DIR}/served-")
    assert f"readonly OFFLINE_MARKER='{marker}'" in prod.named("vllm-serving").plain["create"]


def test_two_builds_of_the_same_configuration_are_identical() -> None:
    first = build(ModelConfig(), hugging_face_token=MOCK_HF_TOKEN)
    second = build(ModelConfig(), hugging_face_token=MOCK_HF_TOKEN)
    assert json.dumps([(r.type, r.name, r.inputs) for r in first.resources], sort_keys=True) == (
        json.dumps([(r.type, r.name, r.inputs) for r in second.resources], sort_keys=True)
    )


# ------------------------------------------------------------------------------------------------
# Update semantics


def test_a_model_change_alters_only_the_run_and_serving_steps(prod: Plan) -> None:
    changed = build(
        ModelConfig(id="Qwen/Qwen2.5-32B-Instruct", max_model_len=32768),
        hugging_face_token=MOCK_HF_TOKEN,
    )
    for name in ("vllm-host-ready", "vllm-secrets"):
        assert changed.named(name).inputs == prod.named(name).inputs, name
    for name in ("vllm-run", "vllm-serving"):
        assert changed.named(name).inputs != prod.named(name).inputs, name
    assert changed.named("vllm-run").inputs["triggers"] == prod.named("vllm-run").inputs["triggers"]
    served = vllm_argv(changed)
    assert served[:3] == ["vllm", "serve", "Qwen/Qwen2.5-32B-Instruct"]
    assert flag_value(served, "--tool-call-parser") == "hermes"
    assert flag_value(served, "--max-model-len") == "32768"
    assert "--tokenizer-mode" not in served
    assert not [r for r in changed.resources if r.type.startswith("gcp:")]  # no VM here at all


def test_a_flag_change_gets_a_new_offline_marker(prod: Plan) -> None:
    changed = build(ModelConfig(gpu_memory_utilization=0.85), hugging_face_token=MOCK_HF_TOKEN)
    markers = [
        next(x for x in unit_text(built).splitlines() if x.startswith("EnvironmentFile="))
        for built in (prod, changed)
    ]
    assert markers[0] != markers[1]


def test_a_secret_change_reruns_secrets_run_and_serving(prod: Plan) -> None:
    changed = build(ModelConfig(), hugging_face_token="hf_anothertoken987654321")
    assert changed.named("vllm-host-ready").inputs == prod.named("vllm-host-ready").inputs
    assert changed.named("vllm-secrets").plain["stdin"] != prod.named("vllm-secrets").plain["stdin"]
    assert changed.named("vllm-run").plain["stdin"] == prod.named("vllm-run").plain["stdin"]
    for name in ("vllm-run", "vllm-serving"):
        assert changed.named(name).plain["triggers"] != prod.named(name).plain["triggers"], name


# ------------------------------------------------------------------------------------------------
# Image versions


def test_a_v0_9_1_image_starts_the_openai_server_module() -> None:
    built = build(ModelConfig(image="vllm/vllm-openai:v0.9.1"))
    argv = unit_argv(built)
    assert flag_value(argv, "--entrypoint") == "python3"
    served = vllm_argv(built)
    assert served[:5] == ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", MISTRAL]
    assert "serve" not in served
    assert "--disable-log-requests" in served  # still a flag there: keeps prompts out of logs


@pytest.mark.parametrize(
    ("image", "entrypoint", "log_flag"),
    [
        ("vllm/vllm-openai:v0.9.2", "python3", True),
        ("vllm/vllm-openai:v0.10.0", "vllm", True),
        ("vllm/vllm-openai:v0.11.2", "vllm", True),
        ("vllm/vllm-openai:v0.12.0", "vllm", False),
        ("vllm/vllm-openai@sha256:" + "a" * 64, "vllm", False),  # unknown release: current
    ],
)
def test_entrypoint_and_removed_flags_follow_the_image_version(
    image: str, entrypoint: str, log_flag: bool
) -> None:
    served = vllm_argv(build(ModelConfig(image=image)))
    assert served[0] == entrypoint
    assert ("--disable-log-requests" in served) is log_flag


def test_extra_args_come_last_and_survive_systemd_quoting() -> None:
    extra = [
        "--override-generation-config",
        '{"temperature": 0.15, "note": "50% off $HOME \\\\"}',
        "--max-num-seqs=64",
    ]
    built = build(ModelConfig(revision="2506-pinned", extra_args=extra))
    served = vllm_argv(built)
    assert served[-3:] == extra
    assert flag_value(served, "--revision") == "2506-pinned"


def test_an_image_mirror_is_pulled_and_run_instead_of_docker_hub() -> None:
    mirror = "us-central1-docker.pkg.dev/test-project/dockerhub/vllm/vllm-openai:v0.9.1"
    built = build(ModelConfig(image="vllm/vllm-openai:v0.9.1"), image=mirror)
    argv = unit_argv(built)
    assert argv[argv.index("--entrypoint") + 2] == mirror
    assert flag_value(argv, "--entrypoint") == "python3"  # the version still comes from model.image
    # No registry host: nothing to log in to before a pull.
    assert exec_start_pre(built, "pull-if-absent")[4:] == [
        mirror,
        "",
        host_paths.REGISTRY_LOGIN_PATH,
    ]
    assert f"readonly IMAGE='{mirror}'" in built.named("vllm-run").plain["create"]
    images = {word for word in unit_text(built).split() if "vllm-openai" in word}
    assert images == {mirror}


def test_the_mirror_is_logged_in_to_before_each_pull() -> None:
    mirror = "us-central1-docker.pkg.dev/test-project/dockerhub/vllm/vllm-openai:v0.32.0"
    built = build(ModelConfig(), image=mirror, registry_host="us-central1-docker.pkg.dev")
    pull = exec_start_pre(built, "pull-if-absent")
    assert pull[4:] == [mirror, "us-central1-docker.pkg.dev", host_paths.REGISTRY_LOGIN_PATH]
    assert '|| { if [ -n "$2" ]; then "$3" "$2"; fi; timeout 600 docker pull "$1"; }' in pull[2]
    run_script = built.named("vllm-run").plain["create"]
    assert "readonly REGISTRY_HOST='us-central1-docker.pkg.dev'\n" in run_script
    assert (
        f"readonly REGISTRY_LOGIN=\"${{ROOT}}\"'{host_paths.REGISTRY_LOGIN_PATH}'\n" in run_script
    )


# ------------------------------------------------------------------------------------------------
# Weights from Cloud Storage (issue 8)

GCS_URI = "gs://my-weights-bucket/mistral-small-3.2"


def test_gcs_weights_stream_on_current_images_and_never_contact_huggingface() -> None:
    built = build(ModelConfig(source="gcs", gcs_uri=GCS_URI, revision="ignored-for-gcs"))
    served = vllm_argv(built)
    assert served[:3] == ["vllm", "serve", GCS_URI]
    assert flag_value(served, "--load-format") == "runai_streamer"
    assert served.count("--load-format") == 1  # Mistral's own loader cannot stream
    assert flag_value(served, "--tokenizer-mode") == "mistral"
    assert "--revision" not in served
    argv = unit_argv(built)
    assert "HF_HUB_OFFLINE=1" in [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert "EnvironmentFile=" not in unit_text(built)
    assert "gcloud" not in unit_text(built)
    assert "readonly OFFLINE_MARKER=''" in built.named("vllm-serving").plain["create"]


def test_gcs_weights_are_copied_to_the_cache_for_older_images() -> None:
    built = build(ModelConfig(image="vllm/vllm-openai:v0.11.0", source="gcs", gcs_uri=GCS_URI))
    copy = next(x for x in unit_text(built).splitlines() if "gcloud" in x)
    target = copy.split()[-1]
    assert target.startswith(f"{bundle.GCS_WEIGHTS_DIR}/")
    assert copy.split()[-2] == GCS_URI
    assert "storage rsync --recursive" in copy
    argv = unit_argv(built)
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
    assert f"{target}:{bundle.CONTAINER_GCS_WEIGHTS}:ro" in volumes
    served = vllm_argv(built)
    assert served[:3] == ["vllm", "serve", bundle.CONTAINER_GCS_WEIGHTS]
    assert flag_value(served, "--load-format") == "mistral"
    assert "HF_HUB_OFFLINE=1" in argv
