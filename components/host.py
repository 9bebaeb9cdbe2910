"""The GPU host: its service account, SSH key and the VM that boots ready for vLLM.

The VM takes no model, vLLM, TLS or access setting, so changing those never touches its inputs:
the startup script (scripts/startup.sh) depends only on the machine type and the mirrors it is
given, and the workload is configured over SSH by the later components.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp
import pulumi_tls as tls

from components import catalogue, host_paths, templates
from components.config import HOST_IMAGE, HostConfig

# The readiness check's image (`docker run --gpus all IMAGE nvidia-smi`): the container toolkit
# injects the host's nvidia-smi into any image, as NVIDIA's own sample workload shows, so a plain
# Ubuntu image does (CUDA tags are removed from Docker Hub at their end of life). On Docker Hub,
# so a Docker Hub remote repository can serve it to a private host.
GPU_CHECK_IMAGE = "ubuntu:24.04"

# Every machine type in the catalogue (A2, A3 High, G2) takes Balanced Persistent Disk as boot
# disk ("Accelerator-optimized machine family", supported disk types); A3 Mega/Ultra, which
# would need hyperdisk-balanced, are not in the catalogue.
BOOT_DISK_TYPE = "pd-balanced"

# Least privilege: the host writes its logs and metrics, nothing else project-wide. Access to
# a mirror repository or a weights bucket is granted on that resource alone, elsewhere.
HOST_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter")

_SAFE_RENDERED_VALUE = re.compile(r"^[A-Za-z0-9_./:@+=-]*$")
# The hosts the startup script hands the VM's access token to: Artifact Registry only.
_DOCKER_REGISTRY_HOST = re.compile(r"^[a-z0-9-]+-docker\.pkg\.dev$")
_APT_MIRROR_HOST = re.compile(r"^[a-z0-9-]+-apt\.pkg\.dev$")
_ACCOUNT_ID_MAX = 30
_ACCOUNT_ID_MIN = 6


@dataclass(frozen=True)
class AptMirror:
    """Artifact Registry remote repositories for the Ubuntu archive (components/mirror.py)."""

    host: str  # REGION-apt.pkg.dev
    sources: pulumi.Input[str]  # deb822 sources text naming the repositories


@dataclass(frozen=True)
class GpuHostArgs:
    host: HostConfig
    zone: str
    labels: dict[str, str]
    subnetwork: pulumi.Input[str]
    internal_address: pulumi.Input[str]
    external_address: pulumi.Input[str] | None  # None in private exposure: no access config
    network_tag: str
    # Mirrors (components/mirror.py); the defaults use the internet. The readiness check's image
    # is then the mirror's reference, pulled after logging Docker in to docker_registry_host.
    gpu_check_image: str = GPU_CHECK_IMAGE
    docker_registry_host: str | None = None
    apt_mirror: AptMirror | None = None


def service_account_id(name: str, stack: str) -> str:
    """A valid account id (6-30 characters, [a-z][-a-z0-9]*[a-z0-9]) naming component and stack.

    Too long a name keeps its start and gains a hash of the whole, so it stays unique per stack.
    """
    wanted = re.sub(r"[^a-z0-9-]+", "-", f"{name}-{stack}-host".lower()).strip("-")
    if not wanted or not wanted[0].isalpha():
        wanted = f"h-{wanted}"
    if len(wanted) > _ACCOUNT_ID_MAX:
        digest = hashlib.sha256(wanted.encode()).hexdigest()[:6]
        wanted = f"{wanted[: _ACCOUNT_ID_MAX - len(digest) - 1].rstrip('-')}-{digest}"
    return wanted.ljust(_ACCOUNT_ID_MIN, "0")


def startup_script(
    machine: catalogue.MachineSpec,
    gpu_check_image: str = GPU_CHECK_IMAGE,
    docker_registry_host: str | None = None,
    apt_mirror_host: str | None = None,
    apt_mirror_sources: str | None = None,
) -> str:
    """scripts/startup.sh for this machine (host properties and mirrors, never workload ones)."""
    if docker_registry_host is not None and not _DOCKER_REGISTRY_HOST.match(docker_registry_host):
        raise ValueError(f"{docker_registry_host!r} is not an Artifact Registry Docker host")
    if (apt_mirror_host is None) != (apt_mirror_sources is None):
        raise ValueError("an apt mirror needs both its host and its sources")
    if apt_mirror_host is not None and not _APT_MIRROR_HOST.match(apt_mirror_host):
        raise ValueError(f"{apt_mirror_host!r} is not an Artifact Registry apt host")
    values = {
        "GPU_COUNT": str(machine.gpu_count),
        "DRIVER_BRANCH": str(catalogue.MIN_DRIVER_FOR_CUDA13),
        "GPU_CHECK_IMAGE": gpu_check_image,
        "DOCKER_REGISTRY_HOST": docker_registry_host or "",
        "APT_SOURCES_MODE": "internet" if apt_mirror_host is None else "mirror",
        "APT_MIRROR_HOST": apt_mirror_host or "",
        # Base64: multi-line text travels as one plain word.
        "APT_MIRROR_SOURCES_B64": base64.b64encode((apt_mirror_sources or "").encode()).decode(),
        "STATE_DIR": host_paths.STATE_DIR,
        "READY_MARKER": host_paths.READY_MARKER,
        "STARTUP_FAILED_MARKER": host_paths.STARTUP_FAILED_MARKER,
        "STARTUP_LOG": host_paths.STARTUP_LOG,
        "CACHE_DIR": host_paths.CACHE_DIR,
    }
    for key, value in values.items():
        # Values land inside double quotes in the script: nothing that could end or expand them.
        if not _SAFE_RENDERED_VALUE.match(value):
            raise ValueError(f"startup script value {key}={value!r} is not a plain word")
    return templates.render("startup.sh", values)


def _startup_script_input(machine: catalogue.MachineSpec, args: GpuHostArgs) -> pulumi.Input[str]:
    if args.apt_mirror is None:
        return startup_script(machine, args.gpu_check_image, args.docker_registry_host)
    mirror_host = args.apt_mirror.host
    return pulumi.Output.from_input(args.apt_mirror.sources).apply(
        lambda sources: startup_script(
            machine, args.gpu_check_image, args.docker_registry_host, mirror_host, sources
        )
    )


def image_family(reference: str) -> tuple[str, str] | None:
    """(project, family) where `host.image` names an image family, else None (a concrete image)."""
    match = HOST_IMAGE.fullmatch(reference)
    if match is None or not match["family"]:
        return None
    return match["project"], match["name"]


def _nic_type(machine: catalogue.MachineSpec) -> str | None:
    """GVNIC on A3, which requires it: its general-purpose NICs are gVNIC ("Networking and GPU
    machines", compute/docs/gpus/gpu-network-bandwidth). Unset on A2/G2: a changed nic_type
    replaces the VM, and their existing hosts run with the default.
    """
    return "GVNIC" if machine.name.startswith("a3-") else None


def _scheduling(provisioning: str) -> gcp.compute.InstanceSchedulingArgs:
    # GPU VMs cannot live-migrate: host maintenance must stop them (compute/docs/gpus).
    if provisioning == "spot":
        return gcp.compute.InstanceSchedulingArgs(
            on_host_maintenance="TERMINATE",
            provisioning_model="SPOT",
            preemptible=True,
            automatic_restart=False,
            # Stop, not delete, on preemption: the boot disk and the stack's state survive.
            instance_termination_action="STOP",
        )
    return gcp.compute.InstanceSchedulingArgs(
        on_host_maintenance="TERMINATE",
        provisioning_model="STANDARD",
        preemptible=False,
        automatic_restart=True,
    )


class GpuHost(pulumi.ComponentResource):
    """Service account, SSH key and the GPU VM."""

    boot_image: pulumi.Output[str]
    instance_name: pulumi.Output[str]
    instance_id: pulumi.Output[str]
    ssh_private_key: pulumi.Output[str]
    service_account_email: pulumi.Output[str]
    public_ip: pulumi.Output[str] | None
    private_ip: pulumi.Output[str]
    ssh_address: pulumi.Output[str]
    endpoint_address: pulumi.Output[str]

    def __init__(
        self, name: str, args: GpuHostArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:host:GpuHost", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        host = args.host
        machine = host.machine

        account = gcp.serviceaccount.Account(
            f"{name}-host-sa",
            account_id=service_account_id(name, pulumi.get_stack()),
            display_name=f"vllm-gcp GPU host ({pulumi.get_stack()})",
            # Its account id is fixed: a replacement must delete first, or the create gets 409.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        for role in HOST_ROLES:
            gcp.projects.IAMMember(
                f"{name}-host-{role.split('/')[-1].replace('.', '-').lower()}",
                project=account.project,
                role=role,
                member=account.member,
                opts=child,
            )
        self.service_account_email = account.email

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
        # the A2 Ultra), so a machine type change always replaces the VM. A provisioning change
        # alone keeps the machine type, so the new type is the current one and decides it.
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
                    image=self._boot_image(name, host.image, opts),
                    size=host.boot_disk_gb,
                    type=BOOT_DISK_TYPE,
                ),
            ),
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    subnetwork=args.subnetwork,
                    network_ip=args.internal_address,
                    access_configs=access_configs,
                    nic_type=_nic_type(machine),
                )
            ],
            scheduling=_scheduling(host.provisioning),
            # Canonical's accelerator images load Canonical-signed NVIDIA modules
            # (linux-restricted-modules), so Secure Boot stays on; the startup script's fallback
            # installs the same signed modules through ubuntu-drivers.
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(
                enable_secure_boot=True,
                enable_vtpm=True,
                enable_integrity_monitoring=True,
            ),
            service_account=gcp.compute.InstanceServiceAccountArgs(
                email=account.email,
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
        self.private_ip = pulumi.Output.from_input(args.internal_address)
        self.public_ip = None
        if args.external_address is not None:
            self.public_ip = pulumi.Output.from_input(args.external_address)
        self.ssh_address = self.public_ip if self.public_ip is not None else self.private_ip
        self.endpoint_address = self.ssh_address

        self.register_outputs(
            {
                "bootImage": self.boot_image,
                "instanceName": self.instance_name,
                "instanceId": self.instance_id,
                "sshPrivateKey": self.ssh_private_key,
                "serviceAccountEmail": self.service_account_email,
                "publicIp": self.public_ip,
                "privateIp": self.private_ip,
                "sshAddress": self.ssh_address,
                "endpointAddress": self.endpoint_address,
            }
        )

    def _boot_image(
        self, name: str, reference: str, opts: pulumi.ResourceOptions | None
    ) -> pulumi.Input[str]:
        """The concrete image the VM boots from: `host.image`, or its family's newest image when
        the VM was created, pinned.

        The boot image is ForceNew, and the provider's DiskImageDiffSuppress cannot match the
        concrete name it reads back (ubuntu-accelerator-2404-amd64-with-nvidia-580-v...) to the
        family ubuntu-accelerator-2404-amd64-with-nvidia-580 (diskImageFamilyEquals, google-beta
        v7.45.0 services/compute/resource_compute_disk.go: the name holds "-amd64", the family
        does not end with it), so a family in the Instance would replace the VM on every up. A
        concrete image matches the state exactly. The family is resolved here and kept in a
        Stash, which saves the first value it gets and only then changes when it is replaced
        (pulumi's deploy/builtins.go: Update keeps "output"); replacement_trigger replaces it
        when `host.image` changes. A newer image in the family then shows as an update of the
        Stash's input alone, never as a change of the VM.
        """
        family = image_family(reference)
        if family is None:
            return reference
        project, family_name = family
        newest = gcp.compute.get_image_output(
            family=family_name,
            project=project,
            # The Compute API is enabled by the stack (components/services.py): wait for it.
            opts=pulumi.InvokeOutputOptions(
                parent=self, depends_on=opts.depends_on if opts is not None else None
            ),
        )
        pinned = pulumi.Stash(
            f"{name}-host-image",
            input=newest.self_link,
            opts=pulumi.ResourceOptions(parent=self, replacement_trigger=reference),
        )
        return pinned.output
