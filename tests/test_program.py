"""The whole program under the engine's mocks: both stacks plan, the outputs contract holds, and a
change touches only what it must."""

from __future__ import annotations

from typing import Any

import pytest

from components.config import ConfigError
from tests.harness import (
    MOCK_API_KEY,
    MOCK_HF_TOKEN,
    MOCK_KIBANA_KEY,
    MOCK_SECRETS,
    Plan,
    RecordingMocks,
    Registered,
    plain_strings,
    run_program,
    stack_config,
    stack_file,
)

INSTANCE = "gcp:compute/instance:Instance"
REMOTE_COMMAND = "command:remote:Command"
CONTRACT_OUTPUTS = {
    "endpoint",
    "connectorUrl",
    "apiKey",
    "model",
    "caCertificate",
    "kibanaConnector",
    "kibanaSettings",
    "publicIp",
    "privateIp",
    "instanceName",
    "zone",
    "sshUser",
    "sshPrivateKey",
    "dashboardUrl",
}
SECRET_OUTPUTS = {"apiKey", "kibanaConnector", "sshPrivateKey"}


def plan(stack: str, *overrides: dict[str, Any], secrets: dict[str, str] | None = None) -> Plan:
    return run_program(stack_config(stack, *overrides), stack=stack, secrets=secrets)


def commands_by_name(result: Plan) -> dict[str, Registered]:
    return {r.name: r for r in result.of_type(REMOTE_COMMAND)}


