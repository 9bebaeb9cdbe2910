"""Observability under the engine's mocks: the dashboard charts exactly the metrics it should, by
the names the pinned vLLM release exports; the alert policies, the autoscaler's policy and the
group's size handling; a stack without observability registers none of it."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components.config import ConfigError
from components.fleet import (
    AUTOHEALING_INITIAL_DELAY_SECONDS,
    SCALE_IN_WINDOW_SECONDS,
    TARGET_QUEUE_PER_REPLICA,
)
from components.host_bundle import OpsAgent, ops_agent_config
from components.load_balancer import BACKEND_TIMEOUT_SECONDS, CONNECTION_DRAINING_SECONDS
from components.observability import (
    ENDPOINT_DOWN_SECONDS,
    ERROR_RATIO_ALERT,
    KV_CACHE_ALERT_FRACTION,
    NGINX_ACCESS_LOG_ID,
    QUEUE_ALERT_REQUESTS,
    STACK_LABEL,
    VLLM_SCRAPE_JOB,
)
from tests.harness import Plan, RecordingMocks, run_program, stack_config

DASHBOARD = "gcp:monitoring/dashboard:Dashboard"
ALERT_POLICY = "gcp:monitoring/alertPolicy:AlertPolicy"
LOG_METRIC = "gcp:logging/metric:Metric"
AUTOSCALER = "gcp:compute/regionAutoscaler:RegionAutoscaler"
GROUP = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
TEMPLATE = "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate"
INSTANCE = "gcp:compute/instance:Instance"
BACKEND = "gcp:compute/regionBackendService:RegionBackendService"
IAM_MEMBER = "gcp:projects/iAMMember:IAMMember"
ZONES = ["us-central1-a", "us-central1-c"]
AUTOSCALED = {"vllm-gcp:fleet": {"minReplicas": 1, "maxReplicas": 4, "zones": ZONES}}
FIXED = {"vllm-gcp:fleet": {"replicas": 2, "zones": ZONES}}
CHANNELS = {
    "vllm-gcp:observability": {
        # A bare id as YAML gives it (a number), and a resource name.
        "notificationChannels": [123, "projects/ops-project/notificationChannels/456"]
    }
}
# tests/vllm_0.32.0_metrics.txt: the metrics vLLM 0.32.0 registers, read from its wheel.
PINNED_METRICS = Path(__file__).with_name("vllm_0.32.0_metrics.txt")
VLLM_CHARTED = {
    "prometheus.googleapis.com/vllm:request_success_total/counter",
    "prometheus.googleapis.com/vllm:time_to_first_token_seconds/histogram",
    "prometheus.googleapis.com/vllm:inter_token_latency_seconds/histogram",
    "prometheus.googleapis.com/vllm:prompt_tokens_total/counter",
    "prometheus.googleapis.com/vllm:generation_tokens_total/counter",
    "prometheus.googleapis.com/vllm:num_requests_running/gauge",
    "prometheus.googleapis.com/vllm:num_requests_waiting/gauge",
    "prometheus.googleapis.com/vllm:kv_cache_usage_perc/gauge",
    "prometheus.googleapis.com/vllm:num_preemptions_total/counter",
}
GPU_CHARTED = {"agent.googleapis.com/gpu/utilization", "agent.googleapis.com/gpu/memory/bytes_used"}


FORWARDING_RULE = "gcp:compute/forwardingRule:ForwardingRule"
# The name the engine gives the forwarding rule, which sets none: its resource name and a random
# suffix (Pulumi's auto-naming).
FORWARDING_RULE_NAME = "vllm-external-https-5d1e0c2"


class AutoNamingMocks(RecordingMocks):
    """The offline engine, with the forwarding rule's name auto-named as the engine would."""

    def new_resource(
        self, args: pulumi.runtime.MockResourceArgs
    ) -> tuple[str | None, dict[str, Any]]:
        resource_id, outputs = super().new_resource(args)
        if args.typ == FORWARDING_RULE:
            outputs = {**outputs, "name": FORWARDING_RULE_NAME}
        return resource_id, outputs


def plan(*overrides: dict[str, Any]) -> Plan:
    return run_program(stack_config("prod", *overrides), stack="prod", mocks=AutoNamingMocks())


@pytest.fixture(scope="module")
def single_vm() -> Plan:
    return plan(CHANNELS)


@pytest.fixture(scope="module")
def autoscaled() -> Plan:
    return plan(AUTOSCALED)


