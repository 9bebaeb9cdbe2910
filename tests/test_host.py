"""The GPU host under the engine's mocks, in the program as __main__.py wires it."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Mapping
from typing import Any

import pulumi
import pytest

from components import config
from components.host_bundle import GPU_CHECK_IMAGE
from components.identity import HOST_ROLES, service_account_id
from components.mirror import UBUNTU_SUITES, apt_sources, repository_id
from tests.harness import (
    GET_IMAGE,
    MOCK_IMAGE_VERSION,
    MOCK_PRIVATE_IP,
    MOCK_PUBLIC_IP,
    MOCK_SSH_PRIVATE_KEY,
    Plan,
    RecordingMocks,
    run_program,
    stack_config,
)

INSTANCE = "gcp:compute/instance:Instance"
ADDRESS_ATTRIBUTES = ("public_ip", "private_ip", "endpoint_address")
IAM_MEMBER = "gcp:projects/iAMMember:IAMMember"
ACCOUNT = "gcp:serviceaccount/account:Account"
PRIVATE = {
    "vllm-gcp:network": {"exposure": "private"},
    "vllm-gcp:access": {"apiCidrs": ["10.0.0.0/8"], "sshCidrs": ["10.20.0.5/32"]},
    "vllm-gcp:model": {"source": "gcs", "gcsUri": "gs://weights-bucket/mistral"},
    "vllm-gcp:mirror": {"dockerRemote": True, "aptRemote": True},
    "vllm-gcp:host": {"image": "projects/test-project/global/images/vllm-host-2404-nvidia-580"},
}


def instance_inputs(built: Plan) -> dict[str, Any]:
    return built.one(INSTANCE).plain


async def _source_names(output: pulumi.Output[str]) -> list[str]:
    """The names of the resources an output comes from."""
    urns = [await resource.urn.future() for resource in await output.resources()]
    return sorted(str(urn).rsplit("::", 1)[-1] for urn in urns)


def observe_host(program: Mapping[str, Any]) -> dict[str, object]:
    """The host's and network's attributes, from the program's own components."""
    host, network, identity = program["host"], program["network"], program["identity"]
    sources = {
        f"{attribute}_sources": pulumi.Output.from_input(
            asyncio.ensure_future(_source_names(getattr(host, attribute)))
        )
        for attribute in ADDRESS_ATTRIBUTES
        if getattr(host, attribute) is not None
    }
    return {
        **sources,
        "host_tag": network.host_tag,
        "instance_name": host.instance_name,
        "instance_id": host.instance_id,
        "ssh_private_key": host.ssh_private_key,
        "private_ip": host.private_ip,
        "endpoint_address": host.endpoint_address,
        "service_account_email": identity.email,
        "public_ip": host.public_ip,
        "boot_image": host.boot_image,
    }


def build(stack: str, *overrides: dict[str, Any], mocks: RecordingMocks | None = None) -> Plan:
    """The whole program for stacks/Pulumi.<stack>.yaml with these overrides."""
    return run_program(
        stack_config(stack, *overrides), stack=stack, mocks=mocks, observe=observe_host
    )


@pytest.fixture(scope="module")
def prod() -> Plan:
    return build("prod")


@pytest.fixture(scope="module")
def dev() -> Plan:
    return build("dev")


def test_prod_plans_one_standard_a2_ultragpu_2g(prod: Plan) -> None:
    instance = instance_inputs(prod)
    assert instance["machineType"] == "a2-ultragpu-2g"
    assert instance["zone"] == "us-central1-a"
    assert instance["scheduling"] == {
        "onHostMaintenance": "TERMINATE",
        "provisioningModel": "STANDARD",
        "preemptible": False,
        "automaticRestart": True,
    }
    assert instance["allowStoppingForUpdate"] is True
    # A2/A3/G2 attach their GPUs by machine type.
    assert "guestAccelerators" not in instance


