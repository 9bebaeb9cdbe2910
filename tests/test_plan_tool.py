"""The offline plan (`vllm-gcp plan`): both stacks validate, print what a reviewer needs and write
redacted files."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from tests.harness import (
    MOCK_SECRETS,
    ROOT,
)
from tools import cli, plan


def _plan(*argv: str) -> int:
    """`vllm-gcp plan ARGV`, in this process."""
    return cli.main(["plan", *argv])


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
def test_each_stack_plans_and_writes_the_host_files_redacted(
    stack: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan"
    assert _plan(stack, "--out", str(out)) == 0
    printed = capsys.readouterr().out
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


def test_set_replaces_a_placeholder(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["dev", "--set", "gcp:project=my-project", "--set", "access.sshCidrs=[203.0.113.7/32]"]
    assert _plan(*argv) == 0
    printed = capsys.readouterr().out
    assert "Placeholders" not in printed
    assert "sourceRanges: 203.0.113.7/32" in printed


def test_set_refuses_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert _plan("dev", "--set", "vllm-gcp:huggingFaceToken=hf_real") == 2
    assert "never reads secrets" in capsys.readouterr().err


def test_an_unknown_stack_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _plan("nosuch") == 2
    assert "stacks: dev, prod" in capsys.readouterr().err


def test_encrypted_secrets_get_redacted_stand_ins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    config["vllm-gcp:tls"] = {"mode": "provided", "domain": "llm.example.com"}
    for key in ("huggingFaceToken", "tlsCertificate", "tlsPrivateKey"):
        config[f"vllm-gcp:{key}"] = {"secure": "v1:AAAAciphertext"}
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.review.yaml").write_text(yaml.safe_dump({"config": config}))
    monkeypatch.setattr(plan, "ROOT", tmp_path)
    read = plan.read_stack("review")
    out = tmp_path / "out"

    assert _plan("review", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "Stand-ins for the stack's secrets: huggingFaceToken, tlsCertificate, tlsPrivateKey" in (
        printed
    )
    assert "<redacted:tlsPrivateKey>" in (out / "vllm-nginx-site.key").read_text()
    assert "<redacted:huggingFaceToken>" in (out / "vllm-secrets.stdin").read_text()
    _assert_no_secret(out, (*MOCK_SECRETS, read.secrets["tlsPrivateKey"]))
