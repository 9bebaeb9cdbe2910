"""The Network component under Pulumi mocks: VPC, subnet, addresses, firewall, private DNS."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from components.config import AccessConfig, NetworkConfig
from components.network import (
    PRIVATE_GOOGLE_ACCESS_IPS,
    PRIVATE_GOOGLE_ACCESS_RANGE,
    Network,
    NetworkArgs,
    host_tag_for,
)
from tests.harness import MOCK_PRIVATE_IP, MOCK_PUBLIC_IP, Plan, build_components

FIREWALL = "gcp:compute/firewall:Firewall"
ADDRESS = "gcp:compute/address:Address"
ACCESS = AccessConfig(api_cidrs=["0.0.0.0/0"], ssh_cidrs=["198.51.100.7/32"])
PRIVATE_ACCESS = AccessConfig(api_cidrs=["10.0.0.0/8"], ssh_cidrs=["10.20.0.5/32"])


def inputs_of(built: Plan, typ: str) -> list[dict[str, Any]]:
    return [r.plain for r in built.of_type(typ)]


def build_network(args: NetworkArgs, stack: str = "prod") -> Plan:
    def declare() -> dict[str, object]:
        network = Network("vllm", args)
        return {
            "host_tag": network.host_tag,
            "has_external": network.external_address is not None,
            "subnetwork": network.subnetwork,
            "internal_address": network.internal_address,
            "external_address": network.external_address,
        }

    return build_components(declare, stack=stack)


def args(
    exposure: str = "public",
    tls_mode: str = "self-signed",
    access: AccessConfig = ACCESS,
    **network: Any,
) -> NetworkArgs:
    return NetworkArgs(
        network=NetworkConfig.model_validate({"exposure": exposure, **network}),
        access=access,
        tls_mode=tls_mode,
        region="us-central1",
    )


def ingress_ports(built: Plan) -> dict[str, list[str]]:
    """Port -> source ranges of every ingress allow rule."""
    ports: dict[str, list[str]] = {}
    for rule in inputs_of(built, FIREWALL):
        if rule.get("direction") != "INGRESS":
            continue
        for allow in rule["allows"]:
            assert allow["protocol"] == "tcp"
            for port in allow["ports"]:
                ports.setdefault(port, []).extend(rule["sourceRanges"])
    return ports


def test_public_network_makes_its_vpc_subnet_and_both_addresses() -> None:
    built = build_network(args())
    (vpc,) = inputs_of(built, "gcp:compute/network:Network")
    assert vpc["autoCreateSubnetworks"] is False
    (subnet,) = inputs_of(built, "gcp:compute/subnetwork:Subnetwork")
    assert subnet["ipCidrRange"] == "10.42.0.0/24"
    assert subnet["region"] == "us-central1"
    assert subnet["privateIpGoogleAccess"] is True
    internal = built.named("vllm-internal-ip").plain
    assert internal["addressType"] == "INTERNAL"
    assert internal["subnetwork"] == built.outputs["subnetwork"]
    external = built.named("vllm-external-ip").plain
    assert external["addressType"] == "EXTERNAL"
    assert built.outputs["internal_address"] == MOCK_PRIVATE_IP
    assert built.outputs["external_address"] == MOCK_PUBLIC_IP


def test_firewall_opens_https_to_api_cidrs_and_ssh_to_ssh_cidrs_only() -> None:
    built = build_network(args())
    assert ingress_ports(built) == {"443": ["0.0.0.0/0"], "22": ["198.51.100.7/32"]}
    for rule in inputs_of(built, FIREWALL):
        assert rule["targetTags"] == [built.outputs["host_tag"]]
        assert rule["network"] == "https://compute/networks/vllm-vpc"
    assert not [r for r in inputs_of(built, FIREWALL) if r.get("direction") == "EGRESS"]


@pytest.mark.parametrize("tls_mode", ["self-signed", "provided", "letsencrypt"])
def test_port_80_opens_only_for_letsencrypt_and_8000_never(tls_mode: str) -> None:
    ports = ingress_ports(build_network(args(tls_mode=tls_mode)))
    assert "8000" not in ports
    assert ("80" in ports) == (tls_mode == "letsencrypt")
    if tls_mode == "letsencrypt":
        assert ports["80"] == ["0.0.0.0/0"]
    assert "0.0.0.0/0" not in ports["22"]


def test_private_network_has_no_external_address() -> None:
    built = build_network(args("private", access=PRIVATE_ACCESS))
    assert built.outputs["has_external"] is False
    assert [a["addressType"] for a in inputs_of(built, ADDRESS)] == ["INTERNAL"]
    (subnet,) = inputs_of(built, "gcp:compute/subnetwork:Subnetwork")
    assert subnet["privateIpGoogleAccess"] is True


def test_private_egress_is_denied_except_to_google_apis_on_443() -> None:
    built = build_network(args("private", access=PRIVATE_ACCESS))
    egress = [r for r in inputs_of(built, FIREWALL) if r.get("direction") == "EGRESS"]
    (deny,) = [r for r in egress if r.get("denies")]
    (allow,) = [r for r in egress if r.get("allows")]
    assert deny["denies"] == [{"protocol": "all"}]
    assert deny["destinationRanges"] == ["0.0.0.0/0"]
    assert allow["destinationRanges"] == [PRIVATE_GOOGLE_ACCESS_RANGE]
    assert allow["allows"] == [{"protocol": "tcp", "ports": ["443"]}]
    # Lower number, higher precedence: the allow beats the deny, which beats the implied allow.
    assert allow["priority"] < deny["priority"] < 65535
    assert ipaddress.ip_network(PRIVATE_GOOGLE_ACCESS_RANGE).num_addresses == len(
        PRIVATE_GOOGLE_ACCESS_IPS
    )
    assert ingress_ports(built) == {"443": ["10.0.0.0/8"], "22": ["10.20.0.5/32"]}


def test_private_dns_sends_googleapis_and_pkg_dev_to_the_private_vip() -> None:
    built = build_network(args("private", access=PRIVATE_ACCESS))
    zones = {z["dnsName"]: z for z in inputs_of(built, "gcp:dns/managedZone:ManagedZone")}
    assert set(zones) == {"googleapis.com.", "pkg.dev."}
    for zone in zones.values():
        assert zone["visibility"] == "private"
        assert zone["privateVisibilityConfig"]["networks"] == [
            {"networkUrl": "https://compute/networks/vllm-vpc"}
        ]
    records = {
        (r["name"], r["type"]): r["rrdatas"]
        for r in inputs_of(built, "gcp:dns/recordSet:RecordSet")
    }
    assert records == {
        ("private.googleapis.com.", "A"): list(PRIVATE_GOOGLE_ACCESS_IPS),
        ("*.googleapis.com.", "CNAME"): ["private.googleapis.com."],
        ("pkg.dev.", "A"): list(PRIVATE_GOOGLE_ACCESS_IPS),
        ("*.pkg.dev.", "CNAME"): ["pkg.dev."],
    }


def test_public_network_makes_no_dns_zone_and_warns_nothing() -> None:
    built = build_network(args())
    assert inputs_of(built, "gcp:dns/managedZone:ManagedZone") == []
    assert built.warnings == []


def test_an_existing_vpc_and_subnet_are_used_not_created() -> None:
    built = build_network(args(vpc="shared-vpc", subnet="gpu-subnet"))
    assert inputs_of(built, "gcp:compute/network:Network") == []
    assert inputs_of(built, "gcp:compute/subnetwork:Subnetwork") == []
    assert built.outputs["subnetwork"] == "gpu-subnet"
    assert built.named("vllm-internal-ip").plain["subnetwork"] == "gpu-subnet"
    assert {r["network"] for r in inputs_of(built, FIREWALL)} == {"shared-vpc"}


def test_an_existing_vpc_without_subnet_gets_the_stacks_subnet() -> None:
    built = build_network(args(vpc="shared-vpc", subnet_cidr="10.77.0.0/24"))
    assert inputs_of(built, "gcp:compute/network:Network") == []
    (subnet,) = inputs_of(built, "gcp:compute/subnetwork:Subnetwork")
    assert subnet["network"] == "shared-vpc"
    assert subnet["ipCidrRange"] == "10.77.0.0/24"


def test_private_in_an_existing_vpc_adds_no_dns_zones() -> None:
    built = build_network(args("private", access=PRIVATE_ACCESS, vpc="shared-vpc"))
    assert inputs_of(built, "gcp:dns/managedZone:ManagedZone") == []
    assert [r for r in inputs_of(built, FIREWALL) if r.get("denies")]
    (warning,) = built.warnings
    assert "Private Google Access" in warning
    assert "*.pkg.dev" in warning


def test_host_tag_names_the_stack_so_stacks_in_one_vpc_stay_apart() -> None:
    assert build_network(args(), stack="prod").outputs["host_tag"] == "vllm-prod-gpu-host"
    assert build_network(args(), stack="dev").outputs["host_tag"] == "vllm-dev-gpu-host"
    long_tag = host_tag_for("vllm", "Feature_Branch." + "x" * 80)
    assert len(long_tag) <= 63
    assert long_tag == long_tag.lower()
    assert not long_tag.endswith("-")


def test_every_child_is_named_from_the_component_name() -> None:
    built = build_network(args("private", access=PRIVATE_ACCESS))
    children = [r.name for r in built.resources if not r.type.startswith("vllm-gcp:")]
    assert children
    assert all(name.startswith("vllm-") for name in children)
