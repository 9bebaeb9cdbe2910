"""tools/e2e.sh with `pulumi` and the smoke test replaced by recording stand-ins."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import ROOT

SCRIPT = ROOT / "tools" / "e2e.sh"

# Records each call; answers `config get`; fails the command named in FAKE_PULUMI_FAIL
# ("up", "destroy", ...). On `up`, keeps a copy of the new stack's file (where one was written).
FAKE_PULUMI = """#!/usr/bin/env bash
set -euo pipefail
printf 'pulumi %s\\n' "$*" >>"${E2E_LOG}"
case "$1 ${2:-}" in
  "config get")
    case "$*" in
      *machineType*) echo g2-standard-8 ;;
      *provisioning*) echo spot ;;
    esac ;;
  "up "*) cp stacks/Pulumi.e2e-*.yaml "${E2E_LOG%/*}/stack-at-up.yaml" 2>/dev/null || true ;;
esac
if [[ "$1" == "${FAKE_PULUMI_FAIL:-none}" ]]; then
  echo "pulumi $1 failed" >&2
  exit 1
fi
"""
FAKE_CLI = """#!/usr/bin/env bash
printf 'vllm-gcp %s\\n' "$*" >>"${E2E_LOG}"
exit "${FAKE_SMOKE_RC:-0}"
"""


@dataclass
class Run:
    code: int
    calls: list[str]
    stderr: str
    repo: Path
    stdout: str = ""

    def index(self, prefix: str) -> int:
        found = [i for i, call in enumerate(self.calls) if call.startswith(prefix)]
        assert found, f"no call {prefix!r} in {self.calls}"
        return found[0]

    def called(self, prefix: str) -> bool:
        return any(call.startswith(prefix) for call in self.calls)


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the script and the dev stack file: the run writes only here."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "stacks").mkdir()
    shutil.copy(SCRIPT, repo / "tools" / "e2e.sh")
    shutil.copy(ROOT / "stacks" / "Pulumi.dev.yaml", repo / "stacks" / "Pulumi.dev.yaml")
    return repo


def _run(repo: Path, *args: str, **env: str) -> Run:
    bin_dir = repo.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    _executable(bin_dir / "pulumi", FAKE_PULUMI)
    _executable(bin_dir / "vllm-gcp", FAKE_CLI)
    log = repo.parent / "calls.log"
    log.touch()
    environment = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(repo.parent),
        "E2E_LOG": str(log),
        "GCP_PROJECT": "my-project",
        "SSH_CIDR": "203.0.113.7/32",
        "VLLM_GCP": str(bin_dir / "vllm-gcp"),
        **env,
    }
    result = subprocess.run(
        ["bash", str(repo / "tools" / "e2e.sh"), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return Run(result.returncode, log.read_text().splitlines(), result.stderr, repo, result.stdout)


def test_up_smoke_test_destroy_and_removal_happen_in_order(repo: Path) -> None:
    run = _run(repo)
    assert run.code == 0, run.stderr
    stack = run.calls[run.index("pulumi stack init")].split()[3]
    assert stack.startswith("e2e-")
    order = [
        "pulumi stack init",
        "pulumi config set --stack",
        "pulumi up",
        f"vllm-gcp smoke --stack {stack}",
        "pulumi destroy",
        "pulumi stack rm",
    ]
    positions = [run.index(prefix) for prefix in order]
    assert positions == sorted(positions)
    assert f"pulumi up --stack {stack} --yes --skip-preview --non-interactive" in run.calls
    assert f"pulumi config set --stack {stack} gcp:project my-project" in run.calls
    assert (
        f"pulumi config set --stack {stack} --path vllm-gcp:access.sshCidrs[0] 203.0.113.7/32"
        in run.calls
    )
    # The new stack got the dev stack's configuration, and its file is gone with the stack.
    copied = (repo.parent / "stack-at-up.yaml").read_text()
    assert "machineType: g2-standard-8" in copied
    assert list((repo / "stacks").iterdir()) == [repo / "stacks" / "Pulumi.dev.yaml"]
    summary = run.stderr.strip().splitlines()[-1]
    assert "machine type g2-standard-8" in summary
    assert "spot yes" in summary
    assert "elapsed 0m" in summary and "passed" in summary


def test_a_failed_smoke_test_still_destroys_and_removes_the_stack(repo: Path) -> None:
    run = _run(repo, FAKE_SMOKE_RC="1")
    assert run.code == 1
    assert run.index("vllm-gcp smoke") < run.index("pulumi destroy")
    assert run.index("pulumi destroy") < run.index("pulumi stack rm")
    assert "failed (exit 1)" in run.stderr


def test_a_failed_up_skips_the_smoke_test_and_still_destroys(repo: Path) -> None:
    run = _run(repo, FAKE_PULUMI_FAIL="up")
    assert run.code != 0
    assert not run.called("vllm-gcp")
    assert run.called("pulumi destroy") and run.called("pulumi stack rm")


def test_a_failed_destroy_keeps_the_stack_and_fails(repo: Path) -> None:
    run = _run(repo, FAKE_PULUMI_FAIL="destroy")
    assert run.code == 1
    assert not run.called("pulumi stack rm")
    assert "pulumi destroy --stack e2e-" in run.stderr


def test_dev_secrets_are_copied_with_config_cp(repo: Path) -> None:
    dev = repo / "stacks" / "Pulumi.dev.yaml"
    dev.write_text(dev.read_text() + "  vllm-gcp:huggingFaceToken:\n    secure: v1:abc\n")
    run = _run(repo)
    assert run.code == 0, run.stderr
    assert run.called("pulumi config cp --stack dev --dest e2e-")


@pytest.mark.parametrize("missing", ["GCP_PROJECT", "SSH_CIDR"])
def test_required_variables_are_checked_before_anything_runs(repo: Path, missing: str) -> None:
    run = _run(repo, **{missing: ""})
    assert run.code == 2
    assert missing in run.stderr
    assert run.calls == []


def test_help_names_the_environment_and_runs_nothing(repo: Path) -> None:
    run = _run(repo, "--help", GCP_PROJECT="")
    assert run.code == 0
    assert "usage: tools/e2e.sh" in run.stdout
    assert "GCP_PROJECT" in run.stdout and "SSH_CIDR" in run.stdout
    assert run.calls == []


def test_an_argument_is_refused_before_anything_runs(repo: Path) -> None:
    run = _run(repo, "--stack", "dev")
    assert run.code == 2
    assert "unexpected argument: --stack" in run.stderr
    assert run.calls == []


def test_the_script_is_executable() -> None:
    # bash -n and shellcheck: tests/test_shell.py, with every script file.
    assert os.access(SCRIPT, os.X_OK)
