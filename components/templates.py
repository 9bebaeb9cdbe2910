"""Renders the files in scripts/ (startup script, Nginx site, systemd unit, remote steps).

Placeholders are `{{ NAME }}`: unlike `$NAME` they clash with neither shell nor Nginx syntax.
Rendering is strict both ways: a placeholder without a value and a value without a placeholder
are errors, so a template and its caller cannot drift apart silently.

Includes: a line `# vllm-gcp:include <file>` is replaced by that file of scripts/ (the shell
library scripts/host_lib.sh), before the placeholders are filled. Each rendered script is then
complete in itself: the host needs nothing installed beforehand, and the bytes a step runs are
the bytes the plan shows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
_PLACEHOLDER = re.compile(r"\{\{ ([A-Z][A-Z0-9_]*) \}\}")
_INCLUDE = re.compile(r"^# vllm-gcp:include ([A-Za-z0-9_.-]+)$", re.MULTILINE)


class TemplateError(ValueError):
    pass


def placeholders(name: str, directory: Path = SCRIPTS_DIR) -> set[str]:
    return set(_PLACEHOLDER.findall(read(name, directory)))


def _included(name: str) -> str:
    text = (SCRIPTS_DIR / name).read_text()
    if _INCLUDE.search(text) or _PLACEHOLDER.search(text):
        raise TemplateError(f"{name}: an included file holds no includes and no placeholders")
    return f"{text.rstrip()}\n# --- end of {name}"


def read(name: str, directory: Path = SCRIPTS_DIR) -> str:
    """The text of <directory>/<name> with its includes in place."""
    text = (directory / name).read_text()
    return _INCLUDE.sub(lambda match: _included(match.group(1)), text)


def render(name: str, values: Mapping[str, str], directory: Path = SCRIPTS_DIR) -> str:
    """The text of <directory>/<name> (scripts/ by default) with every include in place and every
    placeholder replaced by its value."""
    text = read(name, directory)
    wanted = set(_PLACEHOLDER.findall(text))
    missing = wanted - set(values)
    unused = set(values) - wanted
    if missing or unused:
        raise TemplateError(
            f"{name}: missing values for {sorted(missing)}, no placeholder for {sorted(unused)}"
        )
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)
