"""The `vllm-gcp` command as installed in ./venv (pyproject.toml's [project.scripts], installed by
tools/setup-dev.sh): its commands, their own help and options, and their exit codes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness import ROOT
from tools import cli
from tools.standins.nginx import free_port

VLLM_GCP = ROOT / "venv" / "bin" / "vllm-gcp"
COMMANDS = ["plan", "smoke", "bench", "e2e", "check-vllm", "image"]


def _vllm_gcp(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs the installed command from `cwd` (not the repository: it must not depend on it)."""
    assert VLLM_GCP.is_file(), f"{VLLM_GCP} is missing: run bash tools/setup-dev.sh"
    return subprocess.run(
        [str(VLLM_GCP), *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _listed_commands(help_text: str) -> list[str]:
    lines = help_text.splitlines()
    start = lines.index("commands:") + 1
    listed: list[str] = []
    for line in lines[start:]:
        if not line.strip():
            break
        listed.append(line.split()[0])
    return listed


def test_help_lists_every_command_one_line_each(tmp_path: Path) -> None:
    result = _vllm_gcp("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: vllm-gcp ")
    assert _listed_commands(result.stdout) == COMMANDS


@pytest.mark.parametrize("argv", [["deploy"], [], ["--stack", "dev"]])
def test_a_missing_or_unknown_command_exits_2_with_the_usage(
    argv: list[str], tmp_path: Path
) -> None:
    result = _vllm_gcp(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: vllm-gcp ")
    assert "plan" in result.stderr and "e2e" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("plan", ["stack", "--out", "--set", "--against"]),
        ("smoke", ["--stack", "--endpoint", "--api-key", "--ca-cert", "--read-timeout"]),
        ("bench", ["--stack", "--endpoint", "--concurrency", "--duration", "--json"]),
        ("check-vllm", ["STACK", "--set", "--release", "--print", "VLLM_GCP_CACHE"]),
        ("image", ["build"]),
    ],
)
def test_each_command_shows_its_own_help(
    command: str, options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process: the installed command's dispatch is the subprocess tests' business.
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: vllm-gcp {command} ")
    for option in options:
        assert option in shown, f"{option} missing from {command}'s help"


def test_e2e_shows_the_scripts_own_help(tmp_path: Path) -> None:
    result = _vllm_gcp("e2e", "--help", cwd=tmp_path)  # the command replaces its process
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: vllm-gcp e2e ")
    for option in ("GCP_PROJECT", "SSH_CIDR", "VLLM_GCP"):
        assert option in result.stdout, f"{option} missing from e2e's help"


def test_a_failed_smoke_test_exits_1(tmp_path: Path) -> None:
    endpoint = f"https://127.0.0.1:{free_port()}/v1"
    result = _vllm_gcp(
        "smoke", "--endpoint", endpoint, "--api-key", "k", "--model", "m", "--timeout", "5",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "FAIL  TLS handshake and trust" in result.stdout
    assert "connection refused" in result.stdout


def test_e2e_runs_the_script_and_passes_its_exit_code(tmp_path: Path) -> None:
    result = _vllm_gcp("e2e", cwd=tmp_path, GCP_PROJECT="", SSH_CIDR="")
    assert result.returncode == 2
    assert "set GCP_PROJECT" in result.stderr
