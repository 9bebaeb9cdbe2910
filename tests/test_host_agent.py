"""The host side of observability (issue 16): the Ops Agent's configuration checked against the
agent's own schema, its installation by the startup script (both ways of observability.enabled),
and the drain on stop (scripts/drain_vllm.sh, the unit's ExecStop, Nginx while draining).

The schema stand-in below is written from the Ops Agent's configuration reference
(cloud.google.com/stackdriver/docs/solutions/agents/ops-agent/configuration) and its source, the
types and fields its configuration generator registers (GoogleCloudPlatform/ops-agent at
588c4b9: confgenerator/logging_receivers.go, logging_processors.go, prometheus.go,
apps/nginx.go; the built-in GPU configuration confgenerator/built-in-config-linux-gpu.yaml).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from components import catalogue, host_paths, vllm_server
from components import host_bundle as bundle
from components.config import ModelConfig
from components.host_bundle import LoadBalancerSite, OpsAgent
from components.render import SCRIPTS_DIR, read
from tests.harness import assert_shell_clean, systemd_split
from tests.test_proxy_nginx import pytestmark as nginx_installed
from tests.test_startup_script import A2_ULTRA_2G
from tests.test_startup_script import Host as StartupHost
from tests.test_vllm_scripts import Host as StepHost
from tools.standins.nginx import NginxProxy
from tools.standins.openai_upstream import OpenAIUpstream

KEY = "dra1n-Token_0123456789abcdefghijklmnopqrstuvw"
AUTH = {"Authorization": f"Bearer {KEY}"}
AGENT = "google-cloud-ops-agent"
AGENT_SETTINGS = OpsAgent(stack_label="prod")

# ------------------------------------------------------------------------------------------------
# The agent's documented schema: component types per section and the fields each takes.

_FILES_FIELDS = {
    "type",
    "include_paths",
    "exclude_paths",
    "wildcard_refresh_interval",
    "record_log_file_path",
}
RECEIVER_FIELDS: dict[str, dict[str, set[str]]] = {
    "logging": {
        "files": _FILES_FIELDS,
        "nginx_access": _FILES_FIELDS,
        "nginx_error": _FILES_FIELDS,
        "systemd_journald": {"type"},
        "syslog": {"type", "transport_protocol", "listen_host", "listen_port"},
    },
    "metrics": {
        "prometheus": {"type", "config"},
        "hostmetrics": {"type", "collection_interval"},
        "nvml": {"type", "collection_interval"},
    },
}
PROCESSOR_FIELDS: dict[str, dict[str, set[str]]] = {
    "logging": {
        "parse_regex": {"type", "field", "regex", "time_key", "time_format", "types"},
        "parse_json": {"type", "field", "time_key", "time_format", "types"},
        "exclude_logs": {"type", "match_any"},
    },
    "metrics": {"exclude_metrics": {"type", "metrics_pattern"}},
}
# Prometheus' scrape_config keys the receiver passes on (prometheus/config ScrapeConfig).
SCRAPE_CONFIG_FIELDS = {
    "job_name",
    "scrape_interval",
    "scrape_timeout",
    "metrics_path",
    "scheme",
    "honor_labels",
    "static_configs",
    "relabel_configs",
    "metric_relabel_configs",
}
# The pipelines the built-in configuration defines: a user pipeline of that name replaces it.
BUILT_IN_PIPELINES = {"default_pipeline"}
_COMPONENT_ID = re.compile(r"[a-z][a-z0-9_]*")
_DURATION = re.compile(r"[1-9][0-9]*s")


def schema_problems(config: Mapping[str, Any]) -> list[str]:
    """What the agent would refuse in this configuration, as a list (empty when none)."""
    problems: list[str] = []
    for section in set(config) - {"logging", "metrics", "global"}:
        problems.append(f"unknown top-level section {section}")
    for section in ("logging", "metrics"):
        body = config.get(section, {})
        for key in set(body) - {"receivers", "processors", "service"}:
            problems.append(f"{section}: unknown key {key}")
        defined: dict[str, set[str]] = {}
        for kind, table in (("receivers", RECEIVER_FIELDS), ("processors", PROCESSOR_FIELDS)):
            components = body.get(kind, {})
            defined[kind] = set(components)
            for name, component in components.items():
                where = f"{section}.{kind}.{name}"
                if not _COMPONENT_ID.fullmatch(name):
                    problems.append(f"{where}: not a component id")
                fields = table[section].get(component.get("type"))
                if fields is None:
                    problems.append(f"{where}: unknown type {component.get('type')!r}")
                    continue
                problems += [f"{where}: unknown field {f}" for f in set(component) - fields]
        pipelines = body.get("service", {}).get("pipelines", {})
        for name, pipeline in pipelines.items():
            where = f"{section}.service.pipelines.{name}"
            problems += [
                f"{where}: unknown key {k}" for k in set(pipeline) - {"receivers", "processors"}
            ]
            if not pipeline.get("receivers") and name not in BUILT_IN_PIPELINES:
                problems.append(f"{where}: no receivers")
            for kind in ("receivers", "processors"):
                problems += [
                    f"{where}: {kind} {ref} is not defined"
                    for ref in pipeline.get(kind, [])
                    if ref not in defined[kind]
                ]
    return problems


def test_the_schema_stand_in_refuses_what_the_agent_refuses() -> None:
    bad = {
        "logging": {
            "receivers": {
                "journal": {"type": "journald"},
                "access": {"type": "files", "path": "x"},
            },
            "service": {"pipelines": {"p": {"receivers": ["journal", "nowhere"]}}},
        },
        "traces": {},
    }
    assert sorted(schema_problems(bad)) == [
        "logging.receivers.access: unknown field path",
        "logging.receivers.journal: unknown type 'journald'",
        "logging.service.pipelines.p: receivers nowhere is not defined",
        "unknown top-level section traces",
    ]


def agent_config() -> dict[str, Any]:
    text = bundle.ops_agent_config(AGENT_SETTINGS)
    parsed = yaml.safe_load(text)
    assert isinstance(parsed, dict)
    return parsed


def test_the_agent_configuration_follows_the_agents_schema() -> None:
    assert schema_problems(agent_config()) == []


def test_vllm_metrics_are_scraped_on_loopback_only() -> None:
    receivers = agent_config()["metrics"]["receivers"]
    assert set(receivers) == {"vllm_gcp_vllm"}
    scrape_configs = receivers["vllm_gcp_vllm"]["config"]["scrape_configs"]
    assert scrape_configs == [
        {
            "job_name": "vllm",
            "scrape_interval": "30s",
            "metrics_path": "/metrics",
            "static_configs": [
                {
                    "targets": [f"127.0.0.1:{host_paths.VLLM_LOOPBACK_PORT}"],
                    "labels": {"vllm_gcp_stack": "prod"},
                }
            ],
        }
    ]
    for scrape in scrape_configs:
        assert set(scrape) <= SCRAPE_CONFIG_FIELDS
        assert _DURATION.fullmatch(scrape["scrape_interval"])
    pipelines = agent_config()["metrics"]["service"]["pipelines"]
    # The built-in hostmetrics and nvml (GPU) pipeline is left as it is.
    assert pipelines == {"vllm_gcp_vllm": {"receivers": ["vllm_gcp_vllm"]}}


def test_logs_are_the_proxys_files_and_the_journal_with_its_guard() -> None:
    logging = agent_config()["logging"]
    assert logging["receivers"] == {
        "vllm_gcp_nginx_access": {"type": "files", "include_paths": [bundle.ACCESS_LOG]},
        "vllm_gcp_nginx_error": {"type": "nginx_error", "include_paths": [bundle.ERROR_LOG]},
        "vllm_gcp_journal": {"type": "systemd_journald"},
    }
    assert logging["processors"]["vllm_gcp_journal_guard"] == {
        "type": "exclude_logs",
        "match_any": [
            'jsonPayload.MESSAGE =~ "(?i)(authorization|bearer|api[_-]?key|hf_token)"',
            'jsonPayload._SYSTEMD_UNIT = "vllm.service" AND jsonPayload.MESSAGE =~ "GET /metrics "',
        ],
    }
    pipelines = logging["service"]["pipelines"]
    # /var/log/syslog repeats the journal, without the guard: the built-in pipeline is emptied.
    assert pipelines["default_pipeline"] == {"receivers": []}
    assert pipelines["vllm_gcp_journal"]["processors"] == ["vllm_gcp_journal_guard"]


def _python_regex(onigmo: str) -> re.Pattern[str]:
    return re.compile(onigmo.replace("(?<", "(?P<"))


def test_the_guard_drops_lines_that_could_hold_a_secret_and_keeps_the_others() -> None:
    credential = re.compile(r"(?i)(authorization|bearer|api[_-]?key|hf_token)")
    for line in (
        "non-default args: {'api_key': 'xyz'}",
        "Authorization: Bearer xyz",
        "HF_TOKEN=hf_abc",
    ):
        assert credential.search(line)
    for line in (
        'INFO:     127.0.0.1:51234 - "POST /v1/chat/completions HTTP/1.1" 200 OK',
        "Avg prompt throughput: 12.1 tokens/s, Running: 2 reqs, Waiting: 0 reqs",
        "NVRM: Xid (PCI:0000:00:04): 79, GPU has fallen off the bus.",
    ):
        assert not credential.search(line)


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream(model="test-model", api_key=KEY) as server:
        yield server


@nginx_installed
def test_the_access_log_parser_reads_real_nginx_lines_which_never_hold_the_token(
    upstream: OpenAIUpstream,
) -> None:
    with NginxProxy(upstream.port, api_key=KEY) as proxy:
        with httpx.Client(base_url=proxy.https_url, verify=proxy.ssl_context()) as client:
            assert client.get("/v1/models", headers=AUTH).status_code == 200
            assert client.get(f"/v1/models?api_key={KEY}", headers=AUTH).status_code == 400
            assert (
                client.get("/v1/models", headers={"Authorization": "Bearer x"}).status_code == 401
            )
            assert client.get("/v1/mod%20els", headers=AUTH).status_code == 404
        lines = proxy.access_log().splitlines()
    # A request retried on a second upstream server logs both times.
    lines.append(
        '10.0.0.2 [01/Dec/2026:20:00:00 +0000] "POST /v1/chat/completions HTTP/1.1" 502 0 312 '
        '0.210 0.100, 0.110 "openai/python"'
    )
    processor = agent_config()["logging"]["processors"]["vllm_gcp_nginx_access_fields"]
    parser = _python_regex(processor["regex"])
    parsed = [parser.fullmatch(line) for line in lines]
    assert all(parsed), lines
    fields = [m.groupdict() for m in parsed if m]
    assert [(f["method"], f["path"], f["status"]) for f in fields] == [
        ("GET", "/v1/models", "200"),
        ("GET", "/v1/models", "400"),
        ("GET", "/v1/models", "401"),
        ("GET", "/v1/mod els", "404"),
        ("POST", "/v1/chat/completions", "502"),
    ]
    assert fields[-1]["upstream_response_time"] == "0.100, 0.110"
    for entry in fields:
        datetime.strptime(entry["time_local"], processor["time_format"])
        assert KEY not in "".join(entry.values())


# ------------------------------------------------------------------------------------------------
# The startup script installs, configures, and (disabled) stops the agent.


def _startup(observability: bool = True) -> str:
    agent = AGENT_SETTINGS if observability else None
    return bundle.startup_script(A2_ULTRA_2G, ops_agent=agent)


def _agent_host(tmp_path: Path, observability: bool = True) -> StartupHost:
    script = _startup(observability)
    return StartupHost(tmp_path, A2_ULTRA_2G).setup(script=script)


def _use(host: StartupHost, observability: bool) -> None:
    (host.base / "startup.sh").write_text(_startup(observability))


def test_the_startup_script_carries_the_agent_configuration_byte_for_byte() -> None:
    script = _startup()
    encoded = re.search(r"^readonly OPS_AGENT_CONFIG_B64='([A-Za-z0-9+/=]+)'$", script, re.M)
    assert encoded is not None
    assert base64.b64decode(encoded[1]).decode() == bundle.ops_agent_config(AGENT_SETTINGS)
    # The script without the agent: tests/test_startup_script.py checks it.
    assert_shell_clean(script)
    with pytest.raises(ValueError, match="not a GCE label value"):
        bundle.ops_agent_config(OpsAgent("Prod Stack"))


def test_first_boot_installs_the_agent_from_googles_repository_pinned_to_major_2(
    tmp_path: Path,
) -> None:
    host = _agent_host(tmp_path)
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    listing = host.path("/etc/apt/sources.list.d/google-cloud-ops-agent.list")
    assert listing.read_text() == (
        "deb [signed-by=/etc/apt/keyrings/google-cloud-ops-agent.gpg] "
        "https://packages.cloud.google.com/apt google-cloud-ops-agent-noble-2 main\n"
    )
    assert host.path("/etc/apt/keyrings/google-cloud-ops-agent.gpg").exists()
    assert any(c.endswith(f"nginx {AGENT}") and " install " in c for c in boot.calls)
    assert host.path(host_paths.OPS_AGENT_CONFIG).read_text() == bundle.ops_agent_config(
        AGENT_SETTINGS
    )
    agent_calls = [c for c in boot.calls if c.startswith("systemctl") and AGENT in c]
    assert agent_calls == [
        f"systemctl enable {AGENT}",
        f"systemctl restart {AGENT}",
    ]
    assert host.ready


def test_a_second_boot_leaves_a_running_agent_alone(tmp_path: Path) -> None:
    host = _agent_host(tmp_path)
    assert host.boot().returncode == 0
    host.reboot()
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    assert [c for c in boot.calls if AGENT in c and not c.startswith("logger")] == [
        f"dpkg-query -W -f=${{Status}} {AGENT}",
        f"systemctl is-active --quiet {AGENT}",
    ]


def test_a_changed_configuration_restarts_the_agent(tmp_path: Path) -> None:
    host = _agent_host(tmp_path)
    assert host.boot().returncode == 0
    host.path(host_paths.OPS_AGENT_CONFIG).write_text("logging: {}\n")
    boot = host.boot()
    assert f"systemctl restart {AGENT}" in boot.calls
    assert host.path(host_paths.OPS_AGENT_CONFIG).read_text() == bundle.ops_agent_config(
        AGENT_SETTINGS
    )


def test_disabled_observability_stops_an_agent_installed_earlier_once(tmp_path: Path) -> None:
    host = _agent_host(tmp_path)
    assert host.boot().returncode == 0
    _use(host, observability=False)
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    assert f"systemctl disable --now {AGENT}" in boot.calls
    assert "stopped and disabled" in boot.output
    again = host.boot()
    assert again.returncode == 0, again.output
    assert not again.called(f"systemctl disable --now {AGENT}")
    assert not again.called(f"systemctl restart {AGENT}")
    # Enabled again: it runs again.
    _use(host, observability=True)
    enabled = host.boot()
    assert [c for c in enabled.calls if c.startswith(f"systemctl enable {AGENT}")] != []


def test_disabled_observability_installs_and_configures_no_agent(tmp_path: Path) -> None:
    host = _agent_host(tmp_path, observability=False)
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    install = next(c for c in boot.calls if c.startswith("apt-get") and " install " in c)
    assert install.endswith("docker.io nvidia-container-toolkit nginx")
    assert not host.path("/etc/apt/sources.list.d/google-cloud-ops-agent.list").exists()
    assert not host.path(host_paths.OPS_AGENT_CONFIG).exists()
    assert "observability is disabled: no agent runs" in boot.output


def test_an_image_that_carries_the_agent_adds_no_repository(tmp_path: Path) -> None:
    host = _agent_host(tmp_path)
    for package in ("docker.io", "nvidia-container-toolkit", "nginx", AGENT):
        (host.state / "installed").open("a").write(f"{package}\n")
    boot = host.boot()
    assert boot.returncode == 0, boot.output
    assert not boot.called("apt-get")
    assert not boot.called("curl -fsSL")
    assert f"systemctl restart {AGENT}" in boot.calls


def test_an_agent_that_refuses_to_start_costs_the_host_its_metrics_not_its_serving(
    tmp_path: Path,
) -> None:
    host = _agent_host(tmp_path)
    boot = host.boot(FAKE_FAIL=f"systemctl restart {AGENT}")
    assert boot.returncode == 0, boot.output
    assert host.ready
    assert f"warning: {AGENT} did not start: no metrics or logs from this host" in boot.output


def test_an_agent_key_that_cannot_be_downloaded_fails_the_boot_with_the_way_out(
    tmp_path: Path,
) -> None:
    host = _agent_host(tmp_path)
    boot = host.boot(FAKE_FAIL="curl *apt-key.gpg")
    assert boot.returncode != 0
    assert host.failure is not None
    assert "prepared image" in host.failure
    assert "observability.enabled false" in host.failure


# ------------------------------------------------------------------------------------------------
# The drain on stop: scripts/drain_vllm.sh under a recording curl.

DRAIN_CURL = """#!/usr/bin/env bash
# Stand-in for curl on vLLM's /metrics: records the call and whether the drain marker existed,
# then answers with the next $FAKE_STATE/metrics.N (the last one again once they run out), or
# fails as a refused connection when $FAKE_STATE/down exists.
set -euo pipefail
marker=absent
[[ -e $DRAIN_MARKER ]] && marker=present
printf '%s marker=%s %s\\n' "$SECONDS" "$marker" "$*" >>"$FAKE_STATE/calls"
if [[ -e $FAKE_STATE/down ]]; then
  echo "curl: (7) Failed to connect to 127.0.0.1 port 8000: Connection refused" >&2
  exit 7
