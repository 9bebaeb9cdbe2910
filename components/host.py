"""The GPU host: its SSH key, the VM that boots ready for vLLM, and the first contact with it.

The VM takes no model, vLLM, TLS or access setting, so changing those never touches its inputs:
its startup script (components/host_bundle.py) depends only on the machine type and the mirrors
it is given. Once it exists, the host-ready step waits (over SSH) for the startup script's
readiness marker; the later components configure the workload after that step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_tls as tls
from pulumi_command import local, remote

from components import catalogue
from components.config import HOST_IMAGE, HostConfig
from components.host_bundle import AptMirror, OpsAgent, host_ready_script, startup_script
from components.remote_access import FIRST_DIAL_ATTEMPTS, connection, first_contact, host_step

# Every machine type in the catalogue (A2, A3 High, G2) takes Balanced Persistent Disk as boot
# disk ("Accelerator-optimized machine family", supported disk types); A3 Mega/Ultra, which
# would need hyperdisk-balanced, are not in the catalogue.
BOOT_DISK_TYPE = "pd-balanced"
HOST_READY_TIMEOUT_MINUTES = 30
# The host-ready step was the vLLM server's before it was the host's: the alias keeps it.
FORMER_HOST_READY_PARENT_TYPE = "vllm-gcp:vllm_server:VllmServer"


@dataclass(frozen=True)
class GpuHostArgs:
    host: HostConfig
    zone: str
    labels: dict[str, str]
    subnetwork: pulumi.Input[str]
    internal_address: pulumi.Input[str] | None  # components/network.py: the VM's internal IP
    external_address: pulumi.Input[str] | None  # None in private exposure: no access config
    network_tag: str
    service_account_email: pulumi.Input[str]  # components/identity.py
    # Mirrors (components/mirror.py); without them the host uses the internet.
    gpu_check_image: (
        str  # the readiness check's image, through the Docker mirror where there is one
    )
    docker_registry_host: str | None = None
    apt_mirror: pulumi.Input[AptMirror] | None = None
    ssh_jump_host: str | None = None  # network.sshJumpHost: user@host[:port]
    observability: bool = True  # observability.enabled: the startup script runs the Ops Agent


def image_family(reference: str) -> tuple[str, str] | None:
    """(project, family) where `host.image` names an image family, else None (a concrete image)."""
    match = HOST_IMAGE.fullmatch(reference)
    if match is None or not match["family"]:
        return None
    return match["project"], match["name"]


def nic_type(machine: catalogue.MachineSpec) -> str | None:
    """GVNIC on A3, which requires it: its general-purpose NICs are gVNIC ("Networking and GPU
    machines", compute/docs/gpus/gpu-network-bandwidth). Unset on A2/G2: a changed nic_type
    replaces the VM, and their existing hosts run with the default.
    """
    return "GVNIC" if machine.name.startswith("a3-") else None


@dataclass(frozen=True)
class Scheduling:
    """The scheduling of a GPU VM, for the Instance's and an instance template's arguments."""

    provisioning_model: str
    preemptible: bool
    automatic_restart: bool
    instance_termination_action: str | None
    # GPU VMs cannot live-migrate: host maintenance must stop them (compute/docs/gpus).
    on_host_maintenance: str = "TERMINATE"


def scheduling(provisioning: str) -> Scheduling:
    if provisioning == "spot":
        # Stop, not delete, on preemption: the boot disk and the stack's state survive.
        return Scheduling(
            "SPOT", preemptible=True, automatic_restart=False, instance_termination_action="STOP"
        )
    return Scheduling(
        "STANDARD", preemptible=False, automatic_restart=True, instance_termination_action=None
    )


def _instance_scheduling(plan: Scheduling) -> gcp.compute.InstanceSchedulingArgs:
    return gcp.compute.InstanceSchedulingArgs(
        on_host_maintenance=plan.on_host_maintenance,
        provisioning_model=plan.provisioning_model,
        preemptible=plan.preemptible,
        automatic_restart=plan.automatic_restart,
        instance_termination_action=plan.instance_termination_action,
    )


def _startup_script_input(machine: catalogue.MachineSpec, args: GpuHostArgs) -> pulumi.Input[str]:
    registry = args.docker_registry_host
    agent = OpsAgent(args.labels["stack"]) if args.observability else None
    if args.apt_mirror is None:
        return startup_script(machine, args.gpu_check_image, registry, None, agent)
    return pulumi.Output.from_input(args.apt_mirror).apply(
        lambda apt: startup_script(machine, args.gpu_check_image, registry, apt, agent)
    )


class GpuHost(pulumi.ComponentResource):
    """SSH key, the GPU VM, the SSH connection to it and the step that waits until it is ready."""

    boot_image: pulumi.Output[str]
    instance_name: pulumi.Output[str]
    instance_id: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]
    public_ip: pulumi.Output[str] | None
    private_ip: pulumi.Output[str]
    endpoint_address: pulumi.Output[str]
    connection: remote.ConnectionArgs
    first_contact: local.Command | None  # only through a jump host
    ready: remote.Command  # the startup script has prepared this boot: later steps wait for it

    def __init__(
        self, name: str, args: GpuHostArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:host:GpuHost", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        host = args.host
        machine = host.machine
        if args.internal_address is None:
            raise ValueError("the GPU host needs its static internal address (network.py)")
        internal_address = args.internal_address

        ssh_key = tls.PrivateKey(f"{name}-ssh-key", algorithm="ED25519", opts=child)
        self.ssh_private_key = pulumi.Output.secret(ssh_key.private_key_openssh)
        ssh_keys = ssh_key.public_key_openssh.apply(
            lambda public: f"{host.ssh_user}:{public.strip()}"
        )

        access_configs = None
        if args.external_address is not None:
            access_configs = [
                gcp.compute.InstanceNetworkInterfaceAccessConfigArgs(
                    nat_ip=args.external_address, network_tier="PREMIUM"
                )
            ]

        # The provider cannot stop a VM with bundled local SSD (A2 Ultra, A3) for an in-place
        # update (terraform-provider-google#26173). Whether that applies depends on the CURRENT
        # VM, which the program cannot see (a2-ultragpu-2g -> g2-standard-8 would try to stop
        # the A2 Ultra), so a machine type change always replaces the VM.
        # A provisioning change (standard <-> spot) replaces the VM on every machine type: the
        # provider marks scheduling.provisioning_model and .preemptible ForceNew
        # (google-beta v7.45.0 services/compute/resource_compute_instance.go).
        instance = gcp.compute.Instance(
            f"{name}-host",
            zone=args.zone,
            machine_type=machine.name,
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=pinned_boot_image(
                        f"{name}-host-image",
                        host,
                        {"zone": args.zone},
                        parent=self,
                        depends_on=opts.depends_on if opts is not None else None,
                    ),
                    size=host.boot_disk_gb,
                    type=BOOT_DISK_TYPE,
                ),
            ),
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    subnetwork=args.subnetwork,
                    network_ip=internal_address,
                    access_configs=access_configs,
                    nic_type=nic_type(machine),
                )
            ],
            scheduling=_instance_scheduling(scheduling(host.provisioning)),
            # Canonical's accelerator images load Canonical-signed NVIDIA modules
            # (linux-restricted-modules), so Secure Boot stays on; the startup script's fallback
            # installs the same signed modules through ubuntu-drivers.
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(
                enable_secure_boot=True,
                enable_vtpm=True,
                enable_integrity_monitoring=True,
            ),
            service_account=gcp.compute.InstanceServiceAccountArgs(
                email=args.service_account_email,
                # The account's IAM roles are the guard; scopes only narrow it further.
                scopes=["cloud-platform"],
            ),
            tags=[args.network_tag],
            labels=args.labels,
            metadata={
                # The metadata key (never metadata_startup_script, which forces a new VM):
                # a changed script updates in place and runs at the next boot.
                "startup-script": _startup_script_input(machine, args),
                "ssh-keys": ssh_keys,
                # The stack's own key must work, and no project-wide key may.
                "enable-oslogin": "FALSE",
                "block-project-ssh-keys": "TRUE",
            },
            allow_stopping_for_update=True,
            # A Spot VM that a preemption stopped is started again by the next `pulumi up`: the
            # provider's Read sets desired_status to the VM's status when it is set, the refresh
            # (Pulumi.yaml) sees TERMINATED, and Update starts it (resource_compute_instance.go,
            # "desired_status" in resourceComputeInstanceRead and resourceComputeInstanceUpdate).
            desired_status="RUNNING",
            opts=pulumi.ResourceOptions(
                parent=self,
                # Its static IPs can belong to one VM at a time: a replacement goes first.
                delete_before_replace=True,
                replace_on_changes=["machineType"],
                # Only fields the program never sets may be ignored: the engine resets an ignored
                # path to its old input even when it replaces the resource (processIgnoreChanges
                # in pulumi's step_generator.go), and the bridge drops the provider's diff for it
                # (pulumi-terraform-bridge tfshim/sdk-v2 processIgnoreChanges).
                # - scratchDisks: GCE lists bundled local SSDs as scratch disks
                #   (terraform-provider-google#19648); ForceNew, so each up would replace.
                # - keyRevocationActionType: Optional, ForceNew, not Computed, and Read stores
                #   whatever the API reports; where GCE reports its default NONE for an unset
                #   field, every up would replace (GoogleCloudPlatform/cloud-foundation-fabric
                #   #3620 met that permadiff).
                ignore_changes=["scratchDisks", "keyRevocationActionType"],
                custom_timeouts=pulumi.CustomTimeouts(create="20m", update="20m", delete="20m"),
            ),
        )

        self.boot_image = instance.boot_disk.initialize_params.image
        self.instance_name = instance.name
        self.instance_id = instance.instance_id
        # The static addresses the VM is given, not the VM's own outputs: they are the same
        # values, but stay known across a VM replacement, so the certificate (whose IP SANs
        # replace it), the Nginx site and the Kibana connector do not change with the VM.
        self.private_ip = pulumi.Output.from_input(internal_address)
        self.public_ip = None
        if args.external_address is not None:
            self.public_ip = pulumi.Output.from_input(args.external_address)
        self.endpoint_address = self.public_ip if self.public_ip is not None else self.private_ip

        # The first step dials a VM that may still be booting; the later ones (self.connection)
        # one that has answered.
        first_connection = connection(
            self.endpoint_address,
            host.ssh_user,
            self.ssh_private_key,
            args.ssh_jump_host,
            dial_attempts=FIRST_DIAL_ATTEMPTS,
        )
        self.connection = connection(
            self.endpoint_address, host.ssh_user, self.ssh_private_key, args.ssh_jump_host
        )
        # Through a jump host, the first SSH is made by the system's client, afresh each attempt.
        self.first_contact = first_contact(
            f"{name}-first-contact",
            connection=first_connection,
            instance_id=self.instance_id,
            parent=self,
        )
        self.ready = host_step(
            f"{name}-host-ready",
            connection=first_connection,
            # Its own wait ends a little before the step's limit, so it reports the startup log
            # before the limit cuts it off.
            script=host_ready_script(timeout_seconds=(HOST_READY_TIMEOUT_MINUTES - 2) * 60),
            instance_id=self.instance_id,
            parent=self,
            timeout_minutes=HOST_READY_TIMEOUT_MINUTES,
            depends_on=[self.first_contact] if self.first_contact is not None else (),
            aliases=[pulumi.Alias(parent=pulumi.create_urn(name, FORMER_HOST_READY_PARENT_TYPE))],
        )

        self.register_outputs(
            {
                "bootImage": self.boot_image,
                "instanceName": self.instance_name,
                "instanceId": self.instance_id,
                "sshPrivateKey": self.ssh_private_key,
                "publicIp": self.public_ip,
                "privateIp": self.private_ip,
                "endpointAddress": self.endpoint_address,
                "ready": self.ready.stdout,
            }
        )


def pinned_boot_image(
    name: str,
    host: HostConfig,
    placement: Mapping[str, str],
    *,
    parent: pulumi.Resource,
    depends_on: pulumi.Input[Sequence[pulumi.Input[pulumi.Resource]] | pulumi.Resource] | None,
) -> pulumi.Input[str]:
    """The concrete image a VM (or an instance template) boots from: `host.image`, or its
    family's newest image when the VM was made, pinned.

    The boot image is ForceNew, and the provider's DiskImageDiffSuppress cannot match the
    concrete name it reads back (ubuntu-accelerator-2404-amd64-with-nvidia-580-v...) to the
    family ubuntu-accelerator-2404-amd64-with-nvidia-580 (diskImageFamilyEquals, google-beta
    v7.45.0 services/compute/resource_compute_disk.go: the name holds "-amd64", the family does
    not end with it), so a family in the Instance would replace the VM on every up. A concrete
    image matches the state exactly. The family is resolved here and kept in a Stash, which
    saves the first value it gets and only then changes when it is replaced (pulumi's
    deploy/builtins.go: Update keeps "output"); replacement_trigger replaces it with everything
    in the configuration that replaces the VM (the image, the machine type, the provisioning
    model, and `placement`: the zone, or a fleet's region), so a new VM always boots the
    family's newest image. A newer image in the family alone shows as an update of the Stash's
    input, never as a change of the VM. `depends_on` holds the invoke until the Compute API is
    enabled (components/services.py).
    """
    family = image_family(host.image)
    if family is None:
        return host.image
    project, family_name = family
    newest = gcp.compute.get_image_output(
        family=family_name,
        project=project,
        opts=pulumi.InvokeOutputOptions(parent=parent, depends_on=depends_on),
    )
    replaces_vm = {
        "image": host.image,
        "machineType": host.machine_type,
        "provisioning": host.provisioning,
        **placement,
    }
    pinned = pulumi.Stash(
        name,
        input=newest.self_link,
        opts=pulumi.ResourceOptions(parent=parent, replacement_trigger=replaces_vm),
    )
    return pinned.output
