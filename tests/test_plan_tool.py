"""The offline plan (`vllm-gcp plan`): both stacks validate, print what a reviewer needs, write
redacted files, the same bytes each time, and diff; failures exit 2 with one message.

The checked-in stacks are planned once for the module: prod twice, in two processes (the
installed `vllm-gcp` from a directory outside the repository, and this one), for the same bytes;
dev and prod with a longer context, then each of their directories against prod's. The other
tests run the CLI in this process too, but where an exit code or a crash is the point.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.harness import MOCK_SECRETS, ROOT
from tools import cli

MAX_MODEL_LEN = 16384
# The summary's host line for the checked-in stacks' default image, observability on.
DEFAULT_HOST_IMAGE = (
    "  host image: projects/ubuntu-os-accelerator-images/global/images/family/"
    "ubuntu-accelerator-2404-amd64-with-nvidia-580, not prepared: each host installs Docker, "
    "the container toolkit, Nginx and the Ops Agent at its first boot"
)
INSTALLED = ROOT / "venv" / "bin" / "vllm-gcp"  # pyproject.toml's [project.scripts]
MODULE = [sys.executable, "-m", "tools.cli"]


def _plan(*argv: str) -> int:
    """`vllm-gcp plan ARGV`, in this process."""
    return cli.main(["plan", *argv])


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def _start(command: list[str], cwd: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*command, "plan", *argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> Run:
    out, err = process.communicate(timeout=300)
    return Run(process.returncode, out, err)


@dataclass(frozen=True)
class Plans:
    out: dict[str, Path]  # prod, prod-again, dev, longer-context: the --out directories
    runs: dict[str, Run]  # the same; longer-context-against-prod, dev-against-prod: the diffs


def _in_process(*argv: str) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _plan(*argv)
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> Plans:
    base = tmp_path_factory.mktemp("plans")
    out = {name: base / name for name in ("prod", "prod-again", "dev", "longer-context")}
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # the installed command needs no checkout
    # Two processes (two hash seeds): the installed command, and this one.
    prod = _start([str(INSTALLED)], elsewhere, "prod", "--out", str(out["prod"]))
    runs = {
        "prod-again": _in_process("prod", "--out", str(out["prod-again"])),
        "dev": _in_process("dev", "--out", str(out["dev"])),
        "longer-context": _in_process(
            "stacks/Pulumi.prod.yaml",
            *("--set", f"vllm-gcp:model.maxModelLen={MAX_MODEL_LEN}"),
            *("--out", str(out["longer-context"])),
        ),
    }
    runs["prod"] = _finish(prod)
    runs.update(
        {
            f"{name}-against-prod": _in_process(str(out[name]), "--against", str(out["prod"]))
            for name in ("dev", "longer-context")
        }
    )
    return Plans(out, runs)


def _assert_no_secret(directory: Path, secrets: tuple[str, ...]) -> None:
    files = list(directory.iterdir())
    assert files
    for path in files:
        text = path.read_text()
        for secret in secrets:
            for form in (secret, base64.b64encode(secret.encode()).decode(), secret.strip()):
                assert form not in text, f"{path.name} holds a secret"
        for marker in ("mock-ssh-key", "mock-tls-key", "PRIVATE KEY-----\n"):
            assert marker not in text, f"{path.name} holds {marker!r}"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_each_stack_plans_and_writes_the_host_files_redacted(stack: str, plans: Plans) -> None:
    run = plans.runs[stack]
    assert run.code == 0, run.err
    printed = run.out
    machine = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"][
        "vllm-gcp:host"
    ]["machineType"]
    assert f"machineType: {machine}" in printed
    assert 'gcp:project = "offline-plan"' in printed
    assert "sourceRanges: 192.0.2.1/32" in printed
    assert "allow: tcp 443" in printed
    assert "metadata keys: " in printed and "startup-script" in printed
    assert "roles/logging.logWriter" in printed
    assert "vllm-nginx-site" in printed and "apiKey = [secret]" in printed

    out = plans.out[stack]
    names = {path.name for path in out.iterdir()}
    assert {
        "vllm-host.startup-script.sh",
        "vllm-secrets.stdin",
        "vllm-run.service",
        "vllm-nginx-site.conf",
        "resources.json",
    } <= names
    assert "<redacted:apiKey>" in (out / "vllm-nginx-site.conf").read_text()
    assert (out / "vllm-secrets.stdin").read_text() == "VLLM_API_KEY=<redacted:apiKey>\n"
    assert "--tensor-parallel-size" in (out / "vllm-run.service").read_text()
    assert (out / "vllm-host.startup-script.sh").read_text().startswith("#!/usr/bin/env bash")
    _assert_no_secret(out, MOCK_SECRETS)


def _files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_two_runs_of_a_stack_write_the_same_bytes(plans: Plans) -> None:
    first, second = plans.runs["prod"], plans.runs["prod-again"]
    assert (first.code, second.code) == (0, 0), first.err + second.err
    assert first.out.startswith("Offline plan of stack prod (stacks/Pulumi.prod.yaml)")
    assert "Configuration valid." in first.out
    assert first.out.replace(str(plans.out["prod"]), "OUT") == second.out.replace(
        str(plans.out["prod-again"]), "OUT"
    )
    assert _files(plans.out["prod"]) == _files(plans.out["prod-again"])
    recorded = json.loads((plans.out["prod"] / "resources.json").read_text())
    keys = [(r["type"], r["name"]) for r in recorded]
    assert keys == sorted(keys)


def test_the_summary_shows_what_prod_serves_its_cost_and_what_each_step_reruns_on(
    plans: Plans,
) -> None:
    lines = plans.runs["prod"].out.splitlines()
    start = lines.index("Serving:")
    stack = 'job="vllm",vllm_gcp_stack="prod"'
    proxy = "logging_googleapis_com:user_vllm_gcp_prod_proxy_responses"
    expected = [
        "Serving:",
        "  model: mistralai/Mistral-Small-3.2-24B-Instruct-2506, served as "
        "mistralai/Mistral-Small-3.2-24B-Instruct-2506",
        "  GPUs: 2 x NVIDIA A100 80GB (a2-ultragpu-2g)",
        "  tensor parallel size: 2",
        "  GPU memory utilisation: 0.9",
        "  maxModelLen: vLLM's default (the model's own)",
        "  tool-call parser: mistral",
        "  vLLM image: vllm/vllm-openai:v0.32.0",
        "  where: one VM in us-central1-a",
        DEFAULT_HOST_IMAGE,
        "",
        "Observability:",
        "  metrics: job vllm from 127.0.0.1:8000/metrics every 30s",
        "  metrics: the GPUs' utilisation and memory (the agent's own NVML receiver)",
        "  logs: vllm_gcp_nginx_access (files) from /var/log/nginx/vllm-gcp-access.log",
        "  logs: vllm_gcp_nginx_error (nginx_error) from /var/log/nginx/error.log",
        "  logs: vllm_gcp_journal (systemd_journald) from the systemd journal",
        "  logs dropped before they leave the host: 2 rules",
        "  dashboard: vLLM endpoint (prod)",
        f"  alert: vLLM prod: endpoint down (300s of absent(vllm:num_requests_running{{{stack}}}))"
        ", in the console only",
        f"  alert: vLLM prod: high error ratio (600s of sum(rate({proxy}{{monitored_resource="
        f'"gce_instance",status=~"5.."}}[5m])) / sum(rate({proxy}{{monitored_resource='
        '"gce_instance"}[5m])) > 0.05), in the console only',
        "  alert: vLLM prod: KV cache saturated (600s of max by (instance_name) "
        f"(vllm:kv_cache_usage_perc{{{stack}}}) > 0.95), in the console only",
        "  alert: vLLM prod: requests queueing (600s of max by (instance_name) "
        f"(vllm:num_requests_waiting{{{stack}}}) > 8), in the console only",
        "",
        "Hourly cost, estimated: $10.14/h",
        "  1 x a2-ultragpu-2g on-demand in us-central1 at $10.1376/h",
    ]
    assert lines[start : start + len(expected)] == expected
    step = lines.index("  vllm-serving")
    assert lines[step + 1 : step + 3] == [
        "      stdin: none",
        "      re-runs (replaced) when a trigger changes: vllm-host.instanceId; sha256 of "
        "vllm-run's script and stdin; sha256 of vllm-secrets's stdin",
    ]


def _block(lines: Sequence[str], header: str) -> list[str]:
    """One resource's change: its line and the indented lines under it."""
    start = lines.index(header)
    end = start + 1
    while end < len(lines) and lines[end].startswith("      "):
        end += 1
    return list(lines[start:end])


