"""The configuration contract: defaults, the stack files, and every mistake refused by its key."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from components import catalogue
from components.config import (
    AccessConfig,
    ConfigError,
    HostConfig,
    MirrorConfig,
    ModelConfig,
    NetworkConfig,
    Problem,
    StackConfig,
    TlsConfig,
    check_provided_certificate,
    rules,
    validate,
)
from tests.harness import USER_VALUES, merged, stack_config, stack_file
from tools.standins.pki import make_pki


def config_of(*overrides: dict[str, Any], stack: str = "prod") -> tuple[StackConfig, list[str]]:
    raw = stack_config(stack, *overrides)
    return validate({k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, stack)


def problems_of(*overrides: dict[str, Any], stack: str = "prod") -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config_of(*overrides, stack=stack)
    return caught.value


def test_defaults_reproduce_the_reference_setup() -> None:
    config, warnings = validate(
        {
            "gcp:project": "my-project",
            "gcp:zone": "us-central1-a",
            "vllm-gcp:access": json.dumps({"sshCidrs": ["198.51.100.7/32"]}),
        },
        "prod",
    )
    assert warnings == []
    assert config.host.machine_type == "a2-ultragpu-2g"
    assert config.machine.gpu_count == 2
    assert config.machine.gpu.accelerator == "nvidia-a100-80gb"
    assert config.model.id == "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
    assert config.model.served_model_name == config.model.id
    assert config.model.effective_tool_call_parser == "mistral"
    assert config.model.family is not None
    assert "--tokenizer-mode" in config.model.family.vllm_flags
    assert config.tensor_parallel_size == 2
    assert config.model.gpu_memory_utilization == 0.90
    assert config.host.image == catalogue.DEFAULT_HOST_IMAGE
    assert config.tls.mode == "self-signed"
    assert config.access.api_cidrs == ["0.0.0.0/0"]
    assert config.network.exposure == "public"
    assert config.region == "us-central1"
    assert config.elastic is None
    version = config.model.vllm_version
    assert version is not None
    assert catalogue.advisories_for(version) == []


def test_prod_stack_is_the_reference_setup() -> None:
    config, _ = config_of(stack="prod")
    assert config.host.machine_type == "a2-ultragpu-2g"
    assert config.host.provisioning == "standard"
    assert config.tensor_parallel_size == 2


def test_dev_stack_is_a_cheap_spot_l4() -> None:
    config, _ = config_of(stack="dev")
    assert config.host.machine_type == "g2-standard-8"
    assert config.machine.gpu.accelerator == "nvidia-l4"
    assert config.host.provisioning == "spot"
    assert config.model.effective_tool_call_parser == "hermes"
    assert config.tensor_parallel_size == 1


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_stack_files_stop_until_the_two_user_values_are_set(stack: str) -> None:
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in stack_file(stack).items()}
    with pytest.raises(ConfigError) as caught:
        validate(raw, stack)
    message = str(caught.value)
    assert {p.key for p in caught.value.problems} == {"gcp:project", "vllm-gcp:access.sshCidrs"}
    assert "pulumi config set gcp:project <your-gcp-project-id>" in message
    assert "pulumi config set --path 'vllm-gcp:access.sshCidrs[0]' <your-public-ip>/32" in message


def test_stack_files_set_nothing_else_for_the_user() -> None:
    for stack in ("prod", "dev"):
        keys = set(stack_file(stack))
        assert "gcp:project" not in keys
        assert "sshCidrs" not in stack_file(stack).get("vllm-gcp:access", {})
    assert set(USER_VALUES) == {"gcp:project", "vllm-gcp:access"}


# Each mistake: the overrides that make it, the key path it must be reported under, and a
# fragment of the message that says what would be valid.
BAD_CONFIGS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "tensor parallel does not divide the GPUs",
        {"vllm-gcp:model": {"tensorParallelSize": 3}},
        "vllm-gcp:model.tensorParallelSize",
        "valid: 1, 2",
    ),
    (
        "gpu memory utilisation zero",
        {"vllm-gcp:model": {"gpuMemoryUtilization": 0}},
        "vllm-gcp:model.gpuMemoryUtilization",
        "0 is not in (0, 1]",
    ),
    (
        "gpu memory utilisation above one",
        {"vllm-gcp:model": {"gpuMemoryUtilization": 1.2}},
        "vllm-gcp:model.gpuMemoryUtilization",
        "1.2 is not in (0, 1]",
    ),
    (
        "machine type without a GPU",
        {"vllm-gcp:host": {"machineType": "n2-standard-8"}},
        "vllm-gcp:host.machineType",
        "a2-ultragpu-2g",
    ),
    (
        "unknown machine type, close to a known one",
        {"vllm-gcp:host": {"machineType": "a2-ultragpu-3g"}},
        "vllm-gcp:host.machineType",
        "did you mean",
    ),
    (
        "zone known not to offer the GPU",
        {"gcp:zone": "europe-west1-b"},
        "gcp:zone",
        "skipZoneCheck true",
    ),
    (
        "malformed zone",
        {"gcp:zone": "us-central1"},
        "gcp:zone",
        "us-central1-a",
    ),
    (
        "invalid API CIDR",
        {"vllm-gcp:access": {"apiCidrs": ["10.0.0.300/8"]}},
        "vllm-gcp:access.apiCidrs[0]",
        "not a CIDR range",
    ),
    (
        "CIDR with host bits",
        {"vllm-gcp:access": {"apiCidrs": ["10.1.2.3/8"]}},
        "vllm-gcp:access.apiCidrs[0]",
        "did you mean 10.0.0.0/8",
    ),
    (
        "SSH open to the world",
        {"vllm-gcp:access": {"sshCidrs": ["0.0.0.0/0"]}},
        "vllm-gcp:access.sshCidrs[0]",
        "203.0.113.7/32",
    ),
    (
        "no SSH source",
        {"vllm-gcp:access": {"sshCidrs": []}},
        "vllm-gcp:access.sshCidrs",
        "required, non-empty",
    ),
    (
        "letsencrypt without a domain",
        {"vllm-gcp:tls": {"mode": "letsencrypt", "email": "ops@example.com"}},
        "vllm-gcp:tls.domain",
        "required for letsencrypt",
    ),
    (
        "letsencrypt without an email",
        {"vllm-gcp:tls": {"mode": "letsencrypt", "domain": "llm.example.com"}},
        "vllm-gcp:tls.email",
        "required for letsencrypt",
    ),
    (
        "provided mode without certificate and key",
        {"vllm-gcp:tls": {"mode": "provided", "domain": "llm.example.com"}},
        "vllm-gcp:tlsCertificate",
        "pulumi config set --secret vllm-gcp:tlsCertificate",
    ),
    (
        "a model whose weights cannot fit the GPUs",
        {"vllm-gcp:model": {"id": "meta-llama/Llama-3.3-70B-Instruct"}},
        "vllm-gcp:model.id",
        "141 GB",
    ),
    (
        "a typo in a top-level key",
        {"vllm-gcp:hots": {"machineType": "a2-ultragpu-2g"}},
        "vllm-gcp:hots",
        "did you mean 'host'",
    ),
    (
        "a typo in a nested key",
        {"vllm-gcp:model": {"tensorParalelSize": 2}},
        "vllm-gcp:model.tensorParalelSize",
        "did you mean 'tensorParallelSize'",
    ),
    (
        "unknown provisioning model",
        {"vllm-gcp:host": {"provisioning": "preemptible"}},
        "vllm-gcp:host.provisioning",
        "'standard' or 'spot'",
    ),
    (
        "an unpinned vLLM image",
        {"vllm-gcp:model": {"image": "vllm/vllm-openai:latest"}},
        "vllm-gcp:model.image",
        "pin a release",
    ),
    (
        "extraArgs overriding the loopback port",
        {"vllm-gcp:model": {"extraArgs": ["--max-num-seqs", "64", "--port=9000"]}},
        "vllm-gcp:model.extraArgs[2]",
        "set by the stack",
    ),
    (
        "unknown tool-call parser",
        {"vllm-gcp:model": {"toolCallParser": "mistrall"}},
        "vllm-gcp:model.toolCallParser",
        "did you mean 'mistral'",
    ),
    (
        "GCS source without a URI",
        {"vllm-gcp:model": {"source": "gcs"}},
        "vllm-gcp:model.gcsUri",
        "gs://bucket/prefix",
    ),
    (
        "Kibana URL without a Kibana API key",
        {"vllm-gcp:elastic": {"kibanaUrl": "https://kb.example.com"}},
        "vllm-gcp:kibanaApiKey",
        "pulumi config set --secret vllm-gcp:kibanaApiKey",
    ),
    (
        "an on-demand A3 High below 8 GPUs",
        {"vllm-gcp:host": {"machineType": "a3-highgpu-2g"}},
        "vllm-gcp:host.provisioning",
        "only as Spot",
    ),
    (
        "a CUDA 13 vLLM on a host image with an older driver",
        {
            "vllm-gcp:host": {
                "image": "projects/ubuntu-os-accelerator-images/global/images/family/"
                "ubuntu-accelerator-2404-amd64-with-nvidia-570"
            }
        },
        "vllm-gcp:model.image",
        "driver 580+",
    ),
    (
        "a subnet without its VPC",
        {"vllm-gcp:network": {"subnet": "llm-subnet"}},
        "vllm-gcp:network.subnet",
        "needs network.vpc",
    ),
    (
        "SSH as root",
        {"vllm-gcp:host": {"sshUser": "root"}},
        "vllm-gcp:host.sshUser",
        "use a user such as vllm",
    ),
    (
        "private exposure open to the world",
        {
            "vllm-gcp:network": {"exposure": "private"},
            "vllm-gcp:access": {"sshCidrs": ["10.0.0.0/8"]},
        },
        "vllm-gcp:access.apiCidrs[0]",
        "not a private range",
    ),
    (
        "private exposure with a public SSH source",
        {
            "vllm-gcp:network": {"exposure": "private"},
            "vllm-gcp:access": {"apiCidrs": ["10.0.0.0/8"]},
        },
        "vllm-gcp:access.sshCidrs[0]",
        "not a private range",
    ),
    (
        "letsencrypt on a private endpoint",
        {
            "vllm-gcp:network": {"exposure": "private"},
            "vllm-gcp:tls": {
                "mode": "letsencrypt",
                "domain": "llm.example.com",
                "email": "ops@example.com",
            },
        },
        "vllm-gcp:tls.mode",
        "use self-signed or provided",
    ),
    (
        "private exposure pulling weights from Hugging Face",
        {"vllm-gcp:network": {"exposure": "private"}},
        "vllm-gcp:model.source",
        "cannot reach Hugging Face",
    ),
    (
        "private exposure without a Docker mirror",
        {"vllm-gcp:network": {"exposure": "private"}},
        "vllm-gcp:mirror.dockerRemote",
        "cannot pull from Docker Hub",
    ),
    (
        "private exposure on an image without the container toolkit",
        {"vllm-gcp:network": {"exposure": "private"}},
        "vllm-gcp:host.image",
        "prepared image",
    ),
    (
        "a section that is not an object",
        {"vllm-gcp:tls": "letsencrypt"},
        "vllm-gcp:tls",
        "must be an object",
    ),
    (
        "a boot disk too small for the weights where no local SSD holds them",
        {
            "vllm-gcp:host": {"machineType": "g2-standard-8", "bootDiskGb": 60},
            "vllm-gcp:model": {"id": "Qwen/Qwen2.5-7B-Instruct"},
        },
        "vllm-gcp:host.bootDiskGb",
        "give at least 77",
    ),
    (
        "a public subnet range",
        {"vllm-gcp:network": {"subnetCidr": "8.8.8.0/24"}},
        "vllm-gcp:network.subnetCidr",
        "private",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [case[1:] for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_bad_configuration_is_refused_by_key(
    overrides: dict[str, Any], key: str, fragment: str
) -> None:
    error = problems_of(overrides)
    matching = [p for p in error.problems if p.key == key]
    assert matching, f"no problem reported at {key}: {error}"
    assert any(fragment in p.message for p in matching), str(error)
    assert f"{key}: " in str(error)


def test_every_problem_is_reported_at_once() -> None:
    error = problems_of(
        {
            "gcp:zone": "europe-west1-b",
            "vllm-gcp:model": {"gpuMemoryUtilization": 2, "toolCallParser": "nope"},
            "vllm-gcp:access": {"sshCidrs": ["0.0.0.0/0"], "apiCidrs": ["bad"]},
            "vllm-gcp:tls": {"mode": "letsencrypt"},
            "vllm-gcp:unknown": 1,
        }
    )
    keys = {p.key for p in error.problems}
    assert keys >= {
        "gcp:zone",
        "vllm-gcp:model.gpuMemoryUtilization",
        "vllm-gcp:model.toolCallParser",
        "vllm-gcp:access.sshCidrs[0]",
        "vllm-gcp:access.apiCidrs[0]",
        "vllm-gcp:tls.domain",
        "vllm-gcp:tls.email",
        "vllm-gcp:unknown",
    }
    assert str(error).startswith(f"The stack configuration has {len(error.problems)} problem(s):")


def test_skip_zone_check_trusts_the_zone() -> None:
    config, _ = config_of({"gcp:zone": "europe-west1-b", "vllm-gcp:host": {"skipZoneCheck": True}})
    assert config.zone == "europe-west1-b"
    assert config.region == "europe-west1"


def test_every_catalogued_machine_is_a_gpu_machine_with_zones() -> None:
    for name in ("a2-highgpu-1g", "a2-ultragpu-8g", "a3-highgpu-8g", "g2-standard-96"):
        spec = catalogue.MACHINE_TYPES[name]
        assert spec.gpu_count >= 1
        assert spec.gpu.zones
    assert catalogue.MACHINE_TYPES["a2-ultragpu-2g"].local_ssd_count == 2


def test_model_families_pick_the_tool_call_parser() -> None:
    cases = {
        "mistralai/Mistral-Small-3.2-24B-Instruct-2506": "mistral",
        "meta-llama/Llama-3.1-8B-Instruct": "llama3_json",
        "meta-llama/Llama-3.3-70B-Instruct": "llama3_json",
        "Qwen/Qwen2.5-7B-Instruct": "hermes",
        "NousResearch/Hermes-3-Llama-3.1-8B": "hermes",
    }
    for model_id, parser in cases.items():
        family = catalogue.family_of(model_id)
        assert family is not None, model_id
        assert family.tool_call_parser == parser
    assert catalogue.family_of("google/gemma-2-9b-it") is None


def test_tool_calling_can_be_turned_off_and_overridden() -> None:
    off, _ = config_of({"vllm-gcp:model": {"toolCallParser": "none"}})
    assert off.model.effective_tool_call_parser is None
    pythonic, _ = config_of({"vllm-gcp:model": {"toolCallParser": "pythonic"}})
    assert pythonic.model.effective_tool_call_parser == "pythonic"


def test_mixtral_takes_a_tool_call_parser_given_explicitly() -> None:
    config, warnings = config_of(
        {
            "vllm-gcp:model": {
                "id": "mistralai/Mixtral-8x22B-Instruct-v0.1",
                "toolCallParser": "mistral",
            }
        }
    )
    # Not catalogued: its fit is not checked (and says so).
    assert [w.split(" is not in the catalogue")[0] for w in warnings] == [
        "vllm-gcp:model.id mistralai/Mixtral-8x22B-Instruct-v0.1"
    ]
    assert config.model.family is not None
    assert config.model.family.name == "mixtral"
    assert config.model.family.vllm_flags == ()
    assert config.model.effective_tool_call_parser == "mistral"
    default, _ = config_of({"vllm-gcp:model": {"id": "mistralai/Mixtral-8x22B-Instruct-v0.1"}})
    assert default.model.effective_tool_call_parser is None


def test_an_unknown_tool_call_parser_is_refused_with_a_did_you_mean() -> None:
    error = problems_of({"vllm-gcp:model": {"toolCallParser": "qwen3-xml"}})
    (problem,) = [p for p in error.problems if p.key == "vllm-gcp:model.toolCallParser"]
    assert problem.message.startswith(
        "'qwen3-xml' is not a vLLM tool-call parser; did you mean 'qwen3_xml'? (valid: none, "
    )


def test_qwen3_coder_gets_the_qwen3_xml_parser() -> None:
    config, _ = config_of({"vllm-gcp:model": {"id": "Qwen/Qwen3-Coder-30B-A3B-Instruct"}})
    assert config.model.effective_tool_call_parser == "qwen3_xml"


def test_llama_3_0_gets_no_tool_call_parser_and_3_1_does() -> None:
    old, _ = config_of({"vllm-gcp:model": {"id": "meta-llama/Meta-Llama-3-8B-Instruct"}})
    assert old.model.effective_tool_call_parser is None
    new, _ = config_of({"vllm-gcp:model": {"id": "meta-llama/Llama-3.1-8B-Instruct"}})
    assert new.model.effective_tool_call_parser == "llama3_json"


def test_a_release_before_0_26_warns_of_the_advisories_fixed_there() -> None:
    _, warnings = config_of({"vllm-gcp:model": {"image": "vllm/vllm-openai:v0.25.0"}})
    assert len(warnings) == 1
    listed = [part.split(" (", 1)[0] for part in warnings[0].split(": ", 1)[1].split("; ")]
    assert listed == [
        "CVE-2026-71486",
        "CVE-2026-73555",
        "CVE-2026-73556",
        "CVE-2026-73559",
        "CVE-2026-73560",
        "CVE-2026-73558",
    ]
    _, none = config_of({"vllm-gcp:model": {"image": "vllm/vllm-openai:v0.27.0"}})
    assert none == []


def test_an_older_vllm_is_allowed_with_a_warning_naming_its_advisories() -> None:
    config, warnings = config_of({"vllm-gcp:model": {"image": "vllm/vllm-openai:v0.9.1"}})
    assert config.model.vllm_version == (0, 9, 1)
    assert len(warnings) == 1
    assert "CVE-2026-48746" in warnings[0]
    assert "CVE-2026-55574" in warnings[0]


def test_a_well_formed_private_configuration_is_accepted() -> None:
    config, _ = config_of(
        {
            "vllm-gcp:network": {"exposure": "private", "sshJumpHost": "ops@10.0.0.5"},
            "vllm-gcp:access": {"apiCidrs": ["10.0.0.0/8"], "sshCidrs": ["10.0.0.0/8"]},
            "vllm-gcp:mirror": {"dockerRemote": True, "aptRemote": True},
            "vllm-gcp:model": {"source": "gcs", "gcsUri": "gs://weights-bucket/mistral-small"},
            "vllm-gcp:host": {"image": "projects/my-project/global/images/family/vllm-host"},
        }
    )
    assert config.network.private
    assert config.model.gcs_uri == "gs://weights-bucket/mistral-small"


def _certificate(name: str) -> tuple[str, str]:
    """A certificate for `name` (issued by a fresh test CA, valid for a day) and its key."""
    pki = make_pki(name, dns_names=(name,))
    return pki.certificate_pem, pki.key_pem


def test_a_provided_certificate_is_checked_before_use() -> None:
    good_cert, good_key = _certificate("llm.example.com")
    assert check_provided_certificate(good_cert, good_key, "llm.example.com") == []
    wildcard_cert, wildcard_key = _certificate("*.example.com")
    assert check_provided_certificate(wildcard_cert, wildcard_key, "llm.example.com") == []

    _, other_key = _certificate("llm.example.com")
    assert check_provided_certificate(good_cert, other_key, "llm.example.com") == [
        "does not match tlsPrivateKey"
    ]
    later = datetime.now(UTC) + timedelta(days=365)
    assert "expired on" in check_provided_certificate(good_cert, good_key, None, now=later)[0]
    assert check_provided_certificate(good_cert, good_key, "other.example.com") == [
        "does not name other.example.com in its subject alternative names"
    ]
    assert check_provided_certificate("not a pem", good_key, None) == ["is not a PEM certificate"]


def test_provided_mode_refuses_a_mismatched_key_through_the_stack() -> None:
    cert, _ = _certificate("llm.example.com")
    _, other_key = _certificate("llm.example.com")
    raw = merged(
        stack_config("prod"),
        {"vllm-gcp:tls": {"mode": "provided", "domain": "llm.example.com"}},
    )
    raw["vllm-gcp:tlsCertificate"] = cert
    raw["vllm-gcp:tlsPrivateKey"] = other_key
    with pytest.raises(ConfigError) as caught:
        validate({k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, "prod")
    assert [(p.key, p.message) for p in caught.value.problems] == [
        ("vllm-gcp:tlsCertificate", "does not match tlsPrivateKey")
    ]
    assert other_key not in str(caught.value)


# The cross-field rules, called directly: each returns exactly the problems it finds.

PREPARED_IMAGE = "projects/my-project/global/images/family/vllm-host"


def test_the_machine_rule_refuses_a_zone_without_the_gpu_and_accepts_one_with_it() -> None:
    host = HostConfig()
    (problem,) = rules.check_machine(host, "europe-west1-b")
    assert problem.key == "gcp:zone"
    assert problem.message.startswith(
        "europe-west1-b is not known to offer NVIDIA A100 80GB (a2-ultragpu-2g) as of "
    )
    assert problem.message.endswith(
        "set `pulumi config set --path vllm-gcp:host.skipZoneCheck true`"
    )
    assert rules.check_machine(host, "us-central1-a") == []
    assert rules.check_machine(HostConfig(skip_zone_check=True), "europe-west1-b") == []


def test_the_letsencrypt_rule_needs_a_domain() -> None:
    without_domain = TlsConfig(mode="letsencrypt", email="ops@example.com")
    assert rules.check_letsencrypt(without_domain) == [
        Problem("vllm-gcp:tls.domain", "required for letsencrypt: a name that resolves to the IP")
    ]
    complete = TlsConfig(mode="letsencrypt", domain="llm.example.com", email="ops@example.com")
    assert rules.check_letsencrypt(complete) == []


def test_the_private_mode_rule_needs_a_prepared_image() -> None:
    private = NetworkConfig(exposure="private")
    access = AccessConfig(api_cidrs=["10.0.0.0/8"], ssh_cidrs=["10.0.0.0/8"])
    model = ModelConfig(source="gcs", gcs_uri="gs://weights-bucket/mistral-small")
    mirror = MirrorConfig(docker_remote=True)
    (problem,) = rules.check_private_mode(private, access, TlsConfig(), model, mirror, HostConfig())
    assert problem.key == "vllm-gcp:host.image"
    assert "give host.image a prepared image" in problem.message
    prepared = HostConfig(image=PREPARED_IMAGE)
    assert rules.check_private_mode(private, access, TlsConfig(), model, mirror, prepared) == []
    # A public endpoint needs none of it.
    public = NetworkConfig()
    assert rules.check_private_mode(public, None, None, ModelConfig(), MirrorConfig(), None) == []


def test_the_model_fit_rule_needs_a_tensor_parallel_size_dividing_the_gpus() -> None:
    assert rules.check_model_fit(ModelConfig(tensor_parallel_size=3), HostConfig()) == [
        Problem(
            "vllm-gcp:model.tensorParallelSize",
            "3 does not divide the 2 GPU(s) of a2-ultragpu-2g; valid: 1, 2",
        )
    ]
    assert rules.check_model_fit(ModelConfig(tensor_parallel_size=2), HostConfig()) == []


def test_the_ssh_rule_reports_the_missing_sources_as_a_user_value() -> None:
    assert rules.check_ssh_sources(AccessConfig()) == [rules.MISSING_SSH_CIDRS]
    assert rules.check_ssh_sources(AccessConfig(ssh_cidrs=["198.51.100.7/32"])) == []


# --- The messages a newcomer met (issue 14, item 7): each says what to fix, once ---


def _problems(error: ConfigError) -> set[tuple[str, str]]:
    return {(p.key, p.message) for p in error.problems}


def test_a_malformed_ssh_source_is_one_problem_without_the_missing_value_hint() -> None:
    error = problems_of({"vllm-gcp:access": {"sshCidrs": ["203.0.113.7/33"]}})
    assert _problems(error) == {
        (
            "vllm-gcp:access.sshCidrs[0]",
            "'203.0.113.7/33' is not a CIDR range such as 203.0.113.7/32",
        )
    }
    assert "Set the values this stack leaves to you" not in str(error)


def test_ssh_sources_set_as_one_string_say_how_to_set_a_list() -> None:
    # What `pulumi config set --path vllm-gcp:access.sshCidrs 203.0.113.7/32` (no index) stores.
    error = problems_of({"vllm-gcp:access": {"sshCidrs": "203.0.113.7/32"}})
    assert _problems(error) == {
        (
            "vllm-gcp:access.sshCidrs",
            "must be a list, not the single value '203.0.113.7/32': set its first item with "
            "`pulumi config set --path 'vllm-gcp:access.sshCidrs[0]' 203.0.113.7/32`",
        )
    }


def test_a_rule_about_a_section_is_dropped_when_its_key_was_refused() -> None:
    # Without the refused kibanaUrl, elastic would also be "set kibanaUrl ... or both".
    error = problems_of(
        {"vllm-gcp:elastic": {"kibanaUrl": "kb.example.com"}, "vllm-gcp:kibanaApiKey": "key"}
    )
    assert _problems(error) == {
        (
            "vllm-gcp:elastic.kibanaUrl",
            "'kb.example.com' is not valid; expected something like "
            "https://my-deployment.kb.example.com",
        )
    }


def test_the_project_under_the_programs_namespace_points_at_gcp_project() -> None:
    error = problems_of({"vllm-gcp:project": "my-project"})
    assert _problems(error) == {
        (
            "vllm-gcp:project",
            "unknown key; did you mean `gcp:project`? The project is the Google provider's "
            "setting: pulumi config set gcp:project <value>",
        )
    }


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (90, "90 looks like a percentage, and this is a fraction of each GPU's memory (at most "
         "1); did you mean 0.9?"),
        (100, "100 looks like a percentage, and this is a fraction of each GPU's memory (at most "
         "1); did you mean 1?"),
        (5, "5 is not in (0, 1]: the fraction of each GPU's memory vLLM may use, such as 0.9"),
        (-0.5, "-0.5 is not in (0, 1]: the fraction of each GPU's memory vLLM may use, such as "
         "0.9"),
    ],
)  # fmt: skip
def test_gpu_memory_utilization_is_a_fraction(given: float, message: str) -> None:
    error = problems_of({"vllm-gcp:model": {"gpuMemoryUtilization": given}})
    assert _problems(error) == {("vllm-gcp:model.gpuMemoryUtilization", message)}


def test_a_model_the_catalogue_does_not_know_warns_that_its_fit_was_not_checked() -> None:
    config, warnings = config_of({"vllm-gcp:model": {"id": "google/gemma-2-9b-it"}})
    assert config.model.id == "google/gemma-2-9b-it"
    assert warnings == [
        "vllm-gcp:model.id google/gemma-2-9b-it is not in the catalogue, so whether its weights "
        "fit the GPUs (and the boot disk, where no local SSD holds them) was not checked: a "
        "model too large for them fails when vLLM starts, after the VM is up"
    ]
    _, known = config_of({"vllm-gcp:model": {"id": "Qwen/Qwen2.5-7B-Instruct"}})
    assert known == []


def test_a_max_model_len_beyond_the_models_context_is_refused() -> None:
    error = problems_of({"vllm-gcp:model": {"maxModelLen": 131072}})
    assert _problems(error) == {
        (
            "vllm-gcp:model.maxModelLen",
            "131072 is above the 128000-token context vLLM derives for "
            "mistralai/Mistral-Small-3.2-24B-Instruct-2506 from its config, and vLLM refuses to "
            "start with a longer one; give at most 128000 (a RoPE scaling through extraArgs "
            "--hf-overrides lifts this check)",
        )
    }
    at_limit, _ = config_of({"vllm-gcp:model": {"maxModelLen": 128000}})
    assert at_limit.model.max_model_len == 128000
    scaled = {
        "id": "Qwen/Qwen2.5-7B-Instruct",
        "maxModelLen": 131072,
        "extraArgs": [
            "--hf-overrides",
            '{"rope_scaling": {"rope_type": "yarn", "factor": 4.0, '
            '"original_max_position_embeddings": 32768}}',
        ],
    }
    _, warnings = config_of({"vllm-gcp:model": scaled}, stack="dev")
    assert warnings == []


def test_a_max_model_len_for_a_model_without_a_known_context_warns() -> None:
    _, warnings = config_of(
        {"vllm-gcp:model": {"id": "mistralai/Mixtral-8x7B-Instruct-v0.1", "maxModelLen": 65536}}
    )
    assert warnings == [
        "vllm-gcp:model.maxModelLen 65536 was not checked against "
        "mistralai/Mixtral-8x7B-Instruct-v0.1's context, which the catalogue does not know: "
        "vLLM will not start with one above the context it derives from the model's config"
    ]


def test_every_model_with_a_known_context_has_a_known_size() -> None:
    assert set(catalogue.KNOWN_CONTEXT_TOKENS) <= set(catalogue.KNOWN_MODEL_PARAMS_B)


@pytest.mark.parametrize(
    "project",
    ["my-project", "abcdef", "a" * 30, "proj-2026-x1", "example.com:my-project", "google.com:ab"],
)
def test_valid_project_ids_are_accepted(project: str) -> None:
    config, _ = config_of({"gcp:project": project})
    assert config.project == project


NOT_AN_ID = (
    "is not a GCP project id: 6 to 30 lowercase letters, digits and hyphens, starting with a "
    "letter and not ending with a hyphen, such as my-project-123 (the id, not the project's "
    "display name: `gcloud projects list` shows both)"
)


@pytest.mark.parametrize(
    ("project", "message"),
    [
        ("My Project", f"'My Project' {NOT_AN_ID}"),
        ("my-project-", f"'my-project-' {NOT_AN_ID}"),
        ("short", f"'short' {NOT_AN_ID}"),
        ("a" * 31, f"'{'a' * 31}' {NOT_AN_ID}"),
        ("1project", f"'1project' {NOT_AN_ID}"),
        ("my_project", f"'my_project' {NOT_AN_ID}"),
        (":my-project", f"':my-project' {NOT_AN_ID}"),
        (
            "123456789012",
            "123456789012 is a project number; give the project id (`gcloud projects describe "
            "123456789012 --format='value(projectId)'`)",
        ),
    ],
)
def test_invalid_project_ids_are_refused(project: str, message: str) -> None:
    assert _problems(problems_of({"gcp:project": project})) == {("gcp:project", message)}
