"""Observability: the endpoint's dashboard and alert policies (docs/observability.md).

What they read is what the hosts' Ops Agent writes (components/host_bundle.py, ops_agent_config)
and what Google writes itself:

- vLLM's own metrics, scraped on loopback by the agent's Prometheus receiver. The agent writes
  them as prometheus.googleapis.com/<name>/<kind> on the prometheus_target resource (Cloud
  Monitoring, "Collect Prometheus metrics": Managed Service for Prometheus' naming, the name as
  the exposition gives it, so a counter keeps its _total), with the VM's name in the
  instance_name label. The names are vLLM 0.32.0's (PrometheusStatLogger,
  vllm/v1/metrics/loggers.py; tests/vllm_0.32.0_metrics.txt).
- GPU utilisation and memory: the agent's NVML receiver, on by default on a GPU VM
  (agent.googleapis.com/gpu/*, gce_instance).
- The proxy's answers: in fleet mode the load balancer's own request counts
  (loadbalancing.googleapis.com, with response_code and response_code_class); on the single VM a
  log-based metric over Nginx's access log, which the agent parses into jsonPayload fields.

Every series is the stack's own: vLLM's by the STACK_LABEL the agent's scrape puts on it, the
GPUs' by the VM label `stack`, the load balancer's by its forwarding rule, the access log's by the
VM's instance id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp

from components import host_bundle

# The agent's scrape of vLLM and the label it gives every series: the stack's label value, as the
# VMs' `stack` label has it (StackConfig.labels).
VLLM_SCRAPE_JOB = host_bundle.VLLM_METRICS_JOB
STACK_LABEL = host_bundle.STACK_METRIC_LABEL
# The agent's receiver of Nginx's access log: its id is the log's name (projects/P/logs/<id>), and
# its parse_regex processor puts the status in jsonPayload.status.
NGINX_ACCESS_LOG_ID = "vllm_gcp_nginx_access"
PROMETHEUS_RESOURCE = "prometheus_target"
ALIGNMENT_PERIOD = "60s"  # the agent scrapes every 30 s

# vLLM's metrics the dashboard and the alerts read, with their Prometheus type.
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
VLLM_METRIC_KINDS = {
    RUNNING: "gauge",
    WAITING: "gauge",
    KV_CACHE_USAGE: "gauge",
    "vllm:request_success": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
}
GPU_UTILIZATION = "agent.googleapis.com/gpu/utilization"
GPU_MEMORY_USED = "agent.googleapis.com/gpu/memory/bytes_used"

# Alert thresholds (docs/observability.md says why each).
# No vLLM series from the stack for this long: no replica serves, or none reports.
ENDPOINT_DOWN_SECONDS = 300
# Requests waiting on one replica, sustained: answers start late, and scaling has not caught up.
QUEUE_ALERT_REQUESTS = 8
QUEUE_ALERT_SECONDS = 600
# KV cache use on one replica, sustained: vLLM is preempting or queueing for cache.
KV_CACHE_ALERT_FRACTION = 0.95
KV_CACHE_ALERT_SECONDS = 600
# The proxy's 5xx answers as a share of all, over the window, sustained.
ERROR_RATIO_ALERT = 0.05
ERROR_RATIO_WINDOW = "5m"
ERROR_RATIO_ALERT_SECONDS = 600

_PROMQL_NAME = re.compile(r"[^A-Za-z0-9_:]")


def vllm_metric_type(name: str) -> str:
    """The Cloud Monitoring type of a vLLM metric as the Ops Agent's Prometheus receiver writes it
    (a counter is exposed, and so named, with _total)."""
    kind = VLLM_METRIC_KINDS[name]
    exposed = f"{name}_total" if kind == "counter" else name
    return f"prometheus.googleapis.com/{exposed}/{kind}"


def vllm_series(name: str, stack_label: str) -> str:
    """A monitoring filter for one vLLM metric of this stack: only `=` joined by AND, the form the
    autoscaler also accepts (AutoscalingPolicyCustomMetricUtilization.filter)."""
    return " AND ".join(
        (
            f'metric.type="{vllm_metric_type(name)}"',
            f'resource.type="{PROMETHEUS_RESOURCE}"',
            f'resource.labels.job="{VLLM_SCRAPE_JOB}"',
            f'metric.labels.{STACK_LABEL}="{stack_label}"',
        )
    )


def vllm_promql(name: str, stack_label: str) -> str:
    """The PromQL selector of one vLLM metric of this stack (counters by their exposed name)."""
    exposed = f"{name}_total" if VLLM_METRIC_KINDS[name] == "counter" else name
    return f'{exposed}{{job="{VLLM_SCRAPE_JOB}",{STACK_LABEL}="{stack_label}"}}'


@dataclass(frozen=True)
class LoadBalancerTraffic:
    """A fleet's proxy answers: its load balancer's request counts."""

    forwarding_rule_name: pulumi.Input[str]
    internal: bool  # network.exposure private: the internal Application Load Balancer

    @property
    def metric_type(self) -> str:
        scheme = "internal" if self.internal else "external/regional"
        return f"loadbalancing.googleapis.com/https/{scheme}/request_count"

    @property
    def resource_type(self) -> str:
        return "internal_http_lb_rule" if self.internal else "http_external_regional_lb_rule"


@dataclass(frozen=True)
class AccessLogTraffic:
    """The single VM's proxy answers: a log-based metric over Nginx's access log."""

    instance_id: pulumi.Input[str]


@dataclass(frozen=True)
class ObservabilityArgs:
    project: str
    stack: str  # the stack's name, for display names
    stack_label: str  # StackConfig.labels["stack"]: the VMs' label and the vLLM series' STACK_LABEL
    notification_channels: Sequence[str]  # resource names (StackConfig.notification_channels)
    traffic: LoadBalancerTraffic | AccessLogTraffic


@dataclass(frozen=True)
class _Status:
    """Where the proxy's answers are counted, and how a status class or code is selected."""

    metric_type: str
    resource_type: str
    clauses: tuple[str, ...]  # the monitoring filter's clauses naming this stack's series
    matchers: tuple[str, ...]  # the same, as PromQL label matchers
    numeric: bool  # the load balancer's codes are INT64 labels; the log metric's `status` a string

    def series(self, code: str | None = None) -> str:
        """A monitoring filter of these series: all, one class (5xx) or one code (429)."""
        clauses = [
            f'metric.type="{self.metric_type}"',
            f'resource.type="{self.resource_type}"',
            *self.clauses,
        ]
        if code is not None:
            clauses.append(self._code_clause(code))
        return " AND ".join(clauses)

    def _code_clause(self, code: str) -> str:
        if self.numeric:
            if code.endswith("xx"):
                return f"metric.labels.response_code_class={code[0]}00"
            return f"metric.labels.response_code={code}"
        if code.endswith("xx"):
            return f'metric.labels.status=starts_with("{code[0]}")'
        return f'metric.labels.status="{code}"'

    def promql(self, code_class: str | None = None) -> str:
        """The PromQL selector of these series, of one status class (5xx) or all. The metric's
        PromQL name: its first / a colon, every other character outside [A-Za-z0-9_:] an
        underscore (Cloud Monitoring, "Mapping Cloud Monitoring metrics to PromQL")."""
        name = _PROMQL_NAME.sub("_", self.metric_type.replace("/", ":", 1))
        matchers = [f'monitored_resource="{self.resource_type}"', *self.matchers]
        if code_class is not None:
            if self.numeric:
                matchers.append(f'response_code_class="{code_class[0]}00"')
            else:
                matchers.append(f'status=~"{code_class[0]}.."')
        return f"{name}{{{','.join(matchers)}}}"


