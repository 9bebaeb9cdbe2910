"""The hourly cost of a plan: its VMs (with their GPUs) and its load balancer, from a dated table.

An estimate for review, not a quote: on-demand or Spot list prices in USD, without boot disks,
egress, the load balancer's data processing, taxes or any discount (sustained or committed use).
The table covers the catalogue's GPU machines (components/catalogue.py) in us-central1 and in
the other regions read for them; elsewhere the cost line says there is no price.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Whole-machine prices (vCPUs, memory, GPUs and bundled local SSD), per hour: (on-demand, Spot).
# From Cyclenerd/google-cloud-pricing-cost-calculator pricing.yml (commit 0166a59, generated
# 2025-03-06 from the Cloud Billing Catalog API), rounded to 4 decimals. Prices change: the live
# ones are on https://cloud.google.com/compute/gpus-pricing and
# https://cloud.google.com/compute/vm-instance-pricing.
VM_PRICES_SOURCE = (
    "https://github.com/Cyclenerd/google-cloud-pricing-cost-calculator/blob/"
    "0166a59ebba7c36f2cc8c931d9f258dcebc44776/pricing.yml"
)
VM_PRICES_AS_OF = "2025-03-06"
VM_HOURLY_USD: dict[str, dict[str, tuple[float, float]]] = {
    "a2-highgpu-1g": {
        "asia-northeast1": (4.0496, 1.2714),
        "asia-northeast3": (4.0496, 1.2942),
        "asia-southeast1": (4.0138, 1.6055),
        "europe-west4": (3.7480, 1.4459),
        "me-west1": (4.0407, 1.3514),
        "us-central1": (3.6734, 1.2934),
        "us-east1": (3.6734, 1.2934),
        "us-west1": (3.6734, 1.2934),
        "us-west3": (4.3251, 1.7266),
        "us-west4": (3.9344, 1.5737),
    },
    "a2-highgpu-2g": {
        "asia-northeast1": (8.0992, 2.5428),
        "asia-northeast3": (8.0992, 2.5883),
        "asia-southeast1": (8.0275, 3.2109),
        "europe-west4": (7.4959, 2.8917),
        "me-west1": (8.0814, 2.7027),
        "us-central1": (7.3468, 2.5867),
        "us-east1": (7.3468, 2.5867),
        "us-west1": (7.3468, 2.5867),
        "us-west3": (8.6501, 3.4531),
        "us-west4": (7.8687, 3.1473),
    },
    "a2-highgpu-4g": {
        "asia-northeast1": (16.1984, 5.0855),
        "asia-northeast3": (16.1984, 5.1767),
        "asia-southeast1": (16.0550, 6.4218),
        "europe-west4": (14.9919, 5.7835),
        "me-west1": (16.1629, 5.4054),
        "us-central1": (14.6935, 5.1734),
        "us-east1": (14.6935, 5.1734),
        "us-west1": (14.6935, 5.1734),
        "us-west3": (17.3003, 6.9062),
        "us-west4": (15.7374, 6.2946),
    },
    "a2-highgpu-8g": {
        "asia-northeast1": (32.3967, 10.1710),
        "asia-northeast3": (32.3967, 10.3534),
        "asia-southeast1": (32.1101, 12.8436),
        "europe-west4": (29.9838, 11.5670),
        "me-west1": (32.3258, 10.8109),
        "us-central1": (29.3871, 10.3468),
        "us-east1": (29.3871, 10.3468),
        "us-west1": (29.3871, 10.3468),
        "us-west3": (34.6005, 13.8124),
        "us-west4": (31.4748, 12.5893),
    },
    "a2-megagpu-16g": {
        "asia-northeast1": (60.8941, 19.0162),
        "asia-northeast3": (60.8941, 19.4827),
        "asia-southeast1": (60.4762, 24.1896),
        "europe-west4": (56.6266, 21.9982),
        "me-west1": (61.3135, 20.2864),
        "us-central1": (55.7395, 19.4802),
        "us-east1": (55.7395, 19.4802),
        "us-west1": (55.7395, 19.4802),
        "us-west3": (65.5560, 26.1666),
        "us-west4": (59.5316, 23.8115),
    },
    "a2-ultragpu-1g": {
        "asia-southeast1": (6.2477, 2.5125),
        "europe-west4": (5.5809, 1.8111),
        "us-central1": (5.0688, 2.0275),
        "us-east4": (5.7077, 2.2966),
        "us-east5": (5.5649, 1.7597),
    },
    "a2-ultragpu-2g": {
        "asia-southeast1": (12.4954, 5.0251),
        "europe-west4": (11.1618, 3.6221),
        "us-central1": (10.1376, 4.0549),
        "us-east4": (11.4155, 4.5932),
        "us-east5": (11.1298, 3.5194),
    },
    "a2-ultragpu-4g": {
        "asia-southeast1": (24.9907, 10.0502),
        "europe-west4": (22.3237, 7.2442),
        "us-central1": (20.2752, 8.1099),
        "us-east4": (22.8309, 9.1863),
        "us-east5": (22.2597, 7.0388),
    },
    "a2-ultragpu-8g": {
        "asia-southeast1": (49.9815, 20.1004),
        "europe-west4": (44.6473, 14.4884),
        "us-central1": (40.5504, 16.2197),
        "us-east4": (45.6619, 18.3727),
        "us-east5": (44.5193, 14.0776),
    },
    "a3-highgpu-1g": {
        "asia-southeast1": (14.2848, 4.0377),
        "europe-west1": (12.1712, 4.8685),
        "europe-west4": (14.0676, 3.9699),
        "us-central1": (11.0612, 4.4245),
        "us-east4": (11.0695, 4.4549),
        "us-east5": (12.4479, 4.9791),
        "us-west1": (11.0612, 4.4245),
        "us-west4": (12.4561, 4.9824),
    },
    "a3-highgpu-2g": {
        "us-central1": (22.1225, 8.8489),
        "us-east4": (22.1389, 8.9098),
        "us-east5": (24.8958, 9.9582),
        "us-west1": (22.1225, 8.8489),
        "us-west4": (24.9122, 9.9648),
    },
    "a3-highgpu-4g": {
        "asia-southeast1": (57.1391, 16.1509),
        "europe-west1": (48.6849, 19.4740),
        "europe-west4": (56.2702, 15.8796),
        "us-central1": (44.2450, 17.6979),
        "us-east4": (44.2779, 17.8195),
        "us-east5": (49.7916, 19.9165),
        "us-west1": (44.2450, 17.6979),
        "us-west4": (49.8245, 19.9296),
    },
    "a3-highgpu-8g": {
        "asia-southeast1": (114.2783, 32.3018),
        "europe-west1": (97.3698, 38.9481),
        "us-central1": (88.4900, 35.3957),
        "us-east4": (88.5558, 35.6390),
        "us-east5": (99.5832, 39.8329),
        "us-west1": (88.4900, 35.3957),
        "us-west4": (99.6490, 39.8592),
    },
    "g2-standard-4": {
        "asia-southeast1": (0.8720, 0.3108),
        "europe-west1": (0.7783, 0.2927),
        "europe-west4": (0.7429, 0.2532),
        "us-central1": (0.7068, 0.2799),
        "us-east1": (0.7068, 0.2799),
        "us-east4": (0.7045, 0.2818),
        "us-west1": (0.7068, 0.2799),
        "us-west4": (0.7961, 0.2530),
    },
    "g2-standard-8": {
        "asia-southeast1": (1.0531, 0.3833),
        "europe-west1": (0.9399, 0.3398),
        "europe-west4": (0.8972, 0.3150),
        "us-central1": (0.8536, 0.3368),
        "us-east1": (0.8536, 0.3368),
        "us-east4": (0.8508, 0.3403),
    },
    "g2-standard-12": {
        "us-central1": (1.0004, 0.3936),
        "us-east1": (1.0004, 0.3936),
        "us-east4": (0.9971, 0.3988),
        "us-west1": (1.0004, 0.3936),
        "us-west4": (1.1268, 0.3522),
    },
    "g2-standard-16": {
        "asia-southeast1": (1.4153, 0.5282),
        "europe-west1": (1.2632, 0.4338),
        "europe-west4": (1.2058, 0.4384),
        "us-central1": (1.1472, 0.4504),
        "us-east1": (1.1472, 0.4504),
        "us-east4": (1.1435, 0.4573),
        "us-west1": (1.1472, 0.4504),
        "us-west4": (1.2921, 0.4017),
    },
    "g2-standard-24": {
        "asia-southeast1": (2.4684, 0.9114),
        "europe-west1": (2.2031, 0.7736),
        "europe-west4": (2.1030, 0.7534),
        "us-central1": (2.0008, 0.7872),
        "us-east1": (2.0008, 0.7872),
        "us-east4": (1.9943, 0.7977),
        "us-west1": (2.0008, 0.7872),
        "us-west4": (2.2535, 0.7043),
    },
    "g2-standard-32": {
        "asia-southeast1": (2.1397, 0.8179),
        "europe-west1": (1.9097, 0.6220),
        "europe-west4": (1.8229, 0.6854),
        "us-central1": (1.7344, 0.6778),
        "us-east1": (1.7344, 0.6778),
        "us-east4": (1.7287, 0.6914),
        "us-west1": (1.7344, 0.6778),
        "us-west4": (1.9534, 0.6001),
    },
    "g2-standard-48": {
        "asia-southeast1": (4.9369, 1.8229),
        "europe-west1": (4.4062, 1.5472),
        "europe-west4": (4.2060, 1.5068),
        "us-central1": (4.0017, 1.5744),
        "us-east1": (4.0017, 1.5744),
        "us-east4": (3.9886, 1.5953),
        "us-west1": (4.0017, 1.5744),
        "us-west4": (4.5071, 1.4086),
    },
}
# A forwarding rule (the first 5 of a project): https://cloud.google.com/load-balancing/pricing,
# "Load balancing and forwarding rules", read 2026-12-01. The regional proxies' own hours and the
# data each GiB processed are not in this table.
FORWARDING_RULE_HOURLY_USD = 0.025
LOAD_BALANCER_PRICES_SOURCE = "https://cloud.google.com/load-balancing/pricing"
LOAD_BALANCER_PRICES_AS_OF = "2026-12-01"

INSTANCE = "gcp:compute/instance:Instance"
TEMPLATE = "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate"
GROUP = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
AUTOSCALER = "gcp:compute/regionAutoscaler:RegionAutoscaler"
FORWARDING_RULE = "gcp:compute/forwardingRule:ForwardingRule"


@dataclass(frozen=True)
class Machines:
    """Some VMs of one machine type, one provisioning model, in one region."""

    machine_type: str
    region: str
    spot: bool
    count: int
    max_count: int  # the autoscaler's maximum; the count otherwise

    @property
    def model(self) -> str:
        return "Spot" if self.spot else "on-demand"

    def hourly(self) -> float | None:
        prices = VM_HOURLY_USD.get(self.machine_type, {}).get(self.region)
        if prices is None:
            return None
        return prices[1] if self.spot else prices[0]


def _spot(inputs: Mapping[str, Any]) -> bool:
    scheduling = inputs.get("scheduling") or {}
    return scheduling.get("provisioningModel") == "SPOT" or bool(scheduling.get("preemptible"))


def _group_size(
    group: Mapping[str, Any], autoscalers: Sequence[Mapping[str, Any]]
) -> tuple[int, int]:
    """(size, maximum): the target size, or an autoscaler's bounds where one targets the group."""
    name = str(group["name"])
    for autoscaler in autoscalers:
        inputs = autoscaler["inputs"]
        if str(inputs.get("target") or "").endswith(f"/{name}") or inputs.get("target") == name:
            policy = inputs.get("autoscalingPolicy") or {}
            return int(policy.get("minReplicas") or 0), int(policy.get("maxReplicas") or 0)
    size = int(group["inputs"].get("targetSize") or 0)
    return size, size


