"""Every shell script in the project parses and passes shellcheck at warning level."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import ROOT

SHELLCHECK = ROOT / "venv" / "bin" / "shellcheck"
SCRIPTS = sorted(
    [*ROOT.glob("scripts/**/*.sh"), *ROOT.glob("tests/**/*.sh"), ROOT / ".ci" / "run"],
)


def test_there_are_scripts_to_check() -> None:
    assert any(path.name == "startup.sh" for path in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(p.relative_to(ROOT)) for p in SCRIPTS])
def test_script_parses_and_passes_shellcheck(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    result = subprocess.run(
        [str(SHELLCHECK), "--severity=warning", "--shell=bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout
