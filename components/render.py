"""The one renderer of what the host receives: templates in scripts/, quoting per context.

A placeholder names its context and the value's name, `{{ shell:IMAGE }}`, and the renderer
quotes the value for that context; templates never add quotes of their own around one:

- `shell`: one shell word, always single-quoted (a `'` inside becomes `'\\''`); a list of values
  becomes that many words.
- `systemd`: one argument of a unit's command line or setting, as systemd reads it back
  (systemd.service, "COMMAND LINES"): `%` and `$` doubled, quoted with C escapes when it holds
  anything but a plain word; a list becomes that many arguments.
- `nginx`: one Nginx token, always double-quoted. Nginx expands `$name` even inside quotes, so a
  value holding `$`, `"` or `\\` is refused rather than escaped.
- `raw`: a `Fragment`, which only this module makes (lines composed of values it quoted itself).

No value in any context may hold a control character (CR, NUL, a newline, ...): none belongs in a
host file, and each would end a line, a word or a string early. Rendering is strict both ways: a
placeholder without a value and a value without a placeholder are errors, so a template and its
caller cannot drift apart.

Includes: a line `# vllm-gcp:include <file>` is replaced by that file of scripts/ (the shell
library host_lib.sh) before the placeholders are filled, so each rendered script is complete in
itself and the bytes a step runs are the bytes the plan shows.

Sections: the lines between `# vllm-gcp:section <name>` and `# vllm-gcp:end <name>` are kept
(without those two lines) or left out whole, as the caller says for each section name the
template has (a name may mark several places), so a variant (the Nginx site behind a fleet's
load balancer) lives in the one template and the other variant's bytes do not change.
Placeholders in a section left out need no value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
Context = Literal["shell", "systemd", "nginx", "raw"]
CONTEXTS: tuple[Context, ...] = ("shell", "systemd", "nginx", "raw")

_PLACEHOLDER = re.compile(r"\{\{ ([a-z]+):([A-Z][A-Z0-9_]*) \}\}")
_ANY_PLACEHOLDER = re.compile(r"\{\{.*?\}\}")
_INCLUDE = re.compile(r"^# vllm-gcp:include ([A-Za-z0-9_.-]+)$", re.MULTILINE)
_SECTION = re.compile(
    r"^# vllm-gcp:section ([a-z_]+)\n(.*?)^# vllm-gcp:end \1\n", re.MULTILINE | re.DOTALL
)
_SECTION_MARKER = re.compile(r"^# vllm-gcp:(section|end)\b.*$", re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SYSTEMD_BARE = re.compile(r"[A-Za-z0-9_./:=,@+-]+")
_NGINX_REFUSED = re.compile(r'[$"\\]')


class TemplateError(ValueError):
    pass


class Fragment(str):
    """Text this module composed from values it quoted itself: the only thing `raw` takes."""

    __slots__ = ()


Value = str | Sequence[str] | Fragment


def _plain(value: str, context: str) -> str:
    if _CONTROL.search(value):
        raise TemplateError(f"{value!r} holds a control character, which no {context} value may")
    return value


def shell_word(value: str) -> str:
    """One shell word that the shell reads back as `value`."""
    return "'" + _plain(value, "shell").replace("'", "'\\''") + "'"


def systemd_argument(value: str) -> str:
    """One argument as systemd's command-line parser reads it back."""
    escaped = _plain(value, "systemd").replace("%", "%%").replace("$", "$$")
    if _SYSTEMD_BARE.fullmatch(value):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def nginx_string(value: str) -> str:
    """One double-quoted Nginx token."""
    if _NGINX_REFUSED.search(_plain(value, "nginx")):
        raise TemplateError(
            f"{value!r} cannot be an Nginx string: Nginx expands $ even inside quotes, "
            'and " and \\ would end or escape it'
        )
    return f'"{value}"'


_QUOTERS = {"shell": shell_word, "systemd": systemd_argument, "nginx": nginx_string}


def _quoted(context: str, name: str, value: Value) -> str:
    if context == "raw":
        if not isinstance(value, Fragment):
            raise TemplateError(f"raw:{name} takes a Fragment made by components/render.py")
        return value
    if isinstance(value, Fragment):
        raise TemplateError(f"{context}:{name} takes a value to quote, not a Fragment")
    quote = _QUOTERS[context]
    if isinstance(value, str):
        return quote(value)
    return " ".join(quote(item) for item in value)


# Fragments: lines composed of quoted values -----------------------------------------------------


