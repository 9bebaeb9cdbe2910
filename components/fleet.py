"""A fleet: replicas of the GPU host on a regional managed instance group, configured at boot.

Each replica runs what the single VM runs (components/host_bundle.py), delivered another way: the
regional instance template carries the startup script, the step scripts and the unit as metadata
attributes, and a boot script (scripts/fleet_boot.sh) runs them in the single VM's order, reading
the two secret files (the env file; the Nginx site with its TLS key) from Secret Manager with the
replica's own service account, which may read exactly those two secrets. Nothing secret is in the
template, its metadata or plain state.

A change of the model, its flags, the image or a key makes a new template; the group replaces the
replicas with new ones before it removes old ones (maxUnavailable 0, maxSurge one per zone, as a
regional group's fixed values must be: 0 or at least its number of zones), so with two replicas or
more one always serves, and `pulumi up` returns once the group is stable on the new template
(components/fleet_rollout.sh), or says which replica is not and why.

With fleet.minReplicas and maxReplicas a regional autoscaler sizes the group on vLLM's load
(docs/observability.md); a replica that leaves finishes its answers first (the load balancer's
connection draining, then the unit's drain on stop).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_tls as tls
from pulumi_command import local

from components import render
from components.config import FleetConfig, HostConfig, ModelConfig
from components.credentials import secrets_env_output
from components.host import BOOT_DISK_TYPE, nic_type, pinned_boot_image, scheduling
from components.host_bundle import (
    AptMirror,
    FleetBootLimits,
    LoadBalancerSite,
    OpsAgent,
    SiteSettings,
    container_spec,
    file_bundle,
    fleet_boot_script,
    nginx_site,
    proxy_script,
    run_script,
    secrets_script,
    serving_script,
    startup_script,
    vllm_unit,
)
from components.host_paths import HEALTH_PATH
from components.network import HEALTH_CHECK_RANGES
from components.observability import RUNNING, WAITING, vllm_metric_type, vllm_series
from components.remote_access import COMPONENTS_DIR, step_limit_seconds
from components.tls_proxy import SITE_TIMEOUT_MINUTES
from components.vllm_server import (
    RUN_TIMEOUT_MINUTES,
    SECRETS_TIMEOUT_MINUTES,
    SERVING_TIMEOUT_MINUTES,
    SERVING_WAIT_SECONDS,
)

HTTPS_PORT = 443
SECRET_ACCESSOR_ROLE = "roles/secretmanager.secretAccessor"  # noqa: S105 (a role's name)
TARGET_SHAPES = {
    "even": "EVEN",
    "balanced": "BALANCED",
    "any": "ANY",
    "any-single-zone": "ANY_SINGLE_ZONE",
}
# A replica's first start: the host setup, a ~12 GB image pull and the weights. The group does
# not judge its health before this (the API's maximum).
AUTOHEALING_INITIAL_DELAY_SECONDS = 3600
# The autoscaler (docs/observability.md). A new replica's initialization period, during which
# the autoscaler ignores its load: its first start, as long as autohealing waits for it.
AUTOSCALER_INITIALIZATION_SECONDS = AUTOHEALING_INITIAL_DELAY_SECONDS
# Requests waiting per replica the autoscaler keeps to: more queue asks for more replicas.
TARGET_QUEUE_PER_REPLICA = 2
# Scale-in removes at most one replica per window: a replica takes up to an hour to come back.
SCALE_IN_STEP = 1
SCALE_IN_WINDOW_SECONDS = 1800
# The host setup of a replica: the single VM's host-ready wait.
HOST_SETUP_TIMEOUT_MINUTES = 30
# How long `pulumi up` waits for a rollout: a surge replica's first start, then the old ones'
# removal, zone after zone.
ROLLOUT_DEADLINE_SECONDS = 2 * 3600
ROLLOUT_SCRIPT = "fleet_rollout.sh"
# The replicas' own certificate, for the load balancer's HTTPS to them. The load balancer checks
# neither its issuer nor its names nor its dates ("Encryption from the load balancer to the
# backends", load-balancing/docs/ssl-certificates/encryption-to-the-backends), and presents the
# stack's certificate to clients itself (components/load_balancer.py): so this one never renews,
# and a renewal of the stack's certificate rolls no replica.
BACKEND_CERTIFICATE_VALIDITY_HOURS = 20 * 365 * 24
_NAME = re.compile(r"[^a-z0-9-]+")


def _resource_name(*parts: str, limit: int) -> str:
    """Lowercase letters, digits and hyphens, starting with a letter, at most `limit` long."""
    name = _NAME.sub("-", "-".join(parts).lower()).strip("-")
    return name[:limit].rstrip("-")


def _template_scheduling(provisioning: str) -> gcp.compute.RegionInstanceTemplateSchedulingArgs:
    plan = scheduling(provisioning)  # as the single VM's
    # No graceful_shutdown: a [Beta] field of the provider, and GCE's graceful shutdown (Preview)
    # is "not available for managed instance groups" (compute/docs/instances/
    # graceful-shutdown-overview). A leaving replica's answers finish in the load balancer's
    # connection draining, before the group deletes it (components/load_balancer.py).
    return gcp.compute.RegionInstanceTemplateSchedulingArgs(
        on_host_maintenance=plan.on_host_maintenance,
        provisioning_model=plan.provisioning_model,
        preemptible=plan.preemptible,
        automatic_restart=plan.automatic_restart,
        instance_termination_action=plan.instance_termination_action,
    )


def autoscaling_policy(
    fleet: FleetConfig, stack_label: str
) -> gcp.compute.RegionAutoscalerAutoscalingPolicyArgs:
    """Between minReplicas and maxReplicas on vLLM's load: its running and waiting requests.

    The agent writes vLLM's metrics on the prometheus_target resource, not gce_instance, so they
    can only be per-group metrics: a filter of `=` clauses joined by AND, whose matching series
    (one per replica) the autoscaler sums, and a single-instance assignment, the share of that
    total one replica takes (AutoscalingPolicyCustomMetricUtilization in the Compute API; the
    autoscaler docs, "Scale based on Monitoring metrics"). One metric per policy: running and
    waiting are two, and the autoscaler follows the one that asks for more replicas.
    """
    low, high = fleet.min_replicas, fleet.max_replicas
    if low is None or high is None:
        raise ValueError("an autoscaled fleet has minReplicas and maxReplicas (rules.check_fleet)")
    shares = ((RUNNING, fleet.target_requests_per_replica), (WAITING, TARGET_QUEUE_PER_REPLICA))
    return gcp.compute.RegionAutoscalerAutoscalingPolicyArgs(
        min_replicas=low,
        max_replicas=high,
        mode="ON",
        cooldown_period=AUTOSCALER_INITIALIZATION_SECONDS,
        metrics=[
            gcp.compute.RegionAutoscalerAutoscalingPolicyMetricArgs(
                name=vllm_metric_type(metric),
                filter=vllm_series(metric, stack_label),
                single_instance_assignment=float(share),
            )
            for metric, share in shares
        ],
        scale_in_control=gcp.compute.RegionAutoscalerAutoscalingPolicyScaleInControlArgs(
            max_scaled_in_replicas=gcp.compute.RegionAutoscalerAutoscalingPolicyScaleInControlMaxScaledInReplicasArgs(
                fixed=SCALE_IN_STEP
            ),
            time_window_sec=SCALE_IN_WINDOW_SECONDS,
        ),
    )


@dataclass(frozen=True)
class FleetArgs:
    host: HostConfig
    fleet: FleetConfig
    zones: Sequence[str]
    region: str
    project: str
    labels: dict[str, str]
    subnetwork: pulumi.Input[str]
    network_tag: str
    service_account_email: pulumi.Input[str]  # components/identity.py
    service_account_member: pulumi.Input[str]
    model: ModelConfig
    tensor_parallel_size: int
    image: pulumi.Input[str]  # the vLLM image, through the mirror where there is one
    registry_host: str | None
    gpu_check_image: str
    apt_mirror: pulumi.Input[AptMirror] | None
    api_key: pulumi.Output[str]  # secret
    hugging_face_token: pulumi.Output[str] | None  # secret
    endpoint_host: pulumi.Output[str]  # the load balancer's address or tls.domain
    load_balancer_address: pulumi.Output[str]  # components/network.py
    proxy_subnet_cidr: str  # where the load balancer's proxies come from: Nginx trusts only them
    api_cidrs: Sequence[str]
    observability: bool = True  # observability.enabled: the replicas run the Ops Agent


class Fleet(pulumi.ComponentResource):
    """The replicas' secrets, instance template, managed instance group and rollout wait."""

    instance_group: pulumi.Output[str]  # the group's instance group, the load balancer's backend
    group_name: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]  # secret: operators reach replicas through IAP or a VPN
    rollout: local.Command  # done when the group is stable on the current template
    autoscaler: gcp.compute.RegionAutoscaler | None  # with fleet.minReplicas and maxReplicas

    def __init__(
        self, name: str, args: FleetArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:fleet:Fleet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        stack = pulumi.get_stack()
        host, machine = args.host, args.host.machine

        ssh_key = tls.PrivateKey(f"{name}-ssh-key", algorithm="ED25519", opts=child)
        self.ssh_private_key = pulumi.Output.secret(ssh_key.private_key_openssh)

        env_version = self._secret(
            name,
            "env",
            secrets_env_output(args.api_key, args.hugging_face_token),
            args,
        )
        backend_key = tls.PrivateKey(
            f"{name}-backend-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child
        )
        backend_certificate = tls.SelfSignedCert(
            f"{name}-backend-cert",
            private_key_pem=backend_key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(
                common_name=f"vllm-gcp {stack} replica", organization="vllm-gcp"
            ),
            validity_period_hours=BACKEND_CERTIFICATE_VALIDITY_HOURS,
            allowed_uses=["digital_signature", "server_auth"],
            opts=child,
        )
        proxy_bundle = self._proxy_bundle(
            args,
            backend_certificate.cert_pem,
            pulumi.Output.secret(backend_key.private_key_pem),
        )
        proxy_version = self._secret(name, "proxy", proxy_bundle, args)

        metadata = self._metadata(args, env_version, proxy_version)
        metadata["ssh-keys"] = ssh_key.public_key_openssh.apply(
            lambda public: f"{host.ssh_user}:{public.strip()}"
        )

        template = gcp.compute.RegionInstanceTemplate(
            f"{name}-template",
            region=args.region,
            machine_type=machine.name,
            disks=[
                gcp.compute.RegionInstanceTemplateDiskArgs(
                    boot=True,
                    auto_delete=True,
                    source_image=pinned_boot_image(
                        f"{name}-fleet-image",
                        host,
                        {"region": args.region},
                        parent=self,
                        depends_on=opts.depends_on if opts is not None else None,
                    ),
                    disk_size_gb=host.boot_disk_gb,
                    disk_type=BOOT_DISK_TYPE,
                )
            ],
            # No external address: the load balancer is the way in, Cloud NAT (public exposure)
            # the way out.
            network_interfaces=[
                gcp.compute.RegionInstanceTemplateNetworkInterfaceArgs(
                    subnetwork=args.subnetwork, nic_type=nic_type(machine)
                )
            ],
            scheduling=_template_scheduling(host.provisioning),
            shielded_instance_config=gcp.compute.RegionInstanceTemplateShieldedInstanceConfigArgs(
                enable_secure_boot=True,
                enable_vtpm=True,
                enable_integrity_monitoring=True,
            ),
            service_account=gcp.compute.RegionInstanceTemplateServiceAccountArgs(
                email=args.service_account_email, scopes=["cloud-platform"]
            ),
            tags=[args.network_tag],
            labels=args.labels,
            metadata=metadata,
            # Templates cannot change: every change is a new template (auto-named, so the new one
            # exists before the old one goes) that the group rolls out.
            opts=child,
        )

        autohealing = gcp.compute.RegionHealthCheck(
            f"{name}-autohealing",
            region=args.region,
            # Slower to judge than the load balancer's: a replica busy with a long answer is
            # not recreated for a slow health answer.
            check_interval_sec=30,
            timeout_sec=10,
            healthy_threshold=1,
            unhealthy_threshold=10,
            https_health_check=gcp.compute.RegionHealthCheckHttpsHealthCheckArgs(
                port=HTTPS_PORT, request_path=HEALTH_PATH
            ),
            opts=child,
        )

        zone_count = len(args.zones)
        group = gcp.compute.RegionInstanceGroupManager(
            f"{name}-group",
            region=args.region,
            base_instance_name=_resource_name(name, stack, limit=50),
            versions=[
                gcp.compute.RegionInstanceGroupManagerVersionArgs(
                    name="current", instance_template=template.self_link
                )
            ],
            target_size=args.fleet.size,
            distribution_policy_zones=list(args.zones),
            distribution_policy_target_shape=TARGET_SHAPES[args.fleet.target_shape],
            named_ports=[
                gcp.compute.RegionInstanceGroupManagerNamedPortArgs(name="https", port=HTTPS_PORT)
            ],
            auto_healing_policies=gcp.compute.RegionInstanceGroupManagerAutoHealingPoliciesArgs(
                health_check=autohealing.id,
                initial_delay_sec=AUTOHEALING_INITIAL_DELAY_SECONDS,
            ),
            update_policy=gcp.compute.RegionInstanceGroupManagerUpdatePolicyArgs(
                type="PROACTIVE",
                minimal_action="REPLACE",
                most_disruptive_allowed_action="REPLACE",
                replacement_method="SUBSTITUTE",
                # New replicas first, then the old ones go: a regional group's fixed surge and
                # unavailability must each be 0 or at least its number of zones.
                max_surge_fixed=zone_count,
                max_unavailable_fixed=0,
                # Never delete a serving replica to even out zones (BALANCED, ANY and
                # ANY_SINGLE_ZONE allow no other value).
                instance_redistribution_type="NONE",
                min_ready_sec=60,
            ),
            instance_lifecycle_policy=gcp.compute.RegionInstanceGroupManagerInstanceLifecyclePolicyArgs(
                force_update_on_repair="YES", default_action_on_failure="REPAIR"
            ),
            # fleet_rollout.sh waits, and says which replica is not ready and why.
            wait_for_instances=False,
            # With an autoscaler the size is its business: target_size is Optional and Computed
            # (resource_compute_region_instance_group_manager.go: "should never be set" when an
            # autoscaler is attached), set here only for the create (minReplicas), and its
            # changes ignored so that `pulumi up` never resizes the group back.
            opts=pulumi.ResourceOptions(
                parent=self, ignore_changes=["targetSize"] if args.fleet.autoscaled else None
            ),
        )
        self.instance_group = group.instance_group
        self.group_name = group.name

        script = group.name.apply(
            lambda group_name: render.render(
                ROLLOUT_SCRIPT,
                {
                    "GROUP": group_name,
                    "REGION": args.region,
                    "PROJECT": args.project,
                    "DEADLINE_SECONDS": str(ROLLOUT_DEADLINE_SECONDS),
                },
                directory=COMPONENTS_DIR,
            )
        )
        self.rollout = local.Command(
            f"{name}-rollout",
            create=script,
            update=script,
            interpreter=["bash", "-c"],
            add_previous_output_in_env=False,
            # A new template or size is a new rollout to wait for. An autoscaled group's size
            # moves on its own: the rollout waits for whatever size it has then.
            triggers=(
                [template.self_link]
                if args.fleet.autoscaled
                else [template.self_link, args.fleet.size]
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[group]),
        )
        self.autoscaler = (
            # resource_compute_region_autoscaler.go: name (auto-named once) and region are
            # ForceNew, target's diff compares self link and resource name
            # (CompareSelfLinkOrResourceName), the policy updates in place.
            gcp.compute.RegionAutoscaler(
                f"{name}-autoscaler",
                region=args.region,
                target=group.id,
                autoscaling_policy=autoscaling_policy(args.fleet, args.labels["stack"]),
                # Scaling starts once the group serves.
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.rollout]),
            )
            if args.fleet.autoscaled
            else None
        )

        self.register_outputs(
            {
                "instanceGroup": self.instance_group,
                "groupName": self.group_name,
                "sshPrivateKey": self.ssh_private_key,
            }
        )

    def _secret(
        self, name: str, purpose: str, content: pulumi.Output[str], args: FleetArgs
    ) -> pulumi.Output[str]:
        """A Secret Manager secret the replicas' account may read, with `content` as its
        version; the version's name (projects/P/secrets/S/versions/N) for the boot script."""
        child = pulumi.ResourceOptions(parent=self)
        secret = gcp.secretmanager.Secret(
            f"{name}-{purpose}-secret",
            secret_id=_resource_name(name, pulumi.get_stack(), purpose, limit=255),
            replication=gcp.secretmanager.SecretReplicationArgs(
                auto=gcp.secretmanager.SecretReplicationAutoArgs()
            ),
            labels=args.labels,
            opts=child,
        )
        # A new content is a new version (secret_data is replace-on-change): the version's name
        # in the template then rolls the group, and the old version goes once the rollout is
        # done (deletes come last in a `pulumi up`).
        version = gcp.secretmanager.SecretVersion(
            f"{name}-{purpose}-secret-version",
            secret=secret.id,
            secret_data=pulumi.Output.secret(content),
            opts=child,
        )
        gcp.secretmanager.SecretIamMember(
            f"{name}-{purpose}-secret-reader",
            secret_id=secret.id,
            role=SECRET_ACCESSOR_ROLE,
            member=args.service_account_member,
            opts=child,
        )
        return version.name

    @staticmethod
    def _proxy_bundle(
        args: FleetArgs, certificate: pulumi.Output[str], private_key: pulumi.Output[str]
    ) -> pulumi.Output[str]:
        """What the proxy step reads on stdin: the Nginx site, the certificate and its key."""
        api_cidrs = list(args.api_cidrs)
        values_in = (args.api_key, args.endpoint_host, args.load_balancer_address)
        site = pulumi.Output.all(*values_in).apply(
            lambda values: nginx_site(
                SiteSettings(
                    api_key=values[0],
                    server_name=values[1],
                    api_cidrs=api_cidrs,
                    load_balancer=LoadBalancerSite(
                        # The proxies connect; the forwarding rule's address may be the last
                        # X-Forwarded-For entry: both are skipped to find the client.
                        trusted_proxies=[args.proxy_subnet_cidr, values[2]],
                        health_check_sources=[args.proxy_subnet_cidr, *HEALTH_CHECK_RANGES],
                    ),
                )
            )
        )
        return pulumi.Output.secret(
            pulumi.Output.all(site, certificate, private_key).apply(
                lambda files: file_bundle(
                    {"site": files[0], "certificate": files[1], "private_key": files[2]}
                )
            )
        )

    @staticmethod
    def _metadata(
        args: FleetArgs, env_version: pulumi.Output[str], proxy_version: pulumi.Output[str]
    ) -> dict[str, pulumi.Input[str]]:
        """The template's metadata: the boot script, and the files it runs (host_bundle)."""
        machine = args.host.machine
        model = args.model
        image = pulumi.Output.from_input(args.image)
        spec = image.apply(lambda ref: container_spec(model, args.tensor_parallel_size, ref))
        registry_host = args.registry_host
        agent = OpsAgent(args.labels["stack"]) if args.observability else None
        host_setup: pulumi.Input[str] = (
            startup_script(machine, args.gpu_check_image, registry_host, None, agent)
            if args.apt_mirror is None
            else pulumi.Output.from_input(args.apt_mirror).apply(
                lambda apt: startup_script(machine, args.gpu_check_image, registry_host, apt, agent)
            )
        )
        limits = FleetBootLimits(
            host_setup=step_limit_seconds(HOST_SETUP_TIMEOUT_MINUTES),
            secrets=step_limit_seconds(SECRETS_TIMEOUT_MINUTES),
            run=step_limit_seconds(RUN_TIMEOUT_MINUTES),
            proxy=step_limit_seconds(SITE_TIMEOUT_MINUTES),
            serving=step_limit_seconds(SERVING_TIMEOUT_MINUTES),
        )
        return {
            "startup-script": pulumi.Output.all(env_version, proxy_version).apply(
                lambda versions: fleet_boot_script(versions[0], versions[1], limits)
            ),
            "vllm-gcp-host-setup": host_setup,
            "vllm-gcp-step-secrets": secrets_script(),
            "vllm-gcp-unit": pulumi.Output.all(spec, image).apply(
                lambda v: vllm_unit(v[0], v[1], registry_host, behind_load_balancer=True)
            ),
            "vllm-gcp-step-run": image.apply(lambda ref: run_script(ref, registry_host)),
            "vllm-gcp-step-proxy": proxy_script(),
            "vllm-gcp-step-serving": spec.apply(
                lambda s: serving_script(
                    model.served_model_name, s.offline_marker, SERVING_WAIT_SECONDS
                )
            ),
            # The stack's own key must work, and no project-wide key may.
            "enable-oslogin": "FALSE",
            "block-project-ssh-keys": "TRUE",
        }