fi
count=$(($(cat "$FAKE_STATE/count" 2>/dev/null || echo 0) + 1))
echo "$count" >"$FAKE_STATE/count"
answer="$FAKE_STATE/metrics.$count"
[[ -e $answer ]] || answer="$(ls "$FAKE_STATE"/metrics.* | sort -t. -k2 -n | tail -n 1)"
cat "$answer"
"""


def metrics(running: int, waiting: int) -> str:
    """vLLM's /metrics as the pinned release writes it (Prometheus text format): one series per
    engine and model, with labels."""
    model = 'model_name="mistral small",engine="0"'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{{{model}}} {running}.0\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{{{model}}} {waiting}.0\n"
        f"vllm:num_requests_running_total{{{model}}} 99.0\n"
        f"vllm:kv_cache_usage_perc{{{model}}} 0.5\n"
    )


class Drain:
    def __init__(self, tmp_path: Path) -> None:
        self.state = tmp_path / "state"
        self.bin = tmp_path / "bin"
        self.marker = tmp_path / "run" / "vllm-gcp" / "draining"
        self.state.mkdir()
        self.bin.mkdir()
        (self.bin / "curl").write_text(DRAIN_CURL)
        (self.bin / "curl").chmod(0o755)

    def answers(self, *texts: str) -> None:
        for index, text in enumerate(texts, start=1):
            (self.state / f"metrics.{index}").write_text(text)

    def calls(self) -> list[str]:
        path = self.state / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def run(
        self, settle: int = 0, limit: int = 30
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_STATE": str(self.state),
            "DRAIN_MARKER": str(self.marker),
        }
        argv = ["bash", str(SCRIPTS_DIR / "drain_vllm.sh")]
        argv += [str(self.marker), bundle.VLLM_METRICS_URL, str(settle), str(limit), "0.05"]
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        return result, time.monotonic() - started


def test_the_drain_script_passes_shellcheck() -> None:
    assert_shell_clean(read("drain_vllm.sh"))


def test_the_drain_refuses_new_work_first_then_waits_for_the_answers_in_flight(
    tmp_path: Path,
) -> None:
    drain = Drain(tmp_path)
    drain.answers(metrics(2, 1), metrics(1, 1), metrics(1, 0), metrics(0, 0), metrics(5, 5))
    result, _ = drain.run()
    assert result.returncode == 0, result.stderr
    calls = drain.calls()
    # The marker was there before the first look, and it stopped at the first empty answer.
    assert [c.split(" ", 1)[1] for c in calls] == [
        f"marker=present -fsS --max-time 5 {bundle.VLLM_METRICS_URL}"
    ] * 4
    assert drain.marker.exists()
    assert result.stderr.splitlines()[-1].startswith("vllm-gcp-drain: drained after ")


def test_the_drain_waits_the_load_balancers_settle_time_even_when_idle(tmp_path: Path) -> None:
    drain = Drain(tmp_path)
    drain.answers(metrics(0, 0))
    result, elapsed = drain.run(settle=2)
    assert result.returncode == 0, result.stderr
    assert elapsed >= 1.0
    assert len(drain.calls()) > 1


def test_the_drain_gives_up_at_its_limit_and_says_how_many_were_cut_off(tmp_path: Path) -> None:
    drain = Drain(tmp_path)
    drain.answers(metrics(2, 1))
    result, elapsed = drain.run(limit=2)
    assert result.returncode == 0
    assert 1.0 <= elapsed < 10
    assert result.stderr.splitlines()[-1] == (
        "vllm-gcp-drain: drain limit of 2 s reached with 3 request(s) in flight: stopping anyway"
    )


def test_the_drain_ends_at_once_when_vllm_does_not_answer(tmp_path: Path) -> None:
    drain = Drain(tmp_path)
    (drain.state / "down").touch()
    result, elapsed = drain.run(settle=30)
    assert result.returncode == 0
    assert elapsed < 5
    assert len(drain.calls()) == 1
    assert "nothing left to finish" in result.stderr


def test_the_drain_does_not_wait_on_metrics_it_cannot_read(tmp_path: Path) -> None:
    drain = Drain(tmp_path)
    drain.answers("# vLLM without the request gauges\nvllm:kv_cache_usage_perc 0.1\n")
    result, elapsed = drain.run(settle=30)
    assert result.returncode == 0
    assert elapsed < 5
    assert "has no vllm:num_requests_running" in result.stderr


# The unit: drain, then docker stop, all within TimeoutStopSec; the run step installs the helper.


def _unit() -> str:
    image = catalogue.DEFAULT_VLLM_IMAGE
    return bundle.vllm_unit(bundle.container_spec(ModelConfig(), 2, image), image)


def _directives(unit: str, name: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{name}=")]


def test_the_unit_drains_before_it_stops_the_container_within_its_stop_timeout() -> None:
    unit = _unit()
    stops = _directives(unit, "ExecStop")
    assert len(stops) == 2
    assert systemd_split(stops[0].removeprefix("-")) == bundle.drain_command(False)
    metrics = f"http://127.0.0.1:{host_paths.VLLM_LOOPBACK_PORT}/metrics"
    # A replica waits 35 s for its health check to fail; the single VM has none to wait for.
    assert bundle.drain_command(True) == [
        host_paths.DRAIN_HELPER_PATH,
        host_paths.DRAIN_MARKER,
        metrics,
        "35",
        "300",
        "2",
    ]
    assert bundle.drain_command(False) == [
        host_paths.DRAIN_HELPER_PATH,
        host_paths.DRAIN_MARKER,
        metrics,
        "0",
        "300",
        "2",
    ]
    assert stops[1] == "-/usr/bin/docker stop --time 60 vllm"
    assert _directives(unit, "ExecStopPost") == [f"-/bin/rm -f {host_paths.DRAIN_MARKER}"]
    assert f"-/bin/rm -f {host_paths.DRAIN_MARKER}" in _directives(unit, "ExecStartPre")
    stop_timeout = int(_directives(unit, "TimeoutStopSec")[0])
    assert stop_timeout == 390
    assert stop_timeout > bundle.DRAIN_LIMIT_SECONDS + bundle.DRAIN_POLL_SECONDS + 60
    # Stopped before Nginx and the agent at shutdown: both outlive the drain.
    assert "After=nginx.service google-cloud-ops-agent.service" in unit.splitlines()
    assert (
        "After=google-cloud-ops-agent-fluent-bit.service "
        "google-cloud-ops-agent-opentelemetry-collector.service"
    ) in unit.splitlines()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    root = tmp_path / "root"
    units = root / "lib/systemd/system"
    units.mkdir(parents=True)
    for target in Path("/lib/systemd/system").glob("*.target"):
        shutil.copy(target, units)
    for name in ("docker.service", "nginx.service"):
        (units / name).write_text("[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n")
    for program in (
        "/usr/bin/docker",
        "/bin/sh",
        "/bin/rm",
        "/bin/true",
        host_paths.DRAIN_HELPER_PATH,
    ):
        path = root / program.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    (system / bundle.SERVICE_NAME).write_text(_unit())
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            "--generators=no",
            f"--root={root}",
            bundle.SERVICE_NAME,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_run_step_installs_the_drain_helper_with_the_unit(tmp_path: Path) -> None:
    host = StepHost(tmp_path)
    unit = "[Service]\nExecStart=/usr/bin/docker run vllm\n"
    result = host.run(bundle.run_script(catalogue.DEFAULT_VLLM_IMAGE), stdin=unit)
    assert result.returncode == 0, result.stderr
    helper = host.path(host_paths.DRAIN_HELPER_PATH)
    assert helper.read_text() == read("drain_vllm.sh").rstrip() + "\n# --- end of drain_vllm.sh\n"
    assert helper.stat().st_mode & 0o777 == 0o755
    calls = host.calls()
    helper_at = next(i for i, c in enumerate(calls) if str(helper) in c and "install -m" in c)
    unit_at = next(i for i, c in enumerate(calls) if f"{bundle.SERVICE_NAME}.new" in c)
    restart_at = calls.index(f"systemctl restart {bundle.SERVICE_NAME}")
    assert helper_at < unit_at < restart_at


# Nginx while draining: nothing new starts on the single VM; the fleet's health route fails.


@pytest.fixture
def marker_dir() -> Iterator[Path]:
    # Nginx's workers (nobody) stat the marker: a directory they may search.
    directory = Path(tempfile.mkdtemp(prefix="vllm-gcp-drain-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


@nginx_installed
def test_a_draining_single_vm_refuses_new_requests_without_reaching_vllm(
    upstream: OpenAIUpstream, marker_dir: Path
) -> None:
    marker = marker_dir / "draining"
    with (
        NginxProxy(upstream.port, api_key=KEY, drain_marker=str(marker)) as proxy,
        httpx.Client(base_url=proxy.https_url, verify=proxy.ssl_context()) as client,
    ):
        assert client.get("/v1/models", headers=AUTH).status_code == 200
        marker.touch()
        before = len(upstream.arrivals)
        refused = [
            client.get("/v1/models", headers=AUTH),
            client.post("/v1/chat/completions", headers=AUTH, json={"model": "test-model"}),
        ]
        assert [r.status_code for r in refused] == [503, 503]
        assert refused[0].json()["error"]["message"] == (
            "The endpoint is restarting; retry shortly"
        )
        assert len(upstream.arrivals) == before
        marker.unlink()
        assert client.get("/v1/models", headers=AUTH).status_code == 200


@nginx_installed
def test_a_draining_replica_fails_its_health_route_and_still_serves(
    upstream: OpenAIUpstream, marker_dir: Path
) -> None:
    marker = marker_dir / "draining"
    behind = LoadBalancerSite(
        trusted_proxies=["127.0.0.1/32"], health_check_sources=["127.0.0.1/32"]
    )
    with (
        NginxProxy(
            upstream.port, api_key=KEY, load_balancer=behind, drain_marker=str(marker)
        ) as proxy,
        httpx.Client(base_url=proxy.https_url, verify=proxy.ssl_context()) as client,
    ):
        assert client.get(host_paths.HEALTH_PATH).status_code == 200
        marker.touch()
        before = len(upstream.arrivals)
        health = client.get(host_paths.HEALTH_PATH)
        assert health.status_code == 503
        assert len(upstream.arrivals) == before
        # What the load balancer sent before it saw the failure is still answered, and still
        # checked.
        assert client.get("/v1/models", headers=AUTH).status_code == 200
        wrong = client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}x"})
        assert wrong.status_code == 401


def test_the_run_steps_limit_covers_a_pull_and_a_restart_with_its_drain() -> None:
    script = bundle.run_script(catalogue.DEFAULT_VLLM_IMAGE)
    limits = {
        name: int(value)
        for name, value in re.findall(r"^readonly (PULL|RESTART)_SECONDS='?(\d+)'?$", script, re.M)
    }
    assert limits["RESTART"] == bundle.STOP_TIMEOUT_SECONDS + bundle.START_TIMEOUT_SECONDS + 60
    assert limits["PULL"] + limits["RESTART"] < vllm_server.RUN_TIMEOUT_MINUTES * 60
