"""vllm-gcp: a private, OpenAI-compatible LLM endpoint on Google Cloud for Elastic's AI features.

Config in, components built (each from what the ones before it made), outputs exported (the
outputs contract in the README).
"""

import pulumi

from components import config
from components.elastic import ElasticIntegration, ElasticIntegrationArgs
from components.host import GpuHost, GpuHostArgs
from components.host_bundle import GPU_CHECK_IMAGE
from components.identity import HostIdentity, HostIdentityArgs
from components.mirror import Mirror, MirrorArgs
from components.network import Network, NetworkArgs
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
    ),
    apis_on,
)
identity = HostIdentity("vllm", HostIdentityArgs(stack=stack.stack), apis_on)
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
        hugging_face_token=stack.secrets.hugging_face_token,
        image=mirror.vllm_image,
        registry_host=mirror.registry_host,
    ),
    # Weights in Cloud Storage and the mirrored image are readable only once the grants exist.
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
        api_key=server.api_key,
        address=host.endpoint_address,
        provided_certificate=stack.secrets.tls_certificate,
        provided_private_key=stack.secrets.tls_private_key,
    ),
)
elastic = ElasticIntegration(
    "vllm",
    ElasticIntegrationArgs(
        elastic=stack.elastic,
        stack=stack.stack,
        endpoint_host=proxy.endpoint_host,
        api_key=server.api_key,
        served_model_name=stack.model.served_model_name,
        tool_calling=stack.model.effective_tool_call_parser is not None,
        ca_certificate=proxy.ca_certificate,
        endpoint_ready=[server.serving, proxy.site],
    ),
)

pulumi.export("endpoint", elastic.endpoint)
pulumi.export("connectorUrl", elastic.connector_url)
pulumi.export("apiKey", server.api_key)
pulumi.export("model", stack.model.served_model_name)
pulumi.export("caCertificate", proxy.ca_certificate)
pulumi.export("kibanaConnector", elastic.connector_body)
pulumi.export("kibanaSettings", elastic.kibana_settings)
pulumi.export("publicIp", host.public_ip)
pulumi.export("privateIp", host.private_ip)
pulumi.export("instanceName", host.instance_name)
pulumi.export("zone", stack.zone)
pulumi.export("sshUser", stack.host.ssh_user)
pulumi.export("sshPrivateKey", host.ssh_private_key)