def dashboard_filters(result: Plan) -> list[str]:
    layout = json.loads(result.one(DASHBOARD).plain["dashboardJson"])
    return [
        data_set["timeSeriesQuery"]["timeSeriesFilter"]["filter"]
        for widget in layout["gridLayout"]["widgets"]
        for data_set in widget["xyChart"]["dataSets"]
    ]


def metric_types(filters: list[str]) -> set[str]:
    return {re.search(r'metric\.type="([^"]+)"', text).group(1) for text in filters}  # type: ignore[union-attr]


def pinned_metrics() -> dict[str, str]:
    """Exposed name to Prometheus type, as vLLM 0.32.0 registers them."""
    found = {}
    for line in PINNED_METRICS.read_text().splitlines():
        if line and not line.startswith("#"):
            kind, name = line.split()
            found[f"{name}_total" if kind == "counter" else name] = kind
    return found


def test_the_dashboard_charts_vllm_gpu_and_the_proxys_answers_per_stack(single_vm: Plan) -> None:
    filters = dashboard_filters(single_vm)
    log_metric = single_vm.one(LOG_METRIC).plain
    proxy = f"logging.googleapis.com/user/{log_metric['name']}"
    assert metric_types(filters) == VLLM_CHARTED | GPU_CHARTED | {proxy}
    for text in filters:
        if "prometheus.googleapis.com" in text:
            assert 'metric.labels.vllm_gcp_stack="prod"' in text
            assert f'resource.labels.job="{VLLM_SCRAPE_JOB}"' in text
        elif "agent.googleapis.com" in text:
            assert 'metadata.user_labels."stack"="prod"' in text
    answers = sorted(text.rsplit(" AND ", 1)[-1] for text in filters if proxy in text)
    assert answers == [
        'metric.labels.status="429"',
        'metric.labels.status=starts_with("4")',
        'metric.labels.status=starts_with("5")',
    ]
    # The access log of this stack's VM only, its status as the agent's parser extracts it.
    assert log_metric["filter"] == (
        'log_id("vllm_gcp_nginx_access") AND resource.type="gce_instance" '
        'AND resource.labels.instance_id="1234567890"'
    )
    assert log_metric["labelExtractors"] == {"status": "EXTRACT(jsonPayload.status)"}


def test_a_fleets_dashboard_counts_answers_at_its_load_balancer(autoscaled: Plan) -> None:
    lb = "loadbalancing.googleapis.com/https/external/regional/request_count"
    filters = dashboard_filters(autoscaled)
    assert metric_types(filters) == VLLM_CHARTED | GPU_CHARTED | {lb}
    assert autoscaled.of_type(LOG_METRIC) == []
    for text in filters:
        if lb in text:
            assert 'resource.type="http_external_regional_lb_rule"' in text
            assert f'resource.labels.forwarding_rule_name="{FORWARDING_RULE_NAME}"' in text
    # Charts of a replica's metrics are per replica.
    layout = json.loads(autoscaled.one(DASHBOARD).plain["dashboardJson"])
    for widget in layout["gridLayout"]["widgets"]:
        for data_set in widget["xyChart"]["dataSets"]:
            query = data_set["timeSeriesQuery"]["timeSeriesFilter"]
            if "prometheus.googleapis.com" in query["filter"]:
                assert query["aggregation"]["groupByFields"] == ['metric.label."instance_name"']
            # The API returns no empty list: one sent would differ from it at every refresh.
            assert query["aggregation"].get("groupByFields", ["absent"]) != []


def test_every_vllm_metric_read_is_one_the_pinned_release_exports(autoscaled: Plan) -> None:
    pinned = pinned_metrics()
    autoscaler = autoscaled.one(AUTOSCALER).plain["autoscalingPolicy"]
    read = metric_types(dashboard_filters(autoscaled)) | {
        metric["name"] for metric in autoscaler["metrics"]
    }
    vllm = {name for name in read if name.startswith("prometheus.googleapis.com/")}
    assert vllm
    for metric_type in vllm:
        _, name, kind = metric_type.split("/")
        assert pinned.get(name) == kind, metric_type
    queries = [
        p.plain["conditions"][0]["conditionPrometheusQueryLanguage"]["query"]
        for p in autoscaled.of_type(ALERT_POLICY)
    ]
    for name in re.findall(r"vllm:[a-z0-9_]+", " ".join(queries)):
        assert name in pinned, name


