"""The GPU host's identity: its own service account, with the two project roles its metrics and
logs agent needs (only with observability on).

Built first: the mirrors grant this account read access, and the host runs as it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

# Least privilege: the host's Ops Agent writes its logs and metrics, nothing else project-wide,
# and without observability the host has no project role. Access to a mirror repository or a
# weights bucket is granted on that resource alone (components/mirror.py).
HOST_ROLES = ("roles/logging.logWriter", "roles/monitoring.metricWriter")
# Where these resources lived before this component existed: the aliases keep existing stacks'
# account (and the VM that runs as it) in place.
FORMER_PARENT_TYPE = "vllm-gcp:host:GpuHost"

_ACCOUNT_ID_MAX = 30
_ACCOUNT_ID_MIN = 6


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


def role_resource_name(name: str, role: str) -> str:
    return f"{name}-host-{role.rsplit('/', maxsplit=1)[-1].replace('.', '-').lower()}"


@dataclass(frozen=True)
class HostIdentityArgs:
    stack: str
    observability: bool = True  # observability.enabled: the agent's two roles


class HostIdentity(pulumi.ComponentResource):
    """The host's service account and its project roles."""

    email: pulumi.Output[str]
    member: pulumi.Output[str]

    def __init__(
        self, name: str, args: HostIdentityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:identity:HostIdentity", name, None, opts)
        moved = [pulumi.Alias(parent=pulumi.create_urn(name, FORMER_PARENT_TYPE))]
        account = gcp.serviceaccount.Account(
            f"{name}-host-sa",
            account_id=service_account_id(name, args.stack),
            display_name=f"vllm-gcp GPU host ({args.stack})",
            # Its account id is fixed: a replacement must delete first, or the create gets 409.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, aliases=moved),
        )
        for role in HOST_ROLES if args.observability else ():
            gcp.projects.IAMMember(
                role_resource_name(name, role),
                project=account.project,
                role=role,
                member=account.member,
                opts=pulumi.ResourceOptions(parent=self, aliases=moved),
            )
        self.email = account.email
        self.member = account.member
        self.register_outputs({"email": self.email, "member": self.member})
