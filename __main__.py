"""vllm-gcp: a private, OpenAI-compatible LLM endpoint on Google Cloud for Elastic's AI features.

Config in, components built (each from what the ones before it made), outputs exported (the
outputs contract in the README).
"""

import pulumi

from components import config
from components.certificates import ServerCertificate, ServerCertificateArgs
from components.credentials import ApiKey
from components.elastic import ElasticIntegration, ElasticIntegrationArgs
from components.fleet import Fleet, FleetArgs
from components.host import GpuHost, GpuHostArgs
from components.host_bundle import GPU_CHECK_IMAGE
from components.identity import HostIdentity, HostIdentityArgs
from components.load_balancer import LoadBalancer, LoadBalancerArgs
from components.mirror import Mirror, MirrorArgs
from components.network import Network, NetworkArgs
from components.observability import (
    AccessLogTraffic,
    LoadBalancerTraffic,
    Observability,
    ObservabilityArgs,
)
from components.services import ProjectServices, ProjectServicesArgs
from components.tls_proxy import TlsProxy, TlsProxyArgs
from components.vllm_server import VllmServer, VllmServerArgs

stack = config.load()

# Every component that calls a Google API waits until the APIs are on (depends_on below).
services = ProjectServices(
    "vllm",
    ProjectServicesArgs(
        project=stack.project,
        private=stack.network.private,
        mirrors=stack.mirror.docker_remote or stack.mirror.apt_remote,
        gcs_weights=stack.model.source == "gcs",
        fleet=stack.fleet is not None,
        observability=stack.observability.enabled,
    ),
)
apis_on = pulumi.ResourceOptions(depends_on=services.services)

network = Network(
    "vllm",
    NetworkArgs(
        network=stack.network,
        access=stack.access,
        tls_mode=stack.tls.mode,
        region=stack.region,
        fleet=stack.fleet,
    ),
    apis_on,
)
identity = HostIdentity(
    "vllm",
    HostIdentityArgs(stack=stack.stack, observability=stack.observability.enabled),
    apis_on,
)
mirror = Mirror(
    "vllm",
    MirrorArgs(
        mirror=stack.mirror,
        model=stack.model,
        project=stack.project,
        region=stack.region,
        service_account_email=identity.email,
    ),
    apis_on,
)
api_key = ApiKey("vllm")
certificate = ServerCertificate(
    "vllm",
    ServerCertificateArgs(
        tls=stack.tls,
        address=network.endpoint_address,
        provided_certificate=stack.secrets.tls_certificate,
        provided_private_key=stack.secrets.tls_private_key,
    ),
)

if stack.fleet is None:
    # One VM, configured over SSH.
    host = GpuHost(
        "vllm",
        GpuHostArgs(
            host=stack.host,
            zone=stack.zone,
            labels=stack.labels,
            subnetwork=network.subnetwork,
            internal_address=network.internal_address,
            external_address=network.external_address,
            network_tag=network.host_tag,
            service_account_email=identity.email,
            gpu_check_image=mirror.image(GPU_CHECK_IMAGE),
            docker_registry_host=mirror.registry_host,
            apt_mirror=mirror.apt_mirror,
            ssh_jump_host=stack.network.ssh_jump_host,
            observability=stack.observability.enabled,
        ),
        apis_on,
    )
    server = VllmServer(
        "vllm",
        VllmServerArgs(
            model=stack.model,
            tensor_parallel_size=stack.tensor_parallel_size,
            connection=host.connection,
            instance_id=host.instance_id,
            host_ready=host.ready,
            api_key=api_key.value,
            hugging_face_token=stack.secrets.hugging_face_token,
            image=mirror.vllm_image,
            registry_host=mirror.registry_host,
        ),
        # Weights in Cloud Storage and the mirrored image are readable only once the grants
        # exist.
        pulumi.ResourceOptions(depends_on=mirror.grants),
    )
    proxy = TlsProxy(
        "vllm",
        TlsProxyArgs(
            tls=stack.tls,
            access=stack.access,
            connection=host.connection,
            instance_id=host.instance_id,
            host_ready=host.ready,
            api_key=api_key.value,
            address=host.endpoint_address,
            certificate=certificate,
        ),
    )
    endpoint_ready: list[pulumi.Resource] = [server.serving, proxy.site]
    traffic: LoadBalancerTraffic | AccessLogTraffic = AccessLogTraffic(host.instance_id)
    operators = {
        "publicIp": host.public_ip,
        "privateIp": host.private_ip,
        "instanceName": host.instance_name,
        "instanceGroup": None,
        "zone": stack.zone,
        "sshPrivateKey": host.ssh_private_key,
    }