def test_dev_plans_a_spot_g2_standard_8(dev: Plan) -> None:
    instance = instance_inputs(dev)
    assert instance["machineType"] == "g2-standard-8"
    assert instance["scheduling"] == {
        "onHostMaintenance": "TERMINATE",
        "provisioningModel": "SPOT",
        "preemptible": True,
        "automaticRestart": False,
        "instanceTerminationAction": "STOP",
    }
    assert instance["bootDisk"]["initializeParams"]["size"] == 150


ACCELERATOR_PROJECT = "ubuntu-os-accelerator-images"
ACCELERATOR_FAMILY = "ubuntu-accelerator-2404-amd64-with-nvidia-580"
NEWEST_IMAGE = (
    f"https://www.googleapis.com/compute/v1/projects/{ACCELERATOR_PROJECT}/global/images/"
    f"{ACCELERATOR_FAMILY}-{MOCK_IMAGE_VERSION}"
)
STASH = "pulumi:index:Stash"


def test_boot_disk_is_the_gpu_ready_image_sized_from_config(prod: Plan) -> None:
    params = instance_inputs(prod)["bootDisk"]["initializeParams"]
    # The family resolved to a concrete image, which the provider matches to the state exactly.
    assert params == {"image": NEWEST_IMAGE, "size": 500, "type": "pd-balanced"}
    assert instance_inputs(prod)["bootDisk"]["autoDelete"] is True
    assert prod.outputs["boot_image"] == NEWEST_IMAGE


def test_the_family_is_resolved_once_and_kept_in_a_stash_replaced_with_host_image(
    prod: Plan,
) -> None:
    stash = prod.one(STASH)
    assert stash.name == "vllm-host-image"
    assert stash.plain == {"input": NEWEST_IMAGE}
    # Replaced with everything that replaces the VM: a new VM boots the family's newest image.
    assert stash.options.replacement_trigger == {
        "image": config.catalogue.DEFAULT_HOST_IMAGE,
        "machineType": "a2-ultragpu-2g",
        "provisioning": "standard",
        "zone": "us-central1-a",
    }
    assert prod.calls == [
        (GET_IMAGE, {"family": ACCELERATOR_FAMILY, "project": ACCELERATOR_PROJECT})
    ]


def test_a_newer_image_in_the_family_leaves_the_vm_on_the_image_it_was_created_from() -> None:
    created_from = NEWEST_IMAGE.replace(MOCK_IMAGE_VERSION, "v20260301")
    later = build("prod", mocks=RecordingMocks(stashed={"vllm-host-image": created_from}))
    # The Stash's input follows the family; the VM follows what the Stash saved.
    assert later.one(STASH).plain == {"input": NEWEST_IMAGE}
    assert instance_inputs(later)["bootDisk"]["initializeParams"]["image"] == created_from


def test_a_concrete_host_image_is_used_as_given_without_a_stash() -> None:
    image = "projects/my-project/global/images/vllm-host-2404-nvidia-580-v3"
    built = build("prod", {"vllm-gcp:host": {"image": image}})
    assert instance_inputs(built)["bootDisk"]["initializeParams"]["image"] == image
    assert built.of_type(STASH) == []
    assert built.calls == []


def test_the_vm_is_kept_running(prod: Plan, dev: Plan) -> None:
    # A preempted Spot VM (dev) is started again by the next up, through the refresh.
    for built in (prod, dev):
        assert instance_inputs(built)["desiredStatus"] == "RUNNING"


def test_shielded_vm_keeps_secure_boot_vtpm_and_integrity_monitoring(prod: Plan) -> None:
    assert instance_inputs(prod)["shieldedInstanceConfig"] == {
        "enableSecureBoot": True,
        "enableVtpm": True,
        "enableIntegrityMonitoring": True,
    }


def test_metadata_sets_the_startup_script_key_and_the_stack_ssh_key(prod: Plan) -> None:
    instance = instance_inputs(prod)
    assert "metadataStartupScript" not in instance
    metadata = instance["metadata"]
    assert set(metadata) == {
        "startup-script",
        "ssh-keys",
        "enable-oslogin",
        "block-project-ssh-keys",
    }
    assert metadata["startup-script"].startswith("#!/usr/bin/env bash\n")
    assert "readonly GPU_COUNT='2'\n" in metadata["startup-script"]
    assert metadata["ssh-keys"] == "vllm:ssh-ed25519 AAAAmockvllm-ssh-key"
    assert metadata["enable-oslogin"] == "FALSE"
    assert metadata["block-project-ssh-keys"] == "TRUE"