def test_the_series_read_are_those_the_agent_writes() -> None:
    agent = yaml.safe_load(ops_agent_config(OpsAgent("prod")))
    (receiver,) = agent["metrics"]["receivers"].values()
    (scrape,) = receiver["config"]["scrape_configs"]
    assert scrape["job_name"] == VLLM_SCRAPE_JOB
    assert scrape["static_configs"][0]["labels"] == {STACK_LABEL: "prod"}
    # The access log's receiver names the log; its parser extracts the status.
    logging = agent["logging"]
    assert logging["receivers"][NGINX_ACCESS_LOG_ID]["type"] == "files"
    (pipeline,) = [
        p
        for p in logging["service"]["pipelines"].values()
        if p["receivers"] == [NGINX_ACCESS_LOG_ID]
    ]
    (parser,) = pipeline["processors"]
    assert "(?<status>" in logging["processors"][parser]["regex"]


def test_four_alert_policies_go_to_the_channels(single_vm: Plan) -> None:
    policies = {p.name: p.plain for p in single_vm.of_type(ALERT_POLICY)}
    assert set(policies) == {
        "vllm-endpoint-down",
        "vllm-queueing",
        "vllm-kv-cache-saturated",
        "vllm-error-ratio",
    }
    for policy in policies.values():
        # A bare id names a channel of the stack's project.
        assert policy["notificationChannels"] == [
            "projects/test-project/notificationChannels/123",
            "projects/ops-project/notificationChannels/456",
        ]
        (condition,) = policy["conditions"]
        assert condition["conditionPrometheusQueryLanguage"]["disableMetricValidation"] is True
    query = {
        name: p["conditions"][0]["conditionPrometheusQueryLanguage"]["query"]
        for name, p in policies.items()
    }
    stack = 'job="vllm",vllm_gcp_stack="prod"'
    assert query["vllm-endpoint-down"] == f"absent(vllm:num_requests_running{{{stack}}})"
    assert query["vllm-queueing"] == (
        f"max by (instance_name) (vllm:num_requests_waiting{{{stack}}}) > {QUEUE_ALERT_REQUESTS}"
    )
    assert query["vllm-kv-cache-saturated"] == (
        f"max by (instance_name) (vllm:kv_cache_usage_perc{{{stack}}}) > {KV_CACHE_ALERT_FRACTION}"
    )
    responses = "logging_googleapis_com:user_vllm_gcp_prod_proxy_responses"
    assert query["vllm-error-ratio"] == (
        f'sum(rate({responses}{{monitored_resource="gce_instance",status=~"5.."}}[5m])) / '
        f'sum(rate({responses}{{monitored_resource="gce_instance"}}[5m])) > {ERROR_RATIO_ALERT}'
    )
    down = policies["vllm-endpoint-down"]["conditions"][0]["conditionPrometheusQueryLanguage"]
    assert down["duration"] == f"{ENDPOINT_DOWN_SECONDS}s"


def test_a_fleets_error_ratio_is_its_load_balancers(autoscaled: Plan) -> None:
    (policy,) = [p.plain for p in autoscaled.of_type(ALERT_POLICY) if "error" in p.name]
    query = policy["conditions"][0]["conditionPrometheusQueryLanguage"]["query"]
    counts = (
        "loadbalancing_googleapis_com:https_external_regional_request_count"
        '{monitored_resource="http_external_regional_lb_rule",'
        f'forwarding_rule_name="{FORWARDING_RULE_NAME}"'
    )
    assert query == (
        f'sum(rate({counts},response_code_class="500"}}[5m])) / '
        f"sum(rate({counts}}}[5m])) > {ERROR_RATIO_ALERT}"
    )