def systemd_command_line(argv: Sequence[str], own_line: Sequence[str] = ()) -> Fragment:
    """argv as one command-line value of a unit: an option and its values per continued line,
    and a new line at each of `own_line` (the image, say)."""
    lines: list[list[str]] = []
    for argument in argv:
        if not lines or argument.startswith("-") or argument in own_line:
            lines.append([])
        lines[-1].append(systemd_argument(argument))
    return Fragment(" \\\n    ".join(" ".join(line) for line in lines))


def systemd_lines(directives: Sequence[tuple[str, Sequence[str]]], prefix: str = "") -> Fragment:
    """`Directive=arg ...` lines, each ending in a newline; `prefix` goes before the first
    argument (systemd's `-`: a missing file or a failing command is tolerated)."""
    return Fragment(
        "".join(
            f"{directive}={prefix}{' '.join(systemd_argument(a) for a in arguments)}\n"
            for directive, arguments in directives
        )
    )


def nginx_lines(directives: Sequence[tuple[str, str]], indent: str = "    ") -> Fragment:
    """`directive "value";` lines without a final newline (a block's body)."""
    return Fragment(
        "\n".join(f"{indent}{directive} {nginx_string(value)};" for directive, value in directives)
    )


def nginx_comment(text: str, indent: str = "    ") -> Fragment:
    """A comment line: text with no quoting to do, as long as it stays on its line."""
    return Fragment(f"{indent}# {_plain(text, 'nginx comment')}")


def nginx_exact_regex(value: str) -> Fragment:
    """One double-quoted Nginx regex token (a `map` key) that matches `value` and nothing else,
    letter case included: `~` (PCRE, case-sensitive; a string key would match any case), the
    value quoted literally (`\\Q...\\E`), `\\z` its very end (`$` also matches before a final
    newline). Nginx keeps `\\Q`, `\\E` and `\\z` inside a quoted token as they are."""
    nginx_string(value)  # refuses $, " and \ (so no \E ends the quoting early) and controls
    return Fragment(f'"~^\\Q{value}\\E\\z"')


# Templates ---------------------------------------------------------------------------------------


def _included(name: str) -> str:
    text = (SCRIPTS_DIR / name).read_text()
    if _INCLUDE.search(text) or _ANY_PLACEHOLDER.search(text):
        raise TemplateError(f"{name}: an included file holds no includes and no placeholders")
    return f"{text.rstrip()}\n# --- end of {name}"


def read(name: str, directory: Path = SCRIPTS_DIR) -> str:
    """The text of <directory>/<name> with its includes in place."""
    text = (directory / name).read_text()
    return _INCLUDE.sub(lambda match: _included(match.group(1)), text)


def _select_sections(name: str, text: str, sections: Mapping[str, bool]) -> str:
    found: list[str] = []

    def keep_or_drop(match: re.Match[str]) -> str:
        found.append(match.group(1))
        return match.group(2) if sections.get(match.group(1), False) else ""

    selected = _SECTION.sub(keep_or_drop, text)
    stray = _SECTION_MARKER.findall(selected)
    if stray or set(found) != set(sections):
        raise TemplateError(
            f"{name}: sections {sorted(set(found))} (between matching markers, none nested), "
            f"asked for {sorted(sections)}"
        )
    return selected


def render(
    name: str,
    values: Mapping[str, Value],
    directory: Path = SCRIPTS_DIR,
    sections: Mapping[str, bool] | None = None,
) -> str:
    """<directory>/<name> (scripts/ by default) with its includes in place, its sections kept or
    left out as `sections` says, and every placeholder replaced by its value, quoted for the
    placeholder's context."""
    text = _select_sections(name, read(name, directory), sections or {})
    found = _PLACEHOLDER.findall(text)
    malformed = [p for p in _ANY_PLACEHOLDER.findall(text) if not _PLACEHOLDER.fullmatch(p)]
    unknown = sorted({context for context, _ in found} - set(CONTEXTS))
    if malformed or unknown:
        raise TemplateError(
            f"{name}: placeholders must be {{{{ context:NAME }}}} with a context "
            f"of {', '.join(CONTEXTS)}; found {malformed or unknown}"
        )
    wanted = {key for _, key in found}
    missing, unused = wanted - set(values), set(values) - wanted
    if missing or unused:
        raise TemplateError(
            f"{name}: missing values for {sorted(missing)}, no placeholder for {sorted(unused)}"
        )
    return _PLACEHOLDER.sub(
        lambda match: _quoted(match.group(1), match.group(2), values[match.group(2)]), text
    )