def test_ssh_key_is_ed25519_and_its_private_half_a_secret(prod: Plan) -> None:
    key = prod.named("vllm-ssh-key")
    assert key.plain == {"algorithm": "ED25519"}
    assert prod.outputs["ssh_private_key"] == MOCK_SSH_PRIVATE_KEY
    assert "ssh_private_key" in prod.secret_outputs
    assert "instance_name" not in prod.secret_outputs


def test_the_host_runs_as_its_own_service_account_with_two_roles(prod: Plan) -> None:
    (account,) = prod.of_type(ACCOUNT)
    account_id = account.plain["accountId"]
    assert account_id == "vllm-prod-host"
    email = f"{account_id}@test-project.iam.gserviceaccount.com"
    assert instance_inputs(prod)["serviceAccount"] == {"email": email, "scopes": ["cloud-platform"]}
    assert not email.endswith("-compute@developer.gserviceaccount.com")
    grants = sorted((m.plain["role"], m.plain["member"]) for m in prod.of_type(IAM_MEMBER))
    assert grants == sorted((role, f"serviceAccount:{email}") for role in HOST_ROLES)
    assert set(HOST_ROLES) == {"roles/logging.logWriter", "roles/monitoring.metricWriter"}
    assert prod.outputs["service_account_email"] == email


def test_network_interface_tags_and_labels(prod: Plan) -> None:
    instance = instance_inputs(prod)
    (interface,) = instance["networkInterfaces"]
    assert interface["subnetwork"] == "https://compute/subnetworks/vllm-subnet"
    assert interface["networkIp"] == MOCK_PRIVATE_IP
    assert interface["accessConfigs"] == [{"natIp": MOCK_PUBLIC_IP, "networkTier": "PREMIUM"}]
    assert instance["tags"] == [prod.outputs["host_tag"]] == ["vllm-prod-gpu-host"]
    assert instance["labels"] == {"app": "vllm-gcp", "stack": "prod"}


def test_public_host_is_reached_on_its_public_ip(prod: Plan) -> None:
    assert prod.outputs["public_ip"] == MOCK_PUBLIC_IP
    assert prod.outputs["private_ip"] == MOCK_PRIVATE_IP
    assert prod.outputs["endpoint_address"] == MOCK_PUBLIC_IP
    assert prod.outputs["instance_id"] == "1234567890"


def test_private_host_has_no_access_config_and_is_reached_inside() -> None:
    private = build("prod", PRIVATE)
    (interface,) = instance_inputs(private)["networkInterfaces"]
    assert "accessConfigs" not in interface
    assert private.outputs["public_ip"] is None
    assert private.outputs["endpoint_address"] == MOCK_PRIVATE_IP
    addresses = [r.plain["addressType"] for r in private.of_type("gcp:compute/address:Address")]
    assert addresses == ["INTERNAL"]


WORKLOAD_CHANGES: dict[str, dict[str, Any]] = {
    "model": {
        "vllm-gcp:model": {
            "id": "Qwen/Qwen2.5-32B-Instruct",
            "image": "vllm/vllm-openai:v0.33.0",
            "maxModelLen": 16384,
        }
    },
    "vllm flags": {
        "vllm-gcp:model": {"gpuMemoryUtilization": 0.85, "extraArgs": ["--enable-prefix-caching"]}
    },
    "tls": {
        "vllm-gcp:tls": {
            "mode": "letsencrypt",
            "domain": "llm.example.com",
            "email": "o@example.com",
        }
    },
    "apiCidrs": {
        "vllm-gcp:access": {"apiCidrs": ["203.0.113.0/24"], "sshCidrs": ["198.51.100.7/32"]}
    },
}