def test_prod_plans_the_reference_host() -> None:
    result = plan("prod")
    instance = result.one(INSTANCE).plain
    assert instance["machineType"] == "a2-ultragpu-2g"
    assert instance["zone"] == "us-central1-a"
    assert instance["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert instance["scheduling"].get("provisioningModel", "STANDARD") == "STANDARD"
    assert "startup-script" in instance["metadata"]
    assert "metadataStartupScript" not in instance
    assert result.outputs["model"] == "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
    assert result.outputs["zone"] == "us-central1-a"
    assert result.outputs["sshUser"] == "vllm"


def test_dev_plans_a_spot_l4() -> None:
    instance = plan("dev").one(INSTANCE).plain
    assert instance["machineType"] == "g2-standard-8"
    assert instance["scheduling"]["provisioningModel"] == "SPOT"
    assert instance["scheduling"]["preemptible"] is True
    assert instance["scheduling"]["automaticRestart"] is False


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_the_outputs_contract_holds(stack: str) -> None:
    result = plan(stack)
    assert set(result.outputs) >= CONTRACT_OUTPUTS
    assert result.secret_outputs >= SECRET_OUTPUTS
    outputs = result.outputs
    host = outputs["publicIp"]
    assert outputs["endpoint"] == f"https://{host}/v1"
    assert outputs["connectorUrl"] == f"https://{host}/v1/chat/completions"
    assert outputs["apiKey"] == MOCK_API_KEY
    assert outputs["caCertificate"].startswith("-----BEGIN CERTIFICATE-----")
    connector = outputs["kibanaConnector"]
    assert connector["config"]["apiUrl"] == outputs["connectorUrl"]
    assert connector["config"]["defaultModel"] == outputs["model"]
    assert connector["secrets"]["apiKey"] == outputs["apiKey"]


def test_no_secret_appears_outside_secret_values() -> None:
    result = plan(
        "prod",
        {"vllm-gcp:elastic": {"kibanaUrl": "https://kb.example.com"}},
        secrets={"huggingFaceToken": MOCK_HF_TOKEN, "kibanaApiKey": MOCK_KIBANA_KEY},
    )
    for resource in result.resources:
        for text in plain_strings(resource.inputs):
            for secret in MOCK_SECRETS:
                assert secret.strip() not in text, f"{resource.type} {resource.name} leaks a secret"
    for key, value in result.outputs.items():
        if key in result.secret_outputs:
            continue
        for text in plain_strings(value):
            for secret in MOCK_SECRETS:
                assert secret.strip() not in text, f"output {key} leaks a secret"


# Changes that must never touch the VM: model, vLLM flags, image, TLS, who may call the API.
WORKLOAD_CHANGES: dict[str, dict[str, Any]] = {
    "model": {"vllm-gcp:model": {"id": "mistralai/Mistral-Small-3.1-24B-Instruct-2503"}},
    "vllm flags": {"vllm-gcp:model": {"maxModelLen": 32768, "extraArgs": ["--max-num-seqs", "64"]}},
    "image": {"vllm-gcp:model": {"image": "vllm/vllm-openai:v0.9.1"}},
    "tool calling": {"vllm-gcp:model": {"toolCallParser": "none"}},
    "tls": {"vllm-gcp:tls": {"mode": "self-signed", "domain": "llm.example.com"}},
    "api cidrs": {"vllm-gcp:access": {"apiCidrs": ["192.0.2.0/24"]}},
}


@pytest.mark.parametrize("change", list(WORKLOAD_CHANGES), ids=list(WORKLOAD_CHANGES))
def test_workload_changes_leave_the_instance_untouched(change: str) -> None:
    before = plan("prod").one(INSTANCE).inputs
    after = plan("prod", WORKLOAD_CHANGES[change]).one(INSTANCE).inputs
    assert after == before


def test_a_model_change_reruns_only_the_serving_steps() -> None:
    before = commands_by_name(plan("prod"))
    after = commands_by_name(plan("prod", WORKLOAD_CHANGES["model"]))
    assert set(before) == set(after)
    changed = {name for name in before if before[name].inputs != after[name].inputs}
    assert changed == {"vllm-run", "vllm-serving"}
    assert set(before) - changed == {"vllm-host-ready", "vllm-secrets", "vllm-nginx-site"}


def test_a_second_plan_is_identical() -> None:
    first = plan("prod")
    second = plan("prod")
    # Registration order follows output resolution, which may interleave; compare by identity.
    assert sorted((r.type, r.name, repr(r.inputs)) for r in first.resources) == sorted(
        (r.type, r.name, repr(r.inputs)) for r in second.resources
    )


def test_bad_configuration_registers_nothing() -> None:
    mocks = RecordingMocks()
    config = stack_config("prod", {"vllm-gcp:model": {"tensorParallelSize": 3}})
    with pytest.raises(ConfigError, match=r"vllm-gcp:model\.tensorParallelSize"):
        run_program(config, stack="prod", mocks=mocks)
    assert mocks.resources == []


def test_a_stack_file_without_the_user_values_registers_nothing() -> None:
    mocks = RecordingMocks()
    with pytest.raises(ConfigError, match="pulumi config set gcp:project"):
        run_program(stack_file("dev"), stack="dev", mocks=mocks)
    assert mocks.resources == []


PRIVATE: dict[str, Any] = {
    "vllm-gcp:network": {"exposure": "private", "sshJumpHost": "ops@10.0.0.5"},
    "vllm-gcp:access": {"apiCidrs": ["10.20.0.0/16"], "sshCidrs": ["10.10.0.5/32"]},
    "vllm-gcp:host": {"image": "projects/test-project/global/images/vllm-host-2404-nvidia-580"},
    "vllm-gcp:mirror": {"dockerRemote": True, "aptRemote": True},
    "vllm-gcp:model": {"source": "gcs", "gcsUri": "gs://weights-bucket/models/mistral-small"},
}


def test_private_mode_plans_a_host_with_no_route_to_the_internet() -> None:
    result = plan("prod", PRIVATE)
    instance = result.one(INSTANCE).plain
    (interface,) = instance["networkInterfaces"]
    assert not interface.get("accessConfigs")
    addresses = [r.plain for r in result.of_type("gcp:compute/address:Address")]
    assert [a.get("addressType") for a in addresses] == ["INTERNAL"]
    subnet = result.one("gcp:compute/subnetwork:Subnetwork").plain
    assert subnet["privateIpGoogleAccess"] is True

    egress = [
        r.plain
        for r in result.of_type("gcp:compute/firewall:Firewall")
        if r.plain.get("direction") == "EGRESS"
    ]
    denies = [rule for rule in egress if rule.get("denies")]
    allows = [rule for rule in egress if rule.get("allows")]
    assert [rule["destinationRanges"] for rule in denies] == [["0.0.0.0/0"]]
    assert [rule["destinationRanges"] for rule in allows] == [["199.36.153.8/30"]]
    assert all(allow["priority"] < denies[0]["priority"] for allow in allows)
    ingress_sources = {
        source
        for r in result.of_type("gcp:compute/firewall:Firewall")
        if r.plain.get("direction", "INGRESS") == "INGRESS"
        for source in r.plain.get("sourceRanges", [])
    }
    assert ingress_sources <= {"10.20.0.0/16", "10.10.0.5/32"}

    assert result.outputs["publicIp"] is None
    assert result.outputs["endpoint"] == f"https://{result.outputs['privateIp']}/v1"
    for command in result.of_type(REMOTE_COMMAND):
        connection = command.plain["connection"]
        assert connection["host"] == result.outputs["privateIp"]
        assert connection["proxy"]["host"] == "10.0.0.5"


def test_private_mode_pulls_through_the_mirror_and_reads_only_its_bucket_prefix() -> None:
    result = plan("prod", PRIVATE)
    repositories = [r.plain for r in result.of_type("gcp:artifactregistry/repository:Repository")]
    assert {r["format"] for r in repositories} == {"DOCKER", "APT"}
    assert all(r["mode"] == "REMOTE_REPOSITORY" for r in repositories)
    grants = [
        r.plain
        for r in result.of_type("gcp:artifactregistry/repositoryIamMember:RepositoryIamMember")
    ]
    assert grants
    assert {g["role"] for g in grants} == {"roles/artifactregistry.reader"}
    bucket_grants = [r.plain for r in result.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")]
    assert len(bucket_grants) == 1
    assert bucket_grants[0]["bucket"] == "weights-bucket"
    assert "models/mistral-small" in bucket_grants[0]["condition"]["expression"]
    project_roles = {r.plain["role"] for r in result.of_type("gcp:projects/iAMMember:IAMMember")}
    assert project_roles == {"roles/logging.logWriter", "roles/monitoring.metricWriter"}

    # What the remote steps send: their scripts and what they write on stdin.
    run_steps = [
        (c.plain.get("create") or "") + (c.plain.get("stdin") or "")
        for c in result.of_type(REMOTE_COMMAND)
    ]
    mirrored = "us-central1-docker.pkg.dev/test-project/"
    assert any(mirrored in step for step in run_steps)
    assert not any("docker pull vllm/vllm-openai" in step for step in run_steps)
    assert any("gs://weights-bucket/models/mistral-small" in step for step in run_steps)
    assert "us-central1-apt.pkg.dev" in result.one(INSTANCE).plain["metadata"]["startup-script"]