def _reruns(lines: Sequence[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith("Remote steps that run"))
    return list(lines[start : lines.index("", start)])


def test_a_longer_context_updates_the_unit_and_reruns_the_serving_check(plans: Plans) -> None:
    assert plans.runs["longer-context"].code == 0
    run = plans.runs["longer-context-against-prod"]
    assert run.code == 0, run.err
    unchanged = len(json.loads((plans.out["prod"] / "resources.json").read_text())) - 2
    assert run.out.splitlines() == [
        f"Offline plan diff: the plan in {plans.out['longer-context']}",
        f"  against the plan in {plans.out['prod']}",
        "What `pulumi up` would do to a stack deployed as the second, to make it the first "
        "(under Pulumi's mocks: from the program's inputs and the providers' replace rules).",
        "",
        "~  update  command:remote:Command vllm-run",
        "      stdin",
        "+- replace command:remote:Command vllm-serving",
        "      create",
        "      triggers[1] (sha256 of vllm-run's script and stdin): replaces (a trigger: "
        "replace-on-change in pulumi-command)",
        "      update",
        "",
        "Remote steps that run again: 2",
        "  vllm-run: updated in place, so its update script runs again: stdin changed",
        "  vllm-serving: replaced, so its create script runs again: triggers[1] (sha256 of "
        "vllm-run's script and stdin) changed",
        "",
        f"0 to create, 1 to replace, 1 to update in place, 0 to delete, {unchanged} unchanged.",
    ]


def test_dev_against_prod_replaces_the_vm_and_reruns_every_step(plans: Plans) -> None:
    run = plans.runs["dev-against-prod"]
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[:2] == [
        f"Offline plan diff: the plan in {plans.out['dev']}",
        f"  against the plan in {plans.out['prod']}",
    ]
    assert _block(lines, "+- replace gcp:compute/instance:Instance vllm-host") == [
        "+- replace gcp:compute/instance:Instance vllm-host",
        "      bootDisk.initializeParams.image: replaces (ForceNew in the provider), known only "
        "once vllm-host-image is replaced",
        "      bootDisk.initializeParams.size",
        "      labels.stack",
        "      machineType: replaces (the program's replaceOnChanges)",
        "      metadata.startup-script",
        "      scheduling.automaticRestart",
        "      scheduling.instanceTerminationAction",
        "      scheduling.preemptible: replaces (ForceNew in the provider)",
        "      scheduling.provisioningModel: replaces (ForceNew in the provider)",
        "      serviceAccount.email, known only once vllm-host-sa is replaced",
        "      tags[0]",
    ]
    assert _block(lines, "+- replace gcp:serviceaccount/account:Account vllm-host-sa") == [
        "+- replace gcp:serviceaccount/account:Account vllm-host-sa",
        "      accountId: replaces (ForceNew in the provider)",
        "      displayName",
    ]
    assert _block(lines, "+- replace pulumi:index:Stash vllm-host-image") == [
        "+- replace pulumi:index:Stash vllm-host-image",
        "      replacementTrigger: replaces (the program's replacement trigger changed)",
    ]
    new_vm = "triggers[0] (vllm-host.instanceId) changed (vllm-host is replaced)"
    assert _reruns(lines) == [
        "Remote steps that run again: 5",
        f"  vllm-host-ready: replaced, so its create script runs again: {new_vm}",
        f"  vllm-nginx-site: replaced, so its create script runs again: {new_vm}",
        f"  vllm-run: replaced, so its create script runs again: {new_vm}",
        f"  vllm-secrets: replaced, so its create script runs again: {new_vm}",
        f"  vllm-serving: replaced, so its create script runs again: {new_vm}; triggers[1] "
        "(sha256 of vllm-run's script and stdin) changed",
    ]


def test_a_yaml_error_is_one_message_with_file_and_line(tmp_path: Path) -> None:
    stack = tmp_path / "Pulumi.broken.yaml"
    stack.write_text("config:\n  gcp:zone: us-central1-a\n  vllm-gcp:host:\n    machineType: [g2\n")
    run = _finish(_start(MODULE, ROOT, str(stack)))
    assert (run.code, run.out) == (2, "")
    assert run.err == (
        f"error: {stack}:5:1: the stack file is not valid YAML: expected ',' or ']', but got "
        "'<stream end>' (while parsing a flow sequence that starts at line 4)\n"
    )


def test_out_into_a_non_empty_directory_is_refused_before_planning(tmp_path: Path) -> None:
    (tmp_path / "earlier.txt").write_text("kept\n")
    run = _finish(_start(MODULE, ROOT, "prod", "--out", str(tmp_path)))
    assert (run.code, run.out) == (2, "")
    assert run.err == (
        f"error: --out {tmp_path} is not an empty directory: give a new or empty one (the plan "
        "never overwrites files), e.g. --out plan-$(date +%Y%m%d-%H%M%S)\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["earlier.txt"]


def test_a_config_error_prints_every_problem_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = _plan(
        "prod", "--set", "vllm-gcp:model.tensorParallelSize=3", "--set", "gcp:zone=nowhere"
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "vllm-gcp:model.tensorParallelSize" in err
    assert "gcp:zone" in err


def test_a_list_set_as_one_value_is_told_how_to_set_it_with_set(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _plan("dev", "--set", "access.sshCidrs=203.0.113.7/32") == 2
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  - vllm-gcp:access.sshCidrs: must be a list, not the single value '203.0.113.7/32': "
        "set its first item with `--set 'vllm-gcp:access.sshCidrs[0]=203.0.113.7/32'`"
    ]


def test_set_replaces_a_placeholder(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "dev",
        "--set",
        "gcp:project=my-project",
        "--set",
        "vllm-gcp:access.sshCidrs[0]=203.0.113.7/32",
        "--set",
        "access.sshCidrs[1]=198.51.100.0/24",
    ]
    assert _plan(*argv) == 0
    printed = capsys.readouterr().out
    assert "Placeholders" not in printed
    assert "sourceRanges: 203.0.113.7/32, 198.51.100.0/24" in printed


def test_set_refuses_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert _plan("dev", "--set", "vllm-gcp:huggingFaceToken=hf_real") == 2
    assert "never reads secrets" in capsys.readouterr().err


def test_an_unknown_stack_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _plan("nosuch") == 2
    assert "stacks: dev, prod" in capsys.readouterr().err


PROVIDED_AND_KIBANA = (
    "--set",
    "tls.mode=provided",
    "--set",
    "tls.domain=llm.example.com",
    "--set",
    "elastic.kibanaUrl=https://kb.example.com",
)


def test_secrets_the_stack_file_lacks_are_refused_with_the_stand_in_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _plan("dev", *PROVIDED_AND_KIBANA) == 2
    assert capsys.readouterr().err.splitlines()[1:] == [
        "  - vllm-gcp:tlsCertificate: required for provided: pulumi config set --secret "
        "vllm-gcp:tlsCertificate < server.crt (to plan without it: --stand-in tlsCertificate)",
        "  - vllm-gcp:tlsPrivateKey: required for provided: pulumi config set --secret "
        "vllm-gcp:tlsPrivateKey < server.key (to plan without it: --stand-in tlsPrivateKey)",
        "  - vllm-gcp:kibanaApiKey: required when elastic.kibanaUrl is set: pulumi config set "
        "--secret vllm-gcp:kibanaApiKey <a Kibana API key with the Actions and Connectors All "
        "privilege> (to plan without it: --stand-in kibanaApiKey)",
    ]


def test_encrypted_and_stood_in_secrets_are_redacted_and_set_values_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    config["vllm-gcp:tls"] = {"mode": "provided", "domain": "llm.example.com"}
    for key in ("huggingFaceToken", "tlsCertificate", "tlsPrivateKey"):
        config[f"vllm-gcp:{key}"] = {"secure": "v1:AAAAciphertext"}
    stack = tmp_path / "Pulumi.review.yaml"
    stack.write_text(yaml.safe_dump({"config": config}))
    out = tmp_path / "out"
    argv = [
        str(stack),
        *("--set", "elastic.kibanaUrl=https://kb.example.com"),
        *("--set", "model.maxModelLen=8192"),
        *("--stand-in", "vllm-gcp:kibanaApiKey", "--out", str(out)),
    ]

    assert _plan(*argv) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("Values given with --set:")
    assert lines[start : start + 16] == [
        "Values given with --set:",
        '  vllm-gcp:elastic.kibanaUrl = "https://kb.example.com"',
        "  vllm-gcp:model.maxModelLen = 8192",
        "Stand-ins for the stack's secrets: huggingFaceToken, kibanaApiKey, tlsCertificate, "
        "tlsPrivateKey",
        "",
        "Serving:",
        "  model: Qwen/Qwen2.5-7B-Instruct, served as Qwen/Qwen2.5-7B-Instruct",
        "  GPUs: 1 x NVIDIA L4 (g2-standard-8)",
        "  tensor parallel size: 1",
        "  GPU memory utilisation: 0.9",
        "  maxModelLen: 8192 (from --set)",
        "  tool-call parser: hermes",
        "  vLLM image: vllm/vllm-openai:v0.32.0",
        "  where: one VM in us-central1-a",
        DEFAULT_HOST_IMAGE,
        "",
    ]
    assert "pulumi-python:dynamic:Resource" in lines  # the Kibana connector, planned
    assert "<redacted:tlsPrivateKey>" in (out / "vllm-nginx-site.key").read_text()
    assert "<redacted:huggingFaceToken>" in (out / "vllm-secrets.stdin").read_text()
    _assert_no_secret(out, MOCK_SECRETS)


def test_an_autoscaled_fleet_on_a_prepared_image_shows_its_autoscaler_and_image(
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = "projects/my-project/global/images/family/vllm-host-2404-nvidia-580"
    argv = [
        "prod",
        *("--set", "vllm-gcp:fleet.minReplicas=1", "--set", "vllm-gcp:fleet.maxReplicas=3"),
        *("--set", f"vllm-gcp:host.image={image}"),
        *("--set", "vllm-gcp:observability.notificationChannels[0]=123"),
    ]
    assert _plan(*argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        "  where: a fleet of 1 to 3 (autoscaled) replicas in us-central1 (us-central1-a, "
        "us-central1-c)"
    ) in lines
    assert (
        f"  host image: {image} (from --set), prepared (vllm-gcp image build): the software comes "
        "in the image"
    ) in lines
    assert [line for line in lines if line.startswith("  autoscaler: ")] == [
        "  autoscaler: 1 to 3 replicas on vllm:num_requests_running 16 per replica; "
        "vllm:num_requests_waiting 2 per replica; cool-down 3600 s"
    ]
    alerts = [line for line in lines if line.startswith("  alert: ")]
    assert len(alerts) == 4
    assert all(line.endswith(", to 1 notification channel(s)") for line in alerts)
    assert "high error ratio" in alerts[1] and 'forwarding_rule_name="vllm-' in alerts[1]


def test_a_stack_without_observability_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert _plan("dev", "--set", "vllm-gcp:observability.enabled=false") == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        "Observability: off (observability.enabled false): no agent, dashboard or alerts" in lines
    )
    assert not any(line.startswith("  alert: ") for line in lines)
    assert any(line.endswith("the container toolkit, Nginx at its first boot") for line in lines)


def test_a_fleets_new_machine_type_is_a_new_template_a_group_update_and_a_rollout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    config["vllm-gcp:fleet"] = {"replicas": 2}
    stack = tmp_path / "Pulumi.fleet.yaml"
    stack.write_text(yaml.safe_dump({"config": config}))
    assert (
        _plan(str(stack), "--set", "host.machineType=g2-standard-12", "--against", str(stack)) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    template = "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate vllm-template"
    assert _block(lines, f"+- replace {template}") == [
        f"+- replace {template}",
        "      disks[0].sourceImage: replaces (the provider cannot update it: immutable), known "
        "only once vllm-fleet-image is replaced",
        "      machineType: replaces (the provider cannot update it: immutable)",
    ]
    group = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager vllm-group"
    assert _block(lines, f"~  update  {group}") == [
        f"~  update  {group}",
        "      versions[0].instanceTemplate, known only once vllm-template is replaced",
    ]
    assert _reruns(lines) == [
        "Remote steps that run again: 1",
        "  vllm-rollout: replaced, so its create script runs again: triggers[0] "
        "(vllm-template.selfLink) changed (vllm-template is replaced)",
    ]
