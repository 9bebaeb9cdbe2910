"""The network the GPU host lives in: VPC and subnet, its static addresses and its firewall.

Public exposure: a static external IP; HTTPS from `access.apiCidrs`, SSH from `access.sshCidrs`,
port 80 only for Let's Encrypt's HTTP-01 challenge. Private exposure: no external IP, and egress
denied except to Google's private API range, which a private Cloud DNS zone sends
`*.googleapis.com` and `*.pkg.dev` to (Private Google Access). vLLM's port is never opened.

A fleet (`vllm-gcp:fleet`) has the same VPC and subnet, and instead of the single VM's addresses
the load balancer's (external, or internal in private exposure), the proxy-only subnet the
regional load balancer needs, HTTPS to the replicas from that subnet and Google's health checkers
only (clients reach the load balancer, never a replica), and in public exposure a Cloud NAT: the
replicas have no external IP but pull images and weights from the internet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.config import AccessConfig, FleetConfig, NetworkConfig

# private.googleapis.com: the Private Google Access range for most Google APIs, Artifact
# Registry included ("Configure Private Google Access", vpc/docs/configure-private-google-access,
# "Domain options" and "DNS configuration"). restricted.googleapis.com (199.36.153.4/30) would
# need VPC Service Controls, which this stack does not set up.
PRIVATE_GOOGLE_ACCESS_RANGE = "199.36.153.8/30"
PRIVATE_GOOGLE_ACCESS_IPS = ("199.36.153.8", "199.36.153.9", "199.36.153.10", "199.36.153.11")

HTTPS_PORT = "443"
SSH_PORT = "22"
ACME_HTTP_PORT = "80"
ALL_IPV4 = "0.0.0.0/0"

# Lower numbers win. Every allow rule sits above the egress deny, which in turn sits above the
# VPC's implied allow-all egress (priority 65535).
ALLOW_PRIORITY = 1000
EGRESS_DENY_PRIORITY = 65000
DNS_TTL_SECONDS = 300
# Where Google's health checks (and a load balancer's to its backends) come from: "Health checks
# overview", firewall rules (load-balancing/docs/health-check-concepts#ip-ranges).
HEALTH_CHECK_RANGES = ("35.191.0.0/16", "130.211.0.0/22")


@dataclass(frozen=True)
class NetworkArgs:
    network: NetworkConfig
    access: AccessConfig
    tls_mode: str  # "letsencrypt" opens port 80 (ACME HTTP-01); no other mode does
    region: str
    fleet: FleetConfig | None = None  # a fleet's load balancer instead of the single VM


def host_tag_for(name: str, stack: str) -> str:
    """The network tag the firewall rules target: per stack, so stacks sharing a VPC stay apart."""
    tag = re.sub(r"[^a-z0-9-]+", "-", f"{name}-{stack}-gpu-host".lower()).strip("-")
    return tag[:63].rstrip("-")


class Network(pulumi.ComponentResource):
    """VPC, subnet, static addresses and firewall rules for the GPU host."""

    vpc: pulumi.Output[str]
    subnetwork: pulumi.Output[str]
    internal_address: pulumi.Output[str] | None  # the VM's, or a private fleet's load balancer
    external_address: pulumi.Output[str] | None  # the VM's, or a public fleet's load balancer
    endpoint_address: pulumi.Output[str]  # where clients connect: external, else internal
    proxy_subnet: pulumi.Resource | None  # a fleet's proxy-only subnet, where the stack made it
    host_tag: str

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        net = args.network
        self.host_tag = host_tag_for(name, pulumi.get_stack())

        own_vpc: gcp.compute.Network | None = None
        if net.vpc is None:
            own_vpc = gcp.compute.Network(
                f"{name}-vpc",
                auto_create_subnetworks=False,
                description="vllm-gcp: the GPU host's network",
                opts=child,
            )
            network_ref: pulumi.Input[str] = own_vpc.self_link
        else:
            network_ref = net.vpc
        self.vpc = pulumi.Output.from_input(network_ref)

        own_subnet: gcp.compute.Subnetwork | None = None
        if net.subnet is None:
            subnet = own_subnet = gcp.compute.Subnetwork(
                f"{name}-subnet",
                network=network_ref,
                region=args.region,
                ip_cidr_range=net.subnet_cidr,
                # Required in private exposure (Google APIs without an external IP); harmless
                # in public exposure, and keeping it on means switching exposure changes nothing.
                private_ip_google_access=True,
                opts=child,
            )
            self.subnetwork = subnet.self_link
        else:
            # A name or a path the provider completes with the provider's project and the region.
            self.subnetwork = pulumi.Output.from_input(net.subnet)

        self.proxy_subnet = None
        if args.fleet is None:
            self._host_addresses(name, args, child)
        else:
            self._load_balancer_addresses(name, args, network_ref, own_vpc, own_subnet, child)
        endpoint = self.external_address or self.internal_address
        if endpoint is None:
            raise ValueError("the network made no address for the endpoint")
        self.endpoint_address = endpoint

        if net.private:
            self._private_egress(name, network_ref, child)
            if own_vpc is not None:
                self._private_google_dns(name, own_vpc, child)
            else:
                pulumi.log.warn(
                    f"vllm-gcp:network.vpc {net.vpc} is not the stack's own: the stack does not "
                    "add DNS zones to it. The host needs Private Google Access on its subnet and "
                    f"*.googleapis.com and *.pkg.dev resolving to {PRIVATE_GOOGLE_ACCESS_RANGE} "
                    "(private.googleapis.com), or it cannot reach Artifact Registry or "
                    "Cloud Storage",
                    resource=self,
                )

        self.register_outputs(
            {
                "vpc": self.vpc,
                "subnetwork": self.subnetwork,
                "internalAddress": self.internal_address,
                "externalAddress": self.external_address,
                "endpointAddress": self.endpoint_address,
                "hostTag": self.host_tag,
            }
        )

    def _host_addresses(self, name: str, args: NetworkArgs, child: pulumi.ResourceOptions) -> None:
        """The single VM's static addresses and the firewall rules to it."""
        net = args.network
        network_ref = self.vpc
        internal = gcp.compute.Address(
            f"{name}-internal-ip",
            address_type="INTERNAL",
            purpose="GCE_ENDPOINT",
            subnetwork=self.subnetwork,
            region=args.region,
            description="vllm-gcp: the GPU host's private IP",
            opts=child,
        )
        self.internal_address = internal.address

        self.external_address = None
        if not net.private:
            external = gcp.compute.Address(
                f"{name}-external-ip",
                address_type="EXTERNAL",
                network_tier="PREMIUM",
                region=args.region,
                description="vllm-gcp: the endpoint's public IP",
                opts=child,
            )
            self.external_address = external.address

        self._ingress(name, "allow-https", network_ref, HTTPS_PORT, args.access.api_cidrs, child)
        self._ingress(name, "allow-ssh", network_ref, SSH_PORT, args.access.ssh_cidrs, child)
        if args.tls_mode == "letsencrypt":
            # Let's Encrypt validates HTTP-01 from addresses it does not publish, so the whole
            # internet; the site on 80 only answers challenges and redirects to HTTPS.
            self._ingress(name, "allow-acme-http", network_ref, ACME_HTTP_PORT, [ALL_IPV4], child)

    def _load_balancer_addresses(  # noqa: PLR0913, PLR0917 (what the network made so far)
        self,
        name: str,
        args: NetworkArgs,
        network_ref: pulumi.Input[str],
        own_vpc: gcp.compute.Network | None,
        own_subnet: gcp.compute.Subnetwork | None,
        child: pulumi.ResourceOptions,
    ) -> None:
        """A fleet's load balancer address, its proxy-only subnet, the replicas' firewall and
        (public exposure) their way out through Cloud NAT."""
        fleet, net = args.fleet, args.network
        if fleet is None:
            raise ValueError("a fleet's addresses need vllm-gcp:fleet")
        if own_vpc is not None:
            # One active proxy-only subnet per region and VPC: in an existing VPC the stack uses
            # the one it has, whose range fleet.proxySubnetCidr names (the README says so). For
            # the same reason a new range (ip_cidr_range is ForceNew unless it grows:
            # resource_compute_subnetwork.go, IsShrinkageIpCidr) deletes the old one first.
            self.proxy_subnet = gcp.compute.Subnetwork(
                f"{name}-proxy-only-subnet",
                network=network_ref,
                region=args.region,
                ip_cidr_range=fleet.proxy_subnet_cidr,
                purpose="REGIONAL_MANAGED_PROXY",
                role="ACTIVE",
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
            )
        self.internal_address = self.external_address = None
        if net.private:
            # GCE_ENDPOINT: one forwarding rule's address (SHARED_LOADBALANCER_VIP is for an
            # address several internal forwarding rules share: Address.purpose, Compute API).
            internal = gcp.compute.Address(
                f"{name}-lb-internal-ip",
                address_type="INTERNAL",
                purpose="GCE_ENDPOINT",
                subnetwork=self.subnetwork,
                region=args.region,
                description="vllm-gcp: the fleet's internal load balancer address",
                opts=child,
            )
            self.internal_address = internal.address
        else:
            # Standard Tier: the load balancer is regional, and so is its traffic; Standard is the
            # cheaper tier for it (load-balancing/pricing).
            external = gcp.compute.Address(
                f"{name}-lb-external-ip",
                address_type="EXTERNAL",
                network_tier="STANDARD",
                region=args.region,
                description="vllm-gcp: the fleet's load balancer address",
                opts=child,
            )
            self.external_address = external.address
            if own_subnet is not None:
                self._cloud_nat(name, args.region, network_ref, own_subnet, child)
            else:
                pulumi.log.warn(
                    f"vllm-gcp:network.subnet {net.subnet} is not the stack's own: the stack adds "
                    "no Cloud NAT to it. The fleet's replicas have no external IP, so the subnet "
                    "needs a way out (Cloud NAT) to pull the vLLM image and the weights",
                    resource=self,
                )
        # The load balancer's proxies (from the proxy-only subnet) and the health checkers reach
        # the replicas' Nginx; clients reach only the load balancer, which Nginx filters again.
        sources = [fleet.proxy_subnet_cidr, *HEALTH_CHECK_RANGES]
        self._ingress(name, "allow-lb-https", network_ref, HTTPS_PORT, sources, child)
        self._ingress(name, "allow-ssh", network_ref, SSH_PORT, args.access.ssh_cidrs, child)

    def _cloud_nat(
        self,
        name: str,
        region: str,
        network_ref: pulumi.Input[str],
        subnet: gcp.compute.Subnetwork,
        child: pulumi.ResourceOptions,
    ) -> None:
        """Cloud NAT for the stack's subnet only: a gateway for all of a VPC's subnets would take
        other teams' subnets in an existing VPC, and conflicts with any other gateway there."""
        router = gcp.compute.Router(
            f"{name}-router",
            network=network_ref,
            region=region,
            description="vllm-gcp: Cloud NAT for the fleet's replicas",
            opts=child,
        )
        gcp.compute.RouterNat(
            f"{name}-nat",
            router=router.name,
            region=region,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
            subnetworks=[
                gcp.compute.RouterNatSubnetworkArgs(
                    name=subnet.self_link, source_ip_ranges_to_nats=["ALL_IP_RANGES"]
                )
            ],
            log_config=gcp.compute.RouterNatLogConfigArgs(enable=True, filter="ERRORS_ONLY"),
            opts=child,
        )

    def _ingress(  # noqa: PLR0913, PLR0917 (one per property of the rule)
        self,
        name: str,
        rule: str,
        network: pulumi.Input[str],
        port: str,
        sources: list[str],
        opts: pulumi.ResourceOptions,
    ) -> gcp.compute.Firewall:
        return gcp.compute.Firewall(
            f"{name}-{rule}",
            network=network,
            direction="INGRESS",
            priority=ALLOW_PRIORITY,
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[port])],
            source_ranges=sources,
            target_tags=[self.host_tag],
            description=f"vllm-gcp: TCP {port} to the GPU host",
            opts=opts,
        )

    def _private_egress(
        self, name: str, network: pulumi.Input[str], opts: pulumi.ResourceOptions
    ) -> None:
        gcp.compute.Firewall(
            f"{name}-allow-google-apis-egress",
            network=network,
            direction="EGRESS",
            priority=ALLOW_PRIORITY,
            allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=[HTTPS_PORT])],
            destination_ranges=[PRIVATE_GOOGLE_ACCESS_RANGE],
            target_tags=[self.host_tag],
            description="vllm-gcp: HTTPS to Google APIs through Private Google Access",
            opts=opts,
        )
        # Replies to admitted ingress (HTTPS, SSH) pass anyway: firewall rules are stateful.
        # The metadata server (DNS, tokens) is never subject to VPC firewall rules.
        gcp.compute.Firewall(
            f"{name}-deny-egress",
            network=network,
            direction="EGRESS",
            priority=EGRESS_DENY_PRIORITY,
            denies=[gcp.compute.FirewallDenyArgs(protocol="all")],
            destination_ranges=[ALL_IPV4],
            target_tags=[self.host_tag],
            description="vllm-gcp: a private host reaches nothing but Google APIs",
            opts=opts,
        )

    def _private_google_dns(
        self, name: str, vpc: gcp.compute.Network, opts: pulumi.ResourceOptions
    ) -> None:
        # The records of "Configure Private Google Access", DNS configuration: googleapis.com
        # through private.googleapis.com, and pkg.dev (Artifact Registry) at the same VIPs.
        zones = {
            "googleapis": ("googleapis.com.", "private.googleapis.com."),
            "pkg-dev": ("pkg.dev.", "pkg.dev."),
        }
        for zone_key, (domain, address_name) in zones.items():
            zone = gcp.dns.ManagedZone(
                f"{name}-{zone_key}-zone",
                dns_name=domain,
                visibility="private",
                private_visibility_config=gcp.dns.ManagedZonePrivateVisibilityConfigArgs(
                    networks=[
                        gcp.dns.ManagedZonePrivateVisibilityConfigNetworkArgs(
                            network_url=vpc.self_link
                        )
                    ]
                ),
                description=f"vllm-gcp: {domain} through Private Google Access",
                opts=opts,
            )
            gcp.dns.RecordSet(
                f"{name}-{zone_key}-a",
                managed_zone=zone.name,
                name=address_name,
                type="A",
                ttl=DNS_TTL_SECONDS,
                rrdatas=list(PRIVATE_GOOGLE_ACCESS_IPS),
                opts=opts,
            )
            gcp.dns.RecordSet(
                f"{name}-{zone_key}-wildcard",
                managed_zone=zone.name,
                name=f"*.{domain}",
                type="CNAME",
                ttl=DNS_TTL_SECONDS,
                rrdatas=[address_name],
                opts=opts,
            )