def test_the_autoscaler_scales_on_vllms_load_per_replica(autoscaled: Plan) -> None:
    autoscaler = autoscaled.one(AUTOSCALER)
    policy = autoscaler.plain["autoscalingPolicy"]
    assert policy["minReplicas"] == 1
    assert policy["maxReplicas"] == 4
    assert policy["mode"] == "ON"
    # The initialization period covers a replica's first start, as autohealing's delay does.
    assert policy["cooldownPeriod"] == AUTOHEALING_INITIAL_DELAY_SECONDS
    assert policy["scaleInControl"] == {
        "maxScaledInReplicas": {"fixed": 1},
        "timeWindowSec": SCALE_IN_WINDOW_SECONDS,
    }
    selector = (
        'resource.type="prometheus_target" AND resource.labels.job="vllm" '
        'AND metric.labels.vllm_gcp_stack="prod"'
    )
    assert policy["metrics"] == [
        {
            "name": "prometheus.googleapis.com/vllm:num_requests_running/gauge",
            "filter": 'metric.type="prometheus.googleapis.com/vllm:num_requests_running/gauge" '
            f"AND {selector}",
            "singleInstanceAssignment": 16.0,
        },
        {
            "name": "prometheus.googleapis.com/vllm:num_requests_waiting/gauge",
            "filter": 'metric.type="prometheus.googleapis.com/vllm:num_requests_waiting/gauge" '
            f"AND {selector}",
            "singleInstanceAssignment": float(TARGET_QUEUE_PER_REPLICA),
        },
    ]
    group = autoscaled.one(GROUP)
    assert autoscaler.plain["target"] == "vllm-group-id"
    # Created at minReplicas; then the autoscaler's, never resized back by `pulumi up`.
    assert group.plain["targetSize"] == 1
    assert group.options.ignore_changes == ("targetSize",)
    # Scaling starts once the rollout wait is done; the rollout no longer waits on a size.
    assert [d for d in autoscaler.options.dependencies if d.endswith("::vllm-rollout")]
    assert autoscaled.named("vllm-rollout").plain["triggers"] == [
        "https://compute/regions/r/instanceTemplates/vllm-template"
    ]


def test_a_fixed_fleet_has_no_autoscaler_and_keeps_its_size() -> None:
    result = plan(FIXED)
    assert result.of_type(AUTOSCALER) == []
    group = result.one(GROUP)
    assert group.plain["targetSize"] == 2
    assert group.options.ignore_changes == ()


def test_scale_in_never_cuts_off_an_answer(autoscaled: Plan) -> None:
    # The load balancer keeps a leaving replica's connections as long as any answer may last.
    backend = autoscaled.one(BACKEND).plain
    assert backend["connectionDrainingTimeoutSec"] == CONNECTION_DRAINING_SECONDS
    assert CONNECTION_DRAINING_SECONDS == BACKEND_TIMEOUT_SECONDS
    # GCE's graceful shutdown is not for managed groups: the template asks for none.
    assert "gracefulShutdown" not in autoscaled.one(TEMPLATE).plain["scheduling"]


def test_the_dashboard_url_is_an_output(single_vm: Plan) -> None:
    assert single_vm.outputs["dashboardUrl"] == (
        "https://console.cloud.google.com/monitoring/dashboards/builder/vllm-dashboard-id"
        "?project=test-project"
    )


def host_setup(result: Plan) -> str:
    """The startup script the VM or the fleet's replicas run."""
    if result.of_type(TEMPLATE):
        return result.one(TEMPLATE).plain["metadata"]["vllm-gcp-host-setup"]
    return result.one(INSTANCE).plain["metadata"]["startup-script"]


AGENT_CONFIG = base64.b64encode(ops_agent_config(OpsAgent("prod")).encode()).decode()


@pytest.mark.parametrize("overrides", [{}, FIXED], ids=["single-vm", "fleet"])
def test_the_hosts_run_the_agent_labelled_with_the_stack(overrides: dict[str, Any]) -> None:
    assert AGENT_CONFIG in host_setup(plan(overrides))


@pytest.mark.parametrize("overrides", [{}, FIXED], ids=["single-vm", "fleet"])
def test_without_observability_nothing_of_it_is_planned(overrides: dict[str, Any]) -> None:
    result = plan(overrides, {"vllm-gcp:observability": {"enabled": False}})
    types = {r.type for r in result.resources}
    assert not types & {DASHBOARD, ALERT_POLICY, LOG_METRIC, AUTOSCALER}
    assert AGENT_CONFIG not in host_setup(result)
    # The host account has no project role without the agent that needs them.
    assert result.of_type(IAM_MEMBER) == []
    assert result.outputs["dashboardUrl"] is None


def test_with_observability_the_hosts_account_writes_logs_and_metrics(single_vm: Plan) -> None:
    roles = {r.plain["role"] for r in single_vm.of_type(IAM_MEMBER)}
    assert roles == {"roles/logging.logWriter", "roles/monitoring.metricWriter"}


def test_a_malformed_channel_is_refused_by_key_path() -> None:
    with pytest.raises(ConfigError) as caught:
        plan({"vllm-gcp:observability": {"notificationChannels": ["email-ops"]}})
    assert [p.key for p in caught.value.problems] == [
        "vllm-gcp:observability.notificationChannels[0]"
    ]
