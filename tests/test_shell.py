"""Every shell script file in the project parses and passes shellcheck at warning level:
the templates in scripts/ (each placeholder standing for one quoted word, as the renderer
makes it, and the shared host library), the local first-contact script next to the component
that renders it, the tools' scripts, CI's script and the tests' stand-ins. Rendered scripts are
checked by the tests of the component that renders them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness import ROOT, assert_shell_clean

# `{{ shell:NAME }}` renders as one single-quoted word (components/render.py).
SHELL_PLACEHOLDER = re.compile(r"\{\{ shell:[A-Z][A-Z0-9_]* \}\}")


def _is_shell_script(path: Path) -> bool:
    if path.suffix == ".sh":
        return True
    with path.open("rb") as handle:
        return handle.readline().startswith((b"#!/usr/bin/env bash", b"#!/bin/bash"))


SCRIPTS = sorted(
    [
        *ROOT.glob("scripts/**/*.sh"),
        *ROOT.glob("components/**/*.sh"),
        *ROOT.glob("tools/**/*.sh"),
        *(p for p in ROOT.glob("tests/fakebin*/**/*") if p.is_file() and _is_shell_script(p)),
        ROOT / ".ci" / "run",
    ],
)


def test_there_are_scripts_to_check() -> None:
    names = {path.name for path in SCRIPTS}
    assert {"startup.sh", "e2e.sh", "setup-dev.sh", "standin.sh", "docker"} <= names
    assert {"host_lib.sh", "first_contact.sh", "ssh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(p.relative_to(ROOT)) for p in SCRIPTS])
def test_script_parses_and_passes_shellcheck(script: Path) -> None:
    assert_shell_clean(SHELL_PLACEHOLDER.sub("'value'", script.read_text()))
