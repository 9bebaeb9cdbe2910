"""Renders the files in scripts/ (startup script, Nginx site, systemd unit, remote steps).

Placeholders are `{{ NAME }}`: unlike `$NAME` they clash with neither shell nor Nginx syntax.
Rendering is strict both ways: a placeholder without a value and a value without a placeholder
are errors, so a template and its caller cannot drift apart silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
_PLACEHOLDER = re.compile(r"\{\{ ([A-Z][A-Z0-9_]*) \}\}")


class TemplateError(ValueError):
    pass


def placeholders(name: str) -> set[str]:
    return set(_PLACEHOLDER.findall(read(name)))


def read(name: str) -> str:
    return (SCRIPTS_DIR / name).read_text()


def render(name: str, values: Mapping[str, str]) -> str:
    """The text of scripts/<name> with every placeholder replaced by its value."""
    text = read(name)
    wanted = set(_PLACEHOLDER.findall(text))
    missing = wanted - set(values)
    unused = set(values) - wanted
    if missing or unused:
        raise TemplateError(
            f"{name}: missing values for {sorted(missing)}, no placeholder for {sorted(unused)}"
        )
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)
