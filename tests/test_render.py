"""The renderer's sections (components/render.py): a variant kept or left out whole, strictly."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.render import TemplateError, nginx_lines, render

TEMPLATE = """\
before {{ nginx:NAME }};
# vllm-gcp:section extra
extra {{ nginx:EXTRA }};
{{ raw:LINES }}
# vllm-gcp:end extra
after;
"""


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    (tmp_path / "site.conf").write_text(TEMPLATE)
    return tmp_path


def test_a_section_left_out_leaves_no_line_and_needs_no_value(directory: Path) -> None:
    text = render("site.conf", {"NAME": "a"}, directory, sections={"extra": False})
    assert text == 'before "a";\nafter;\n'


def test_a_section_kept_loses_only_its_markers(directory: Path) -> None:
    values = {"NAME": "a", "EXTRA": "b", "LINES": nginx_lines([("allow", "10.0.0.0/8")], "")}
    text = render("site.conf", values, directory, sections={"extra": True})
    assert text == 'before "a";\nextra "b";\nallow "10.0.0.0/8";\nafter;\n'


@pytest.mark.parametrize(
    "sections",
    [{}, {"extra": True, "other": False}, {"other": True}],
    ids=["not-named", "unknown-too", "wrong-name"],
)
def test_every_section_must_be_named_and_no_other(
    directory: Path, sections: dict[str, bool]
) -> None:
    with pytest.raises(TemplateError, match="sections"):
        render("site.conf", {"NAME": "a", "EXTRA": "b", "LINES": ""}, directory, sections)


def test_an_unclosed_section_is_refused(tmp_path: Path) -> None:
    (tmp_path / "broken.conf").write_text("# vllm-gcp:section extra\nline;\n")
    with pytest.raises(TemplateError, match="sections"):
        render("broken.conf", {}, tmp_path, sections={"extra": True})
