"""vllm-gcp:fleet validation: what a fleet cannot be is refused by key path, with the reason,
before anything is registered; without the key the stack is the single VM."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.config import ConfigError, StackConfig, validate
from tests.harness import stack_config


def config_of(*overrides: dict[str, Any]) -> StackConfig:
    raw = stack_config("prod", *overrides)
    config, _ = validate(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, "prod"
    )
    return config


def problems(*overrides: dict[str, Any]) -> dict[str, str]:
    """Key path to message, for every problem reported."""
    with pytest.raises(ConfigError) as caught:
        config_of(*overrides)
    return {problem.key: problem.message for problem in caught.value.problems}


def fleet(**keys: Any) -> dict[str, Any]:
    return {"vllm-gcp:fleet": keys}


def test_without_the_key_the_stack_is_the_single_vm() -> None:
    config = config_of()
    assert config.fleet is None


def test_a_fleet_defaults_to_two_replicas_on_the_zones_that_offer_the_gpu() -> None:
    config = config_of(fleet())
    assert config.fleet is not None
    assert config.fleet.size == 2
    assert config.fleet.target_shape == "balanced"
    # a2-ultragpu-2g (A100 80GB) in us-central1: the catalogue's zones of the region.
    assert config.fleet_zones == ["us-central1-a", "us-central1-c"]


def test_an_autoscaled_fleet_starts_at_min_replicas_with_the_default_target() -> None:
    config = config_of(fleet(minReplicas=1, maxReplicas=4))
    assert config.fleet is not None
    assert config.fleet.autoscaled
    assert config.fleet.size == 1
    assert config.fleet.target_requests_per_replica == 16


def test_autoscaling_without_the_metrics_agent_is_refused() -> None:
    found = problems(
        fleet(minReplicas=1, maxReplicas=4), {"vllm-gcp:observability": {"enabled": False}}
    )
    assert set(found) == {"vllm-gcp:fleet.minReplicas"}
    assert "vllm-gcp:observability.enabled" in found["vllm-gcp:fleet.minReplicas"]


def test_zones_outside_the_region_or_without_the_gpu_are_refused() -> None:
    found = problems(fleet(zones=["us-east1-b", "us-central1-f", "us-central1-a"]))
    assert set(found) == {"vllm-gcp:fleet.zones[0]", "vllm-gcp:fleet.zones[1]"}
    assert "is not in us-central1, the region of gcp:zone" in found["vllm-gcp:fleet.zones[0]"]
    assert "is not known to offer" in found["vllm-gcp:fleet.zones[1]"]


@pytest.mark.parametrize(
    ("keys", "path", "words"),
    [
        ({"replicas": 0}, "vllm-gcp:fleet.replicas", "greater than or equal to 1"),
        ({"minReplicas": 3, "maxReplicas": 2}, "vllm-gcp:fleet.minReplicas", "above maxReplicas"),
        ({"maxReplicas": 3}, "vllm-gcp:fleet.minReplicas", "both bounds"),
        ({"targetRequestsPerReplica": 8}, "vllm-gcp:fleet.targetRequestsPerReplica", "only"),
        ({"targetRequestsPerReplica": 0}, "vllm-gcp:fleet.targetRequestsPerReplica", "1"),
        ({"replicas": 2, "minReplicas": 1}, "vllm-gcp:fleet.replicas", "not both"),
        ({"zones": ["us-central1-a", "us-central1-a"]}, "vllm-gcp:fleet.zones", "twice"),
        ({"targetShape": "round"}, "vllm-gcp:fleet.targetShape", "even"),
        (
            {"minReplicas": 1, "maxReplicas": 3, "targetShape": "even"},
            "vllm-gcp:fleet.targetShape",
            "even cannot be autoscaled: GCE autoscales a regional group with the balanced shape",
        ),
        (
            {"minReplicas": 1, "maxReplicas": 3, "targetShape": "any-single-zone"},
            "vllm-gcp:fleet.targetShape",
            "any-single-zone cannot be autoscaled",
        ),
        ({"proxySubnetCidr": "8.8.0.0/23"}, "vllm-gcp:fleet.proxySubnetCidr", "private"),
        ({"proxySubnetCidr": "10.42.0.0/23"}, "vllm-gcp:fleet.proxySubnetCidr", "overlaps"),
        ({"proxySubnetCidr": "10.43.0.0/27"}, "vllm-gcp:fleet.proxySubnetCidr", "/26"),
    ],
    ids=[
        "no-replica",
        "min-above-max",
        "one-bound",
        "target-without-autoscaling",
        "no-request-per-replica",
        "fixed-and-autoscaled",
        "zone-twice",
        "unknown-shape",
        "autoscaled-even",
        "autoscaled-single-zone",
        "public-proxy-range",
        "proxy-range-overlaps-subnet",
        "proxy-range-too-small",
    ],
)
def test_sizes_shapes_and_ranges_a_fleet_cannot_have_are_refused(
    keys: dict[str, Any], path: str, words: str
) -> None:
    found = problems(fleet(**keys))
    assert path in found, found
    assert words in found[path]


def test_what_the_load_balancer_cannot_serve_is_refused_in_one_pass() -> None:
    found = problems(
        fleet(),
        {
            "vllm-gcp:tls": {
                "mode": "letsencrypt",
                "domain": "llm.example.com",
                "email": "ops@example.com",
            },
            "vllm-gcp:network": {"sshJumpHost": "ops@bastion.example.com"},
        },
    )
    assert set(found) == {"vllm-gcp:tls.mode", "vllm-gcp:network.sshJumpHost"}
    assert "Let's Encrypt" in found["vllm-gcp:tls.mode"]
    assert "configured at boot, not over SSH" in found["vllm-gcp:network.sshJumpHost"]
