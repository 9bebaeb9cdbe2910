"""A fleet's regional Application Load Balancer: HTTPS on 443 with the stack's certificate.

External managed in public exposure, internal managed in private exposure (clients in the VPC),
both regional and Envoy-based: they stream answers through as the replicas write them. Within a
zone, requests go to the replica with the fewest in flight (LEAST_REQUEST: LLM requests are long
and uneven; across zones the backend's balancing mode decides),
wait up to 900 s for an answer (the backend service's default is 30 s), and reach each replica's
Nginx over HTTPS, which checks the token, the routes and access.apiCidrs again with the client's
address (the load balancer is not trusted to filter: components/host_bundle.py,
LoadBalancerSite).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.certificates import ServerCertificate
from components.host_paths import HEALTH_PATH

HTTPS_PORT = 443
# Past what Kibana waits for a non-streamed answer (the proxy's own read timeout, 900 s).
BACKEND_TIMEOUT_SECONDS = 900
# A replica leaving the group (scale-in, a rollout, a repair) gets no new requests and keeps its
# connections this long: as long as any answer may last here, so it finishes every one in flight.
# The group deletes a replica only after it ("Enable connection draining", load-balancing docs);
# the replica's own drain on stop (components/host_bundle.py, drain_command) backs it where the
# VM goes first (a repair, a host maintenance).
CONNECTION_DRAINING_SECONDS = BACKEND_TIMEOUT_SECONDS


@dataclass(frozen=True)
class LoadBalancerArgs:
    region: str
    private: bool  # network.exposure private: an internal load balancer
    vpc: pulumi.Input[str]
    subnetwork: pulumi.Input[str]
    address: pulumi.Input[str]  # components/network.py, the fleet's load balancer address
    proxy_subnet: pulumi.Resource | None  # the forwarding rule needs the proxy-only subnet first
    certificate: ServerCertificate
    instance_group: pulumi.Input[str]  # the fleet's managed instance group's instance group
    # Traffic moves to a group once it serves: a new group (a change of fleet.zones replaces it,
    # distribution_policy_zones being ForceNew in resource_compute_region_instance_group_manager.go)
    # takes over from the old one only when its rollout is done.
    group_ready: pulumi.Resource


class LoadBalancer(pulumi.ComponentResource):
    """Certificate, health check, backend service, URL map, HTTPS proxy and forwarding rule."""

    backend_service: gcp.compute.RegionBackendService
    forwarding_rule: gcp.compute.ForwardingRule

    def __init__(
        self, name: str, args: LoadBalancerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:load_balancer:LoadBalancer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        scheme = "INTERNAL_MANAGED" if args.private else "EXTERNAL_MANAGED"
        # Named by scheme: the scheme of a backend service and a forwarding rule is ForceNew, and
        # a URL map or proxy cannot serve both at once, so a change of network.exposure builds the
        # other load balancer whole and then deletes this one.
        prefix = f"{name}-{'internal' if args.private else 'external'}"

        served = args.certificate.pem_pair()
        # Auto-named: a renewed certificate is a new one, attached before the old one goes.
        certificate = gcp.compute.RegionSslCertificate(
            f"{prefix}-certificate",
            region=args.region,
            certificate=served.certificate,
            private_key=served.private_key,
            opts=child,
        )
        health_check = gcp.compute.RegionHealthCheck(
            f"{prefix}-health",
            region=args.region,
            check_interval_sec=10,
            timeout_sec=5,
            healthy_threshold=2,
            unhealthy_threshold=3,
            https_health_check=gcp.compute.RegionHealthCheckHttpsHealthCheckArgs(
                port=HTTPS_PORT, request_path=HEALTH_PATH
            ),
            opts=child,
        )
        self.backend_service = gcp.compute.RegionBackendService(
            f"{prefix}-backend",
            region=args.region,
            load_balancing_scheme=scheme,
            protocol="HTTPS",
            port_name="https",
            timeout_sec=BACKEND_TIMEOUT_SECONDS,
            locality_lb_policy="LEAST_REQUEST",
            # Optional, not ForceNew (resource_compute_region_backend_service.go, default 300):
            # a change updates the backend service in place.
            connection_draining_timeout_sec=CONNECTION_DRAINING_SECONDS,
            health_checks=health_check.id,
            backends=[
                gcp.compute.RegionBackendServiceBackendArgs(
                    group=args.instance_group,
                    balancing_mode="UTILIZATION",
                    capacity_scaler=1.0,
                )
            ],
            log_config=gcp.compute.RegionBackendServiceLogConfigArgs(enable=True, sample_rate=1.0),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args.group_ready]),
        )
        url_map = gcp.compute.RegionUrlMap(
            f"{prefix}-url-map",
            region=args.region,
            default_service=self.backend_service.id,
            opts=child,
        )
        proxy = gcp.compute.RegionTargetHttpsProxy(
            f"{prefix}-https-proxy",
            region=args.region,
            url_map=url_map.id,
            ssl_certificates=[certificate.id],
            opts=child,
        )
        depends_on = [args.proxy_subnet] if args.proxy_subnet is not None else None
        self.forwarding_rule = gcp.compute.ForwardingRule(
            f"{prefix}-https",
            region=args.region,
            load_balancing_scheme=scheme,
            ip_protocol="TCP",
            port_range=str(HTTPS_PORT),
            ip_address=args.address,
            target=proxy.id,
            network=args.vpc,
            subnetwork=args.subnetwork if args.private else None,
            network_tier=None if args.private else "STANDARD",
            # Every property but the target is ForceNew (resource_compute_forwarding_rule.go),
            # and a second rule cannot take the same address and port: the old one goes first.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=depends_on, delete_before_replace=True
            ),
        )
        self.register_outputs(
            {
                "backendService": self.backend_service.id,
                "forwardingRule": self.forwarding_rule.id,
            }
        )