def machines(resources: Sequence[Mapping[str, Any]]) -> list[Machines]:
    """The VMs a plan runs: its instances, and each group's replicas of its template."""
    found: list[Machines] = []
    for resource in resources:
        if resource["type"] == INSTANCE:
            inputs = resource["inputs"]
            region = str(inputs.get("zone") or "").rsplit("-", 1)[0]
            found.append(Machines(str(inputs.get("machineType")), region, _spot(inputs), 1, 1))
    templates = {str(r["name"]): r["inputs"] for r in resources if r["type"] == TEMPLATE}
    autoscalers = [r for r in resources if r["type"] == AUTOSCALER]
    for group in (r for r in resources if r["type"] == GROUP):
        inputs = group["inputs"]
        for version in inputs.get("versions") or []:
            link = str(version.get("instanceTemplate") or "")
            template = next((t for n, t in templates.items() if link.rsplit("/", 1)[-1] == n), None)
            if template is None:
                continue
            size, maximum = _group_size(group, autoscalers)
            found.append(
                Machines(
                    str(template.get("machineType")),
                    str(inputs.get("region")),
                    _spot(template),
                    size,
                    maximum,
                )
            )
    return found


def _usd(value: float) -> str:
    return f"${value:,.2f}"


def cost_lines(resources: Sequence[Mapping[str, Any]]) -> list[str]:
    """The plan's hourly cost, each part with its price, and what the estimate leaves out."""
    parts: list[str] = []
    low = high = 0.0
    missing: list[str] = []
    for group in machines(resources):
        hourly = group.hourly()
        counted = (
            f"{group.count}"
            if group.count == group.max_count
            else f"{group.count}-{group.max_count}"
        )
        if hourly is None:
            missing.append(
                f"no price for {group.machine_type} ({group.model}) in region {group.region} in "
                "the table"
            )
            continue
        low += hourly * group.count
        high += hourly * group.max_count
        parts.append(
            f"{counted} x {group.machine_type} {group.model} in {group.region} at ${hourly:.4f}/h"
        )
    rules = sum(1 for r in resources if r["type"] == FORWARDING_RULE)
    if rules:
        low += rules * FORWARDING_RULE_HOURLY_USD
        high += rules * FORWARDING_RULE_HOURLY_USD
        parts.append(f"{rules} load balancer forwarding rule(s) at ${FORWARDING_RULE_HOURLY_USD}/h")
    total = (_usd(low) if low == high else f"{_usd(low)}-{_usd(high)}") + "/h"
    if missing:
        total = f"{total} and what has no price" if parts else "unknown"
    lines = [f"Hourly cost, estimated: {total}"]
    lines += [f"  {part}" for part in parts + missing]
    lines.append(
        "  List prices in USD without boot disks, egress, the load balancer's proxy hours and "
        "data processing, taxes or discounts."
    )
    lines.append(f"  VM prices: {VM_PRICES_SOURCE} (as of {VM_PRICES_AS_OF}).")
    if rules:
        source, date = LOAD_BALANCER_PRICES_SOURCE, LOAD_BALANCER_PRICES_AS_OF
        lines.append(f"  Forwarding rules: {source} (as of {date}).")
    return lines
