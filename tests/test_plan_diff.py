"""The plan's parts without a program run: the diff's replace rules, the cost line, Pulumi's key
paths for --set, and the plan's words in configuration messages."""

from __future__ import annotations

from typing import Any

import pytest
from pulumi.runtime import rpc

from components import catalogue
from components.config import ConfigError, validate
from tools import plan, plan_diff, prices
from tools.offline import Registered

INSTANCE = "gcp:compute/instance:Instance"
COMMAND = "command:remote:Command"
TEMPLATE = "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate"


def _record(typ: str, name: str, inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": typ, "name": name, "inputs": inputs, **extra}


def _vm(**inputs: Any) -> dict[str, Any]:
    base = {
        "name": "vm",
        "zone": "us-central1-a",
        "machineType": "g2-standard-8",
        "bootDisk": {"initializeParams": {"image": "img-1", "size": 150}},
        "metadata": {"startup-script": "a"},
        "scratchDisks": [],
    }
    return _record(
        INSTANCE,
        "vm",
        {**base, **inputs},
        computed={"instanceId": "1234567890"},
        options={"ignoreChanges": ["scratchDisks"]},
    )


def _step(triggers: list[Any], stdin: str = "unit") -> dict[str, Any]:
    return _record(
        COMMAND,
        "step",
        {"create": "run", "stdin": stdin, "triggers": triggers},
        dependsOn=[f"{INSTANCE}::vm"],
        triggers=["vm.instanceId"],
    )


def _kinds(changes: list[plan_diff.Change]) -> dict[str, str]:
    return {c.name: c.kind for c in changes}


def test_a_vm_updates_in_place_for_its_script_and_disk_size() -> None:
    old = [_vm(), _step(["1234567890"])]
    new = [
        _vm(
            metadata={"startup-script": "b"},
            bootDisk={"initializeParams": {"image": "img-1", "size": 200}},
        ),
        _step(["1234567890"]),
    ]
    changes = plan_diff.diff(new, old)
    assert [(c.kind, c.name, c.paths) for c in changes] == [
        ("update", "vm", ["bootDisk.initializeParams.size", "metadata.startup-script"])
    ]


def test_a_new_image_replaces_the_vm_and_reruns_its_step_with_the_trigger_named() -> None:
    old = [_vm(), _step(["1234567890"])]
    new = [
        _vm(bootDisk={"initializeParams": {"image": "img-2", "size": 150}}),
        _step(["1234567890"]),
    ]
    changes = plan_diff.diff(new, old)
    assert _kinds(changes) == {"vm": "replace", "step": "replace"}
    assert changes[0].replaced_by == ["bootDisk.initializeParams.image (ForceNew in the provider)"]
    assert changes[1].carried == {"triggers[0]": "vm"}
    assert plan_diff.rerun_lines(changes, new) == [
        "  step: replaced, so its create script runs again: triggers[0] (vm.instanceId) changed "
        "(vm is replaced)"
    ]


def test_a_trigger_carried_inside_a_secret_list_is_traced_by_its_digest() -> None:
    digest = plan_diff.redacted_digest("1234567890")
    old = [_vm(), _step([digest])]
    new = [_vm(zone="us-central1-b"), _step([digest])]
    assert _kinds(plan_diff.diff(new, old)) == {"vm": "replace", "step": "replace"}


def test_ignored_paths_and_stdin_changes() -> None:
    old = [_vm(), _step(["1234567890"])]
    new = [_vm(scratchDisks=[{"size": 375}]), _step(["1234567890"], stdin="unit 2")]
    changes = plan_diff.diff(new, old)
    assert [(c.kind, c.name, c.paths) for c in changes] == [("update", "step", ["stdin"])]


def test_a_template_is_immutable_but_for_its_labels() -> None:
    old = [_record(TEMPLATE, "t", {"labels": {"a": "1"}, "machineType": "g2-standard-8"})]
    labels = [_record(TEMPLATE, "t", {"labels": {"a": "2"}, "machineType": "g2-standard-8"})]
    machine = [_record(TEMPLATE, "t", {"labels": {"a": "1"}, "machineType": "g2-standard-12"})]
    assert _kinds(plan_diff.diff(labels, old)) == {"t": "update"}
    assert _kinds(plan_diff.diff(machine, old)) == {"t": "replace"}


def test_created_deleted_and_a_changed_replacement_trigger() -> None:
    stash = "pulumi:index:Stash"
    old = [_record(stash, "image", {}, options={"replacementTrigger": {"zone": "a"}}), _vm()]
    new = [_record(stash, "image", {}, options={"replacementTrigger": {"zone": "b"}}), _step([])]
    changes = plan_diff.diff(new, old)
    assert [(c.kind, c.name) for c in changes] == [
        ("replace", "image"),
        ("create", "step"),
        ("delete", "vm"),
    ]


def _fleet(target: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    records = [
        _record(
            TEMPLATE,
            "tpl",
            {"machineType": "a2-ultragpu-2g", "scheduling": {"provisioningModel": "STANDARD"}},
        ),
        _record(
            "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager",
            "group",
            {
                "region": "us-central1",
                "targetSize": 3,
                "versions": [
                    {"instanceTemplate": "https://compute/regions/r/instanceTemplates/tpl"}
                ],
            },
        ),
        _record("gcp:compute/forwardingRule:ForwardingRule", "rule", {}),
    ]
    if target is not None:
        records.append(_record("gcp:compute/regionAutoscaler:RegionAutoscaler", "scaler", target))
    return records


def test_a_fleet_costs_its_replicas_and_its_forwarding_rule() -> None:
    lines = prices.cost_lines(_fleet())
    assert lines[:3] == [
        "Hourly cost, estimated: $30.44/h",
        "  3 x a2-ultragpu-2g on-demand in us-central1 at $10.1376/h",
        "  1 load balancer forwarding rule(s) at $0.025/h",
    ]
    assert f"  VM prices: {prices.VM_PRICES_SOURCE} (as of 2025-03-06)." in lines


def test_an_autoscaled_fleet_costs_a_range() -> None:
    policy = {"target": "group", "autoscalingPolicy": {"minReplicas": 1, "maxReplicas": 4}}
    assert prices.cost_lines(_fleet(policy))[:2] == [
        "Hourly cost, estimated: $10.16-$40.58/h",
        "  1-4 x a2-ultragpu-2g on-demand in us-central1 at $10.1376/h",
    ]


def test_a_spot_vm_in_a_region_without_a_price() -> None:
    vm = _vm(zone="me-central2-a", scheduling={"provisioningModel": "SPOT"})
    assert prices.cost_lines([vm])[:2] == [
        "Hourly cost, estimated: unknown",
        "  no price for g2-standard-8 (Spot) in region me-central2 in the table",
    ]


def test_every_catalogue_gpu_machine_has_a_us_central1_price() -> None:
    offered = {
        m for m, spec in catalogue.MACHINE_TYPES.items() if "us-central1-a" in spec.gpu.zones
    }
    assert {m for m in offered if "us-central1" not in prices.VM_HOURLY_USD.get(m, {})} == {
        "g2-standard-96"
    }


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("vllm-gcp:access.sshCidrs[0]", ("vllm-gcp:access", ["sshCidrs", 0])),
        ("access.sshCidrs[1]", ("vllm-gcp:access", ["sshCidrs", 1])),
        ('vllm-gcp:elastic["kibanaUrl"]', ("vllm-gcp:elastic", ["kibanaUrl"])),
        ("gcp:project", ("gcp:project", [])),
        ("vllm-gcp:model.extraArgs[0]", ("vllm-gcp:model", ["extraArgs", 0])),
    ],
)
def test_key_paths_as_pulumi_config_set_path_takes_them(
    key: str, expected: tuple[str, list[Any]]
) -> None:
    assert plan.parse_key_path(key) == expected