class Observability(pulumi.ComponentResource):
    """The dashboard, the alert policies and (single VM) the access log's metric."""

    dashboard_url: pulumi.Output[str]
    alert_policies: list[gcp.monitoring.AlertPolicy]

    def __init__(
        self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:observability:Observability", name, None, opts)
        status, status_ready = self._status(name, args)
        dashboard = gcp.monitoring.Dashboard(
            f"{name}-dashboard",
            project=args.project,
            # Updated in place (dashboard_json is not ForceNew, and the provider's diff ignores
            # what the API adds: monitoringDashboardDiffSuppress in
            # resource_monitoring_dashboard.go), so its id and URL stay.
            dashboard_json=pulumi.Output.from_input(status).apply(
                lambda resolved: json.dumps(dashboard_json(args, resolved), sort_keys=True)
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=status_ready),
        )
        project = args.project
        self.dashboard_url = dashboard.id.apply(
            lambda dashboard_id: (
                "https://console.cloud.google.com/monitoring/dashboards/builder/"
                f"{dashboard_id.rsplit('/', 1)[-1]}?project={project}"
            )
        )
        self.alert_policies = []
        for policy in alert_policy_plans(args.stack_label):
            condition = gcp.monitoring.AlertPolicyConditionConditionPrometheusQueryLanguageArgs(
                query=pulumi.Output.from_input(status).apply(policy.query),
                duration=f"{policy.seconds}s",
                evaluation_interval=ALIGNMENT_PERIOD,
                # The metrics exist once a host has reported them, after the first `pulumi up`
                # has made the policy.
                disable_metric_validation=True,
            )
            # resource_monitoring_alert_policy.go: only project is ForceNew; conditions,
            # channels and documentation update in place.
            self.alert_policies.append(
                gcp.monitoring.AlertPolicy(
                    f"{name}-{policy.key}",
                    project=args.project,
                    display_name=f"vLLM {args.stack}: {policy.title}",
                    combiner="OR",
                    severity=policy.severity,
                    conditions=[
                        gcp.monitoring.AlertPolicyConditionArgs(
                            display_name=policy.title,
                            condition_prometheus_query_language=condition,
                        )
                    ],
                    notification_channels=list(args.notification_channels),
                    documentation=gcp.monitoring.AlertPolicyDocumentationArgs(
                        content=policy.runbook, mime_type="text/markdown"
                    ),
                    user_labels={"app": "vllm-gcp", "stack": args.stack_label},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=status_ready),
                )
            )
        self.register_outputs(
            {
                "dashboardUrl": self.dashboard_url,
                "alertPolicies": [p.name for p in self.alert_policies],
            }
        )

    def _status(
        self, name: str, args: ObservabilityArgs
    ) -> tuple[pulumi.Output[_Status], list[pulumi.Resource]]:
        """Where the proxy's answers are counted; the resources a query of them waits for."""
        traffic = args.traffic
        if isinstance(traffic, LoadBalancerTraffic):
            return pulumi.Output.from_input(traffic.forwarding_rule_name).apply(
                lambda rule: _Status(
                    metric_type=traffic.metric_type,
                    resource_type=traffic.resource_type,
                    clauses=(f'resource.labels.forwarding_rule_name="{rule}"',),
                    matchers=(f'forwarding_rule_name="{rule}"',),
                    numeric=True,
                )
            ), []
        # The stack's own metric, of its VM's access log only.
        metric_name = f"vllm_gcp_{args.stack_label.replace('-', '_')}_proxy_responses"
        # resource_logging_metric.go: only project and the descriptor's label key and value type
        # are ForceNew (fixed here); the filter, which names the VM, updates in place.
        log_metric = gcp.logging.Metric(
            f"{name}-proxy-responses",
            project=args.project,
            name=metric_name,
            description="The single VM's proxy answers, by status (Nginx's access log)",
            filter=pulumi.Output.from_input(traffic.instance_id).apply(
                lambda instance_id: " AND ".join(
                    (
                        f'log_id("{NGINX_ACCESS_LOG_ID}")',
                        'resource.type="gce_instance"',
                        f'resource.labels.instance_id="{instance_id}"',
                    )
                )
            ),
            metric_descriptor=gcp.logging.MetricMetricDescriptorArgs(
                metric_kind="DELTA",
                value_type="INT64",
                labels=[
                    gcp.logging.MetricMetricDescriptorLabelArgs(
                        key="status", value_type="STRING", description="HTTP status"
                    )
                ],
            ),
            label_extractors={"status": "EXTRACT(jsonPayload.status)"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        status = _Status(
            metric_type=f"logging.googleapis.com/user/{metric_name}",
            resource_type="gce_instance",
            clauses=(),
            matchers=(),
            numeric=False,
        )
        return pulumi.Output.from_input(status), [log_metric]


# ------------------------------------------------------------------------------------------------
# The dashboard


@dataclass(frozen=True)
class _DataSet:
    legend: str
    filter: str
    aligner: str
    reducer: str
    group_by: tuple[str, ...]


_PER_REPLICA = ('metric.label."instance_name"',)
_PER_VM = ('metadata.system_labels."name"',)


def _vllm(legend: str, name: str, stack_label: str, aligner: str, reducer: str) -> _DataSet:
    """One line per replica, named by its VM."""
    per_replica = f"{legend} ${{metric.labels.instance_name}}"
    return _DataSet(per_replica, vllm_series(name, stack_label), aligner, reducer, _PER_REPLICA)


def _gpu(metric_type: str, stack_label: str, extra: str = "") -> str:
    return (
        f'metric.type="{metric_type}" AND resource.type="gce_instance" '
        f'AND metadata.user_labels."stack"="{stack_label}"{extra}'
    )


def dashboard_charts(stack_label: str, status: _Status) -> list[tuple[str, list[_DataSet]]]:
    """Each chart's title and data sets, per replica where the metric is a replica's."""
    s = stack_label
    percentiles = [("p50", "REDUCE_PERCENTILE_50"), ("p95", "REDUCE_PERCENTILE_95")]
    answers = [
        _DataSet(code, status.series(code), "ALIGN_RATE", "REDUCE_SUM", ())
        for code in ("4xx", "5xx", "429")
    ]
    return [
        (
            "Requests per second (finished)",
            [_vllm("requests/s", "vllm:request_success", s, "ALIGN_RATE", "REDUCE_SUM")],
        ),
        (
            "Time to first token (s)",
            [
                _vllm(p, "vllm:time_to_first_token_seconds", s, "ALIGN_DELTA", r)
                for p, r in percentiles
            ],
        ),
        (
            "Inter-token latency (s)",
            [
                _vllm(p, "vllm:inter_token_latency_seconds", s, "ALIGN_DELTA", r)
                for p, r in percentiles
            ],
        ),
        (
            "Tokens per second, in (prompt) and out (generation)",
            [
                _vllm("in", "vllm:prompt_tokens", s, "ALIGN_RATE", "REDUCE_SUM"),
                _vllm("out", "vllm:generation_tokens", s, "ALIGN_RATE", "REDUCE_SUM"),
            ],
        ),
        (
            "Requests running and waiting",
            [
                _vllm("running", RUNNING, s, "ALIGN_MEAN", "REDUCE_SUM"),
                _vllm("waiting", WAITING, s, "ALIGN_MEAN", "REDUCE_SUM"),
            ],
        ),
        (
            "KV-cache usage (fraction)",
            [_vllm("kv cache", KV_CACHE_USAGE, s, "ALIGN_MAX", "REDUCE_MAX")],
        ),
        (
            "Preemptions per second",
            [_vllm("preemptions/s", "vllm:num_preemptions", s, "ALIGN_RATE", "REDUCE_SUM")],
        ),
        (
            "GPU utilisation (%)",
            [_DataSet("", _gpu(GPU_UTILIZATION, s), "ALIGN_MEAN", "REDUCE_MEAN", _PER_VM)],
        ),
        (
            "GPU memory used (bytes)",
            [
                _DataSet(
                    "",
                    _gpu(GPU_MEMORY_USED, s, ' AND metric.labels.memory_state="used"'),
                    "ALIGN_MEAN",
                    "REDUCE_SUM",
                    _PER_VM,
                )
            ],
        ),
        ("Proxy answers per second: 4xx, 5xx, 429", answers),
    ]


def _widget(title: str, data_sets: list[_DataSet]) -> dict[str, Any]:
    return {
        "title": title,
        "xyChart": {
            "dataSets": [
                {
                    "plotType": "LINE",
                    # A VM's GPU series are named by the VM (the console's default legend).
                    **({"legendTemplate": data_set.legend} if data_set.legend else {}),
                    "minAlignmentPeriod": ALIGNMENT_PERIOD,
                    "timeSeriesQuery": {
                        "timeSeriesFilter": {
                            "filter": data_set.filter,
                            "aggregation": {
                                "alignmentPeriod": ALIGNMENT_PERIOD,
                                "perSeriesAligner": data_set.aligner,
                                "crossSeriesReducer": data_set.reducer,
                                # The API leaves an empty list out of what it returns, and the
                                # provider compares the JSON it reads with this one
                                # (resource_monitoring_dashboard.go, removeComputedKeys drops
                                # only what the new JSON lacks): an empty list would update
                                # the dashboard on every pulumi up.
                                **(
                                    {"groupByFields": list(data_set.group_by)}
                                    if data_set.group_by
                                    else {}
                                ),
                            },
                        }
                    },
                }
                for data_set in data_sets
            ],
            "yAxis": {"scale": "LINEAR"},
        },
    }


def dashboard_json(args: ObservabilityArgs, status: _Status) -> dict[str, Any]:
    """The dashboard's JSON (projects.dashboards in the Monitoring API)."""
    return {
        "displayName": f"vLLM endpoint ({args.stack})",
        "gridLayout": {
            "columns": "2",
            "widgets": [
                _widget(title, data_sets)
                for title, data_sets in dashboard_charts(args.stack_label, status)
            ],
        },
    }


# ------------------------------------------------------------------------------------------------
# The alert policies


@dataclass(frozen=True)
class AlertPolicyPlan:
    key: str
    title: str
    severity: str
    seconds: int  # how long the condition must hold
    query_of: Callable[[str, _Status], str]  # the PromQL condition, of the stack's label
    stack_label: str
    runbook: str

    def query(self, status: _Status) -> str:
        return self.query_of(self.stack_label, status)


def _endpoint_down(s: str, _: _Status) -> str:
    return f"absent({vllm_promql(RUNNING, s)})"


def _queueing(s: str, _: _Status) -> str:
    return f"max by (instance_name) ({vllm_promql(WAITING, s)}) > {QUEUE_ALERT_REQUESTS}"


def _kv_cache(s: str, _: _Status) -> str:
    return f"max by (instance_name) ({vllm_promql(KV_CACHE_USAGE, s)}) > {KV_CACHE_ALERT_FRACTION}"


def _error_ratio(_: str, status: _Status) -> str:
    window = ERROR_RATIO_WINDOW
    errors = f"sum(rate({status.promql('5xx')}[{window}]))"
    every = f"sum(rate({status.promql()}[{window}]))"
    return f"{errors} / {every} > {ERROR_RATIO_ALERT}"


def alert_policy_plans(stack_label: str) -> list[AlertPolicyPlan]:
    return [
        AlertPolicyPlan(
            "endpoint-down",
            "endpoint down",
            "CRITICAL",
            ENDPOINT_DOWN_SECONDS,
            _endpoint_down,
            stack_label,
            "No replica of this stack has reported vLLM's metrics for "
            f"{ENDPOINT_DOWN_SECONDS // 60} minutes: vLLM is not serving (starting, crashed, "
            "out of GPU memory) or the host is down. See docs/observability.md.",
        ),
        AlertPolicyPlan(
            "queueing",
            "requests queueing",
            "WARNING",
            QUEUE_ALERT_SECONDS,
            _queueing,
            stack_label,
            f"More than {QUEUE_ALERT_REQUESTS} requests have waited on one replica for "
            f"{QUEUE_ALERT_SECONDS // 60} minutes: answers start late. Add replicas (or "
            "maxReplicas). See docs/observability.md.",
        ),
        AlertPolicyPlan(
            "kv-cache-saturated",
            "KV cache saturated",
            "WARNING",
            KV_CACHE_ALERT_SECONDS,
            _kv_cache,
            stack_label,
            f"A replica's KV cache has been over {KV_CACHE_ALERT_FRACTION:.0%} full for "
            f"{KV_CACHE_ALERT_SECONDS // 60} minutes: vLLM preempts and queues requests. See "
            "docs/observability.md.",
        ),
        AlertPolicyPlan(
            "error-ratio",
            "high error ratio",
            "CRITICAL",
            ERROR_RATIO_ALERT_SECONDS,
            _error_ratio,
            stack_label,
            f"More than {ERROR_RATIO_ALERT:.0%} of the proxy's answers have been 5xx for "
            f"{ERROR_RATIO_ALERT_SECONDS // 60} minutes. See docs/observability.md.",
        ),
    ]