@pytest.mark.parametrize("change", sorted(WORKLOAD_CHANGES))
def test_workload_settings_leave_every_instance_input_unchanged(prod: Plan, change: str) -> None:
    changed = build("prod", WORKLOAD_CHANGES[change])
    (before,) = prod.of_type(INSTANCE)
    (after,) = changed.of_type(INSTANCE)
    assert after.inputs == before.inputs


def test_a_machine_type_change_changes_the_instance() -> None:
    other = build("prod", {"vllm-gcp:host": {"machineType": "a2-ultragpu-4g"}})
    assert instance_inputs(other)["machineType"] == "a2-ultragpu-4g"
    assert "readonly GPU_COUNT='4'\n" in instance_inputs(other)["metadata"]["startup-script"]


@pytest.mark.parametrize(
    ("name", "stack"),
    [
        ("vllm", "prod"),
        ("vllm", "dev"),
        ("vllm", "x"),
        ("vllm", "Feature_Branch.With.A.Very.Long.Name-2026"),
        ("9lives", "prod"),
    ],
)
def test_service_account_ids_are_valid_and_distinct_per_stack(name: str, stack: str) -> None:
    account_id = service_account_id(name, stack)
    assert re.fullmatch(r"[a-z][-a-z0-9]{4,28}[a-z0-9]", account_id), account_id
    assert account_id != service_account_id(name, f"{stack}-other")


def test_mirrors_reach_the_startup_script_and_nothing_else() -> None:
    without_apt = build("prod", PRIVATE, {"vllm-gcp:mirror": {"aptRemote": False}})
    mirrored = build("prod", PRIVATE)
    apt_host = "us-central1-apt.pkg.dev"
    repositories = {s: repository_id("vllm", "prod", f"ubuntu-{s}") for s in UBUNTU_SUITES}
    sources = apt_sources(apt_host, "test-project", repositories)
    docker_repository = repository_id("vllm", "prod", "dockerhub")
    script = instance_inputs(mirrored)["metadata"]["startup-script"]
    assert "readonly APT_SOURCES_MODE='mirror'\n" in script
    assert f"readonly APT_MIRROR_HOST='{apt_host}'\n" in script
    assert (
        f"readonly APT_MIRROR_SOURCES_B64='{base64.b64encode(sources.encode()).decode()}'" in script
    )
    assert "readonly DOCKER_REGISTRY_HOST='us-central1-docker.pkg.dev'\n" in script
    assert (
        "readonly GPU_CHECK_IMAGE='us-central1-docker.pkg.dev/test-project/"
        f"{docker_repository}/library/{GPU_CHECK_IMAGE}'\n"
    ) in script
    plain_script = instance_inputs(without_apt)["metadata"]["startup-script"]
    assert "readonly APT_SOURCES_MODE='internet'\n" in plain_script
    without_script = [
        {**instance_inputs(b), "metadata": {**instance_inputs(b)["metadata"], "startup-script": ""}}
        for b in (without_apt, mirrored)
    ]
    assert without_script[0] == without_script[1]


def test_addresses_come_from_the_static_addresses_not_the_vm(prod: Plan) -> None:
    # A replaced VM leaves these known and unchanged: the certificate's IP SANs, the Nginx site,
    # the SSH connection and the Kibana connector do not follow the VM.
    for attribute in ("public_ip", "endpoint_address"):
        assert prod.outputs[f"{attribute}_sources"] == ["vllm-external-ip"], attribute
    assert prod.outputs["private_ip_sources"] == ["vllm-internal-ip"]


def test_private_addresses_come_from_the_static_internal_address() -> None:
    private = build("prod", PRIVATE)
    for attribute in ("private_ip", "endpoint_address"):
        assert private.outputs[f"{attribute}_sources"] == ["vllm-internal-ip"], attribute
    assert "public_ip_sources" not in private.outputs