else:
    # Replicas on a regional managed instance group, configured at boot, behind a load balancer.
    fleet = Fleet(
        "vllm",
        FleetArgs(
            host=stack.host,
            fleet=stack.fleet,
            zones=stack.fleet_zones,
            region=stack.region,
            project=stack.project,
            labels=stack.labels,
            subnetwork=network.subnetwork,
            network_tag=network.host_tag,
            service_account_email=identity.email,
            service_account_member=identity.member,
            model=stack.model,
            tensor_parallel_size=stack.tensor_parallel_size,
            image=mirror.vllm_image,
            registry_host=mirror.registry_host,
            gpu_check_image=mirror.image(GPU_CHECK_IMAGE),
            apt_mirror=mirror.apt_mirror,
            api_key=api_key.value,
            hugging_face_token=stack.secrets.hugging_face_token,
            endpoint_host=certificate.endpoint_host,
            load_balancer_address=network.endpoint_address,
            proxy_subnet_cidr=stack.fleet.proxy_subnet_cidr,
            api_cidrs=stack.access.api_cidrs,
            observability=stack.observability.enabled,
        ),
        pulumi.ResourceOptions(depends_on=[*services.services, *mirror.grants]),
    )
    load_balancer = LoadBalancer(
        "vllm",
        LoadBalancerArgs(
            region=stack.region,
            private=stack.network.private,
            vpc=network.vpc,
            subnetwork=network.subnetwork,
            address=network.endpoint_address,
            proxy_subnet=network.proxy_subnet,
            certificate=certificate,
            instance_group=fleet.instance_group,
            group_ready=fleet.rollout,
        ),
        apis_on,
    )
    endpoint_ready = [fleet.rollout, load_balancer.forwarding_rule]
    traffic = LoadBalancerTraffic(
        load_balancer.forwarding_rule.name, internal=stack.network.private
    )
    operators = {
        "publicIp": network.external_address,
        "privateIp": network.internal_address,
        "instanceName": None,
        "instanceGroup": fleet.instance_group,
        "zone": None,  # gcp:zone only names the region
        "sshPrivateKey": fleet.ssh_private_key,
    }

elastic = ElasticIntegration(
    "vllm",
    ElasticIntegrationArgs(
        elastic=stack.elastic,
        stack=stack.stack,
        endpoint_host=certificate.endpoint_host,
        api_key=api_key.value,
        served_model_name=stack.model.served_model_name,
        tool_calling=stack.model.effective_tool_call_parser is not None,
        ca_certificate=certificate.ca_certificate,
        endpoint_ready=endpoint_ready,
    ),
)

# The dashboard and the alert policies, of what the hosts' agent and the load balancer report.
dashboard_url: pulumi.Output[str] | None = None
if stack.observability.enabled:
    observability = Observability(
        "vllm",
        ObservabilityArgs(
            project=stack.project,
            stack=stack.stack,
            stack_label=stack.labels["stack"],
            notification_channels=stack.notification_channels,
            traffic=traffic,
        ),
        apis_on,
    )
    dashboard_url = observability.dashboard_url

pulumi.export("endpoint", elastic.endpoint)
pulumi.export("connectorUrl", elastic.connector_url)
pulumi.export("apiKey", api_key.value)
pulumi.export("model", stack.model.served_model_name)
pulumi.export("caCertificate", certificate.ca_certificate)
pulumi.export("kibanaConnector", elastic.connector_body)
pulumi.export("kibanaSettings", elastic.kibana_settings)
pulumi.export("inferenceId", elastic.inference_id)  # with elastic.elasticsearchUrl, else null
for key, value in operators.items():
    pulumi.export(key, value)
pulumi.export("sshUser", stack.host.ssh_user)
pulumi.export("dashboardUrl", dashboard_url)  # with observability, else null
