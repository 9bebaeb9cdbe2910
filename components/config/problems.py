"""What validation reports: a problem at a key path, and the error that lists them all."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

import pulumi


@dataclass(frozen=True)
class Problem:
    key: str  # full key path, e.g. vllm-gcp:model.tensorParallelSize
    message: str

    def __str__(self) -> str:
        return f"  - {self.key}: {self.message}"


class ConfigError(pulumi.RunError):
    """Every problem found in the stack configuration, each by its key path.

    A RunError, so the engine prints the message alone, without a Python traceback.
    """

    def __init__(self, problems: list[Problem], hint: str = "") -> None:
        self.problems = problems
        lines = [f"The stack configuration has {len(problems)} problem(s):"]
        lines += [str(p) for p in problems]
        if hint:
            lines += ["", hint]
        super().__init__("\n".join(lines))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest choice, or nothing when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