@pytest.mark.parametrize(
    ("stack", "overrides"),
    [
        ("prod", {}),
        ("prod", {"vllm-gcp:host": {"machineType": "a3-highgpu-8g", "skipZoneCheck": True}}),
        # No local SSD: still replaced on a machine type change, as the current VM may have one.
        ("dev", {}),
        ("prod", {"vllm-gcp:host": {"machineType": "a2-highgpu-2g"}}),
    ],
)
def test_the_vm_registers_with_the_options_that_keep_it_across_ups(
    stack: str, overrides: dict[str, Any]
) -> None:
    options = build(stack, overrides).named("vllm-host").options
    assert options.replace_on_changes == ("machineType",)
    # Its static IPs belong to one VM at a time.
    assert options.delete_before_replace is True
    # Only fields the program never sets: an ignored path keeps its old input on a replacement.
    assert set(options.ignore_changes) == {"scratchDisks", "keyRevocationActionType"}
    assert options.custom_timeouts == {"create": "20m", "update": "20m", "delete": "20m"}


def test_the_service_account_is_deleted_before_a_replacement() -> None:
    # A fixed account_id: create-before-delete would fail with 409.
    assert build("dev").named("vllm-host-sa").options.delete_before_replace is True


def test_a3_gets_gvnic_and_a2_g2_keep_their_default_nic(prod: Plan, dev: Plan) -> None:
    a3 = build("prod", {"vllm-gcp:host": {"machineType": "a3-highgpu-8g", "skipZoneCheck": True}})
    (a3_interface,) = instance_inputs(a3)["networkInterfaces"]
    assert a3_interface["nicType"] == "GVNIC"
    for built in (prod, dev):
        (interface,) = instance_inputs(built)["networkInterfaces"]
        assert "nicType" not in interface


@pytest.mark.parametrize(
    "image",
    [
        "ubuntu-accelerator-2404-amd64-with-nvidia-580",  # no project: the provider's guess
        "family/ubuntu-accelerator-2404-amd64-with-nvidia-580",
        "projects/p/global/images/family/",
        "projects/my-project/global/images/vllm-host\n",
    ],
)
def test_host_image_must_name_its_project_and_image_or_family(image: str) -> None:
    with pytest.raises(config.ConfigError) as refused:
        config.validate(stack_config("prod", {"vllm-gcp:host": {"image": image}}), "prod")
    assert [p.key for p in refused.value.problems] == ["vllm-gcp:host.image"]
    assert "projects/PROJECT/global/images/family/FAMILY" in str(refused.value)


def test_resources_that_moved_keep_their_identity_through_aliases(prod: Plan) -> None:
    # The service account, its grants, the host-ready step, the API key and the certificates
    # lived in other components: the aliases keep existing stacks' resources (the VM running as
    # that account, the key clients hold, the CA Kibana trusts) in place.
    host_urn = "urn:pulumi:prod::vllm-gcp::vllm-gcp:host:GpuHost::vllm"
    server_urn = "urn:pulumi:prod::vllm-gcp::vllm-gcp:vllm_server:VllmServer::vllm"
    proxy_urn = "urn:pulumi:prod::vllm-gcp::vllm-gcp:tls_proxy:TlsProxy::vllm"
    moved = {r.name: r.options.alias_parents for r in prod.resources if r.options.alias_parents}
    assert moved == {
        "vllm-host-sa": (host_urn,),
        "vllm-host-logging-logwriter": (host_urn,),
        "vllm-host-monitoring-metricwriter": (host_urn,),
        "vllm-host-ready": (server_urn,),
        "vllm-api-key": (server_urn,),
        **{
            certificate: (proxy_urn,)
            for certificate in (
                "vllm-ca-key",
                "vllm-ca",
                "vllm-server-key",
                "vllm-server-csr",
                "vllm-server-cert",
            )
        },
    }


def test_the_first_step_dials_a_booting_vm_longer_than_the_later_ones(prod: Plan) -> None:
    attempts = {
        c.name: c.plain["connection"]["dialErrorLimit"]
        for c in prod.of_type("command:remote:Command")
    }
    # Never unlimited: a limit reached reports the cause, a timeout does not.
    assert attempts == {
        "vllm-host-ready": 60,
        "vllm-secrets": 10,
        "vllm-run": 10,
        "vllm-serving": 10,
        "vllm-nginx-site": 10,
    }
