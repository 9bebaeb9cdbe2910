"""Checks of the configuration as the engine passes it, before any section is parsed: which
namespaces the program reads, and what no value may hold.

- Namespaces: keys under a namespace the program does not read would be ignored silently
  (`vllm:host:`, a typo for `vllm-gcp:host:`, would plan the default machine); they are refused.
- Control characters: no string of the configuration belongs in a host file with one (CR, NUL,
  a newline, ...), and each would end a line, a word or a string of a unit, a script or the Nginx
  site early. Every string is checked where it sits, by key path, so fields added later are
  covered too; the renderer (components/render.py) refuses them again, but only after resources
  are registered.
"""

from __future__ import annotations

import difflib
import json
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any

from components.config.problems import Problem
from components.config.schema import PROJECT

# The namespaces this program reads: its own, the engine's (pulumi:disable-default-providers,
# pulumi:tags, ...), and those of the providers it uses (their own settings, e.g. gcp:project,
# gcp:credentials, are theirs to check).
PROVIDER_NAMESPACES = ("gcp", "command", "tls", "random")
NAMESPACES = (PROJECT, "pulumi", *PROVIDER_NAMESPACES)
# The provider settings the program itself reads and puts into resource names and host files.
READ_PROVIDER_KEYS = ("gcp:project", "gcp:zone", "gcp:region")
# Multi-line by nature (PEM); components/config/certificates.py parses them.
MULTI_LINE_KEYS = (f"{PROJECT}:tlsCertificate", f"{PROJECT}:tlsPrivateKey")


def check_namespaces(raw: Mapping[str, Any], top_level_keys: tuple[str, ...]) -> list[Problem]:
    """Every key in a namespace the program reads; `top_level_keys` are the project's own."""
    found: list[Problem] = []
    for key in raw:
        namespace, colon, name = key.partition(":")
        if colon and namespace in NAMESPACES:
            continue
        if not colon:
            namespace, name = "", key
        found.append(Problem(key, _unknown_namespace(namespace, name, top_level_keys)))
    return found


def _unknown_namespace(namespace: str, name: str, top_level_keys: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(namespace, NAMESPACES, n=1, cutoff=0.6)
    if name in top_level_keys or not namespace:
        hint = f"; did you mean `{PROJECT}:{name}`?"
    elif close:
        hint = f"; did you mean `{close[0]}:{name}`?"
    else:
        hint = ""
    what = f"namespace {namespace!r}" if namespace else "key without a namespace"
    known = ", ".join(f"{n}:" for n in NAMESPACES)
    return f"unknown {what}, which this program would ignore{hint} (it reads {known})"


def check_control_characters(raw: Mapping[str, Any]) -> list[Problem]:
    """Every string of the project's keys and the provider keys it reads, by key path. The
    message names the character and where it is, never the value (it may be a secret)."""
    found: list[Problem] = []
    for key, value in raw.items():
        if key in MULTI_LINE_KEYS or not (
            key.startswith(f"{PROJECT}:") or key in READ_PROVIDER_KEYS
        ):
            continue
        for path, text in _strings(key, _decoded(value)):
            index, char = next(
                (i, c) for i, c in enumerate(text) if unicodedata.category(c) == "Cc"
            )
            found.append(
                Problem(
                    path,
                    f"holds a control character (U+{ord(char):04X} {_name(char)}) at position "
                    f"{index}: no value may, as each would end a line or a word of the files "
                    "the host gets",
                )
            )
    return found


def screened(
    raw: Mapping[str, Any], top_level_keys: tuple[str, ...], problems: list[Problem]
) -> list[Problem]:
    """The problems of these checks, then `problems`: one problem per key path, so what the
    field's own check says about a value with a control character joins that problem."""
    controls = check_control_characters(raw)
    also: dict[str, list[str]] = {p.key: [] for p in controls}
    rest: list[Problem] = []
    for problem in problems:
        if problem.key in also:
            also[problem.key].append(problem.message)
        else:
            rest.append(problem)
    return [
        *check_namespaces(raw, top_level_keys),
        *(Problem(p.key, "; ".join([p.message, *also[p.key]])) for p in controls),
        *rest,
    ]


def _decoded(value: Any) -> Any:
    """Objects arrive from the engine as JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _strings(path: str, value: Any) -> Iterator[tuple[str, str]]:
    """(key path, string) for each string holding a control character, at any depth."""
    if isinstance(value, str):
        if any(unicodedata.category(c) == "Cc" for c in value):
            yield path, value
    elif isinstance(value, Mapping):
        for name, item in value.items():
            yield from _strings(f"{path}.{name}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(f"{path}[{index}]", item)


def _name(char: str) -> str:
    names = {"\t": "TAB", "\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\x00": "NUL"}
    return names.get(char, "control")
