"""ProjectServices under Pulumi mocks, on its own and as __main__.py wires it."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_gcp as gcp
import pytest

from components.host import GpuHost
from components.mirror import Mirror
from components.network import Network
from components.services import ProjectServices, ProjectServicesArgs
from tests.harness import Plan, build_components, run_program, stack_config

SERVICE = "gcp:projects/service:Service"
BASE = {"compute.googleapis.com", "iam.googleapis.com", "cloudresourcemanager.googleapis.com"}
OBSERVABILITY = {"monitoring.googleapis.com", "logging.googleapis.com"}  # on by default


def build(args: ProjectServicesArgs) -> Plan:
    def declare() -> dict[str, object]:
        services = ProjectServices("vllm", args)
        return {"count": len(services.services)}

    return build_components(declare, stack="prod")


def enabled(built: Plan) -> set[str]:
    return {r.plain["service"] for r in built.of_type(SERVICE)}


@pytest.mark.parametrize(
    ("private", "mirrors", "gcs_weights", "extra"),
    [
        (False, False, False, set[str]()),
        (True, False, False, {"dns.googleapis.com"}),
        (False, True, False, {"artifactregistry.googleapis.com"}),
        (False, False, True, {"storage.googleapis.com"}),
        (
            True,
            True,
            True,
            {"dns.googleapis.com", "artifactregistry.googleapis.com", "storage.googleapis.com"},
        ),
    ],
)
def test_only_the_apis_the_configuration_calls_are_enabled(
    private: bool, mirrors: bool, gcs_weights: bool, extra: set[str]
) -> None:
    built = build(ProjectServicesArgs("test-project", private, mirrors, gcs_weights))
    assert enabled(built) == BASE | extra
    assert built.outputs["count"] == len(BASE | extra)


def test_observability_enables_monitoring_and_logging() -> None:
    built = build(ProjectServicesArgs("test-project", False, False, observability=True))
    assert enabled(built) == BASE | OBSERVABILITY


def test_destroy_never_disables_an_api() -> None:
    built = build(ProjectServicesArgs("test-project", private=True, mirrors=True, gcs_weights=True))
    for service in built.of_type(SERVICE):
        assert service.plain["project"] == "test-project"
        assert service.plain["disableOnDestroy"] is False
        assert service.plain["disableDependentServices"] is False
        assert service.name.startswith("vllm-")


PRIVATE: dict[str, Any] = {
    "vllm-gcp:network": {"exposure": "private"},
    "vllm-gcp:access": {"apiCidrs": ["10.20.0.0/16"], "sshCidrs": ["10.10.0.5/32"]},
    "vllm-gcp:host": {"image": "projects/test-project/global/images/vllm-host-2404-nvidia-580"},
    "vllm-gcp:mirror": {"dockerRemote": True, "aptRemote": True},
    "vllm-gcp:model": {"source": "gcs", "gcsUri": "gs://weights-bucket/models/mistral-small"},
}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, BASE | OBSERVABILITY),
        (
            PRIVATE,
            BASE
            | OBSERVABILITY
            | {"dns.googleapis.com", "artifactregistry.googleapis.com", "storage.googleapis.com"},
        ),
        ({"vllm-gcp:observability": {"enabled": False}}, BASE),
    ],
    ids=["prod", "prod-private", "prod-without-observability"],
)
def test_the_program_enables_its_apis_before_the_components_that_call_them(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], expected: set[str]
) -> None:
    waits: dict[str, list[object]] = {}
    for component in (Network, GpuHost, Mirror):
        original = component.__init__

        def recording_init(
            self: Any,
            name: str,
            args: Any,
            opts: pulumi.ResourceOptions | None = None,
            *,
            _original: Any = original,
            _type: str = component.__name__,
        ) -> None:
            depends_on = opts.depends_on if opts is not None else None
            waits[_type] = list(depends_on) if isinstance(depends_on, list) else []
            _original(self, name, args, opts)

        monkeypatch.setattr(component, "__init__", recording_init)

    result = run_program(stack_config("prod", overrides), stack="prod")
    assert enabled(result) == expected
    assert set(waits) == {"Network", "GpuHost", "Mirror"}
    for component, dependencies in waits.items():
        assert len(dependencies) == len(expected), component
        assert all(isinstance(d, gcp.projects.Service) for d in dependencies), component
