"""The Google APIs the stack uses, enabled in the project before anything that calls them.

A fresh project has Compute Engine and IAM off, so without this `pulumi up` fails part-way.
Destroying the stack leaves every API on: other things in the project may use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

# Always: the VM, its network and firewall (compute), the host's service account (iam), and
# its project-level role grants (cloudresourcemanager: setIamPolicy on the project).
BASE_APIS = (
    "compute.googleapis.com",
    "iam.googleapis.com",
    "cloudresourcemanager.googleapis.com",
)
DNS_API = "dns.googleapis.com"  # private exposure: the Private Google Access zones
ARTIFACT_REGISTRY_API = "artifactregistry.googleapis.com"  # a mirror's remote repositories
STORAGE_API = "storage.googleapis.com"  # model.source gcs: the weights bucket's grant
# A fleet's replicas read their secrets there.
SECRET_MANAGER_API = "secretmanager.googleapis.com"  # noqa: S105 (an API's name)
# Observability: the dashboard, the alert policies and the agent's metrics (monitoring); the
# log-based metric and the agent's logs (logging). On in most projects, not in every one.
OBSERVABILITY_APIS = ("monitoring.googleapis.com", "logging.googleapis.com")


@dataclass(frozen=True)
class ProjectServicesArgs:
    project: str
    private: bool  # network.exposure is private
    mirrors: bool  # mirror.dockerRemote or mirror.aptRemote
    gcs_weights: bool = False  # model.source is gcs
    fleet: bool = False  # vllm-gcp:fleet is set
    observability: bool = False  # observability.enabled


def required_apis(args: ProjectServicesArgs) -> list[str]:
    """The APIs this configuration calls, in a stable order."""
    apis: list[str] = list(BASE_APIS)
    if args.private:
        apis.append(DNS_API)
    if args.mirrors:
        apis.append(ARTIFACT_REGISTRY_API)
    if args.gcs_weights:
        apis.append(STORAGE_API)
    if args.fleet:
        apis.append(SECRET_MANAGER_API)
    if args.observability:
        apis.extend(OBSERVABILITY_APIS)
    return apis


class ProjectServices(pulumi.ComponentResource):
    """One `gcp.projects.Service` per API the stack needs; `services` is what others wait for."""

    services: list[pulumi.Resource]

    def __init__(
        self, name: str, args: ProjectServicesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:services:ProjectServices", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.services = [
            gcp.projects.Service(
                f"{name}-{api.split('.', 1)[0]}-api",
                project=args.project,
                service=api,
                # A test stack's destroy must never switch off an API the project still uses.
                disable_on_destroy=False,
                disable_dependent_services=False,
                opts=child,
            )
            for api in required_apis(args)
        ]
        self.register_outputs({"services": [s.urn for s in self.services]})
