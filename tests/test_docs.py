"""The README and docs/: the first screen, links that resolve, the commands they give."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
FIRST_SCREEN_LINES = 40  # what a terminal or a repository page shows before any scrolling

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+)$")


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub makes of a file's headings (outside code blocks)."""
    found: set[str] = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = _HEADING.match(line)
        if heading and not in_code:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def _relative_links(path: Path) -> list[str]:
    return [
        link
        for link in _LINK.findall(path.read_text())
        if not link.startswith(("http://", "https://", "mailto:"))
    ]


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_relative_link_names_a_file_and_heading_that_exist(page: Path) -> None:
    broken = []
    for link in _relative_links(page):
        target_name, _, anchor = link.partition("#")
        target = (page.parent / target_name).resolve() if target_name else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.is_file() and anchor not in _anchors(target):
            broken.append(f"{link}: no such heading")
    assert broken == []


def test_the_first_screen_says_what_it_is_and_gives_the_set_up_and_test_commands() -> None:
    first_screen = "\n".join(README.read_text().splitlines()[:FIRST_SCREEN_LINES])
    assert "OpenAI-compatible LLM endpoint on Google Cloud" in first_screen
    commands = re.findall(r"^(\S.*?)\s+#", first_screen, flags=re.MULTILINE)
    assert commands[:2] == ["bash tools/setup-dev.sh", "venv/bin/pytest"]


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "run venv/bin/pytest\n" in ci
    assert "bash tools/setup-dev.sh" in ci


def test_every_lookup_of_the_deployers_address_asks_for_ipv4() -> None:
    # The SSH firewall rule takes the address as an IPv4 /32; ifconfig.me answers over IPv6
    # where the network has it.
    lookups = [
        line
        for page in [README, *DOCS]
        for line in page.read_text().splitlines()
        if "ifconfig.me" in line
    ]
    assert lookups
    assert [line for line in lookups if "curl -4 " not in line] == []


def test_the_deep_material_lives_in_docs_not_in_the_readme() -> None:
    readme = README.read_text()
    # The KV-cache arithmetic, the advisories' list and the proxy's benchmark table.
    for deep in ("160 KiB of KV cache per token", "CVE-2026-48746", "first streamed event"):
        assert deep not in readme
        assert any(deep in page.read_text() for page in DOCS), deep


def test_the_readme_says_what_pulumi_config_set_does_to_the_tracked_stack_file() -> None:
    readme = README.read_text()
    assert "**`pulumi config set` writes into the tracked stack file.**" in readme
    assert "--copy-config-from dev" in readme
    assert ".git/info/exclude" in readme