def test_set_extends_a_list_by_one_and_refuses_a_gap() -> None:
    config: dict[str, Any] = {"vllm-gcp:access": {"sshCidrs": ["203.0.113.7/32"]}}
    plan._assign(config, "vllm-gcp:access", ["sshCidrs", 1], "198.51.100.0/24")  # pyright: ignore[reportPrivateUsage]
    assert config == {"vllm-gcp:access": {"sshCidrs": ["203.0.113.7/32", "198.51.100.0/24"]}}
    with pytest.raises(plan.PlanError, match=r"index 3 is past the end of the list \(2 item"):
        plan._assign(config, "vllm-gcp:access", ["sshCidrs", 3], "x")  # pyright: ignore[reportPrivateUsage]


def test_the_plan_names_set_where_the_configuration_says_pulumi_config_set() -> None:
    with pytest.raises(ConfigError) as raised:
        validate({"gcp:zone": "us-central1-a"}, "dev")
    spoken = plan.plan_speaks(str(raised.value))
    assert "pulumi config set" not in spoken
    assert spoken.splitlines()[-3:] == [
        "Set the values this stack leaves to you, then run `vllm-gcp plan` again:",
        "  --set 'gcp:project=<your-gcp-project-id>'",
        "  --set 'vllm-gcp:access.sshCidrs[0]=<your-public-ip>/32'",
    ]


def test_a_missing_secret_points_at_stand_in() -> None:
    message = (
        "The stack configuration has 1 problem(s):\n"
        "  - vllm-gcp:kibanaApiKey: required when elastic.kibanaUrl is set: pulumi config set "
        "--secret vllm-gcp:kibanaApiKey <a key>"
    )
    assert (
        plan.plan_speaks(message)
        .splitlines()[1]
        .endswith("<a key> (to plan without it: --stand-in kibanaApiKey)")
    )


def test_the_stand_in_certificate_is_the_same_every_time() -> None:
    assert plan.stand_in_certificate("llm.example.com") == plan.stand_in_certificate(
        "llm.example.com"
    )


def test_a_secret_trigger_without_a_name_is_not_shown() -> None:
    marker = {rpc._special_sig_key: rpc._special_secret_sig}  # pyright: ignore[reportPrivateUsage]
    step = Registered(
        COMMAND, "step", {"triggers": {**marker, "value": ["1234567890", "s3cr3t"]}}, {}
    )
    known = [("1234567890", "vm.instanceId")]
    assert plan.trigger_names(step, known) == ["vm.instanceId", "a secret value"]
