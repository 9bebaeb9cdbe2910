"""Test helpers over the offline engine: the stack files with the user's two values set, and
components built on their own under the engine's mocks."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable, Mapping
from typing import Any

import pulumi
import yaml

from tools.offline import (
    GET_IMAGE,
    MOCK_API_KEY,
    MOCK_HF_TOKEN,
    MOCK_IMAGE_VERSION,
    MOCK_KIBANA_KEY,
    MOCK_PRIVATE_IP,
    MOCK_PUBLIC_IP,
    MOCK_SECRETS,
    MOCK_SSH_PRIVATE_KEY,
    MOCK_TLS_KEY,
    ROOT,
    Plan,
    RecordingMocks,
    Registered,
    WarningCollector,
    install_mocks,
    is_secret_value,
    plain_strings,
    run_program,
    unwrap,
)

__all__ = [
    "GET_IMAGE",
    "MOCK_API_KEY",
    "MOCK_HF_TOKEN",
    "MOCK_IMAGE_VERSION",
    "MOCK_KIBANA_KEY",
    "MOCK_PRIVATE_IP",
    "MOCK_PUBLIC_IP",
    "MOCK_SECRETS",
    "MOCK_SSH_PRIVATE_KEY",
    "MOCK_TLS_KEY",
    "ROOT",
    "SHELLCHECK",
    "USER_VALUES",
    "Plan",
    "RecordingMocks",
    "Registered",
    "assert_shell_clean",
    "build_components",
    "is_secret_value",
    "merged",
    "plain_strings",
    "run_program",
    "stack_config",
    "stack_file",
    "systemd_split",
    "unwrap",
]

SHELLCHECK = ROOT / "venv" / "bin" / "shellcheck"

# The two values every stack file leaves to the user.
USER_VALUES: dict[str, Any] = {
    "gcp:project": "test-project",
    "vllm-gcp:access": {"sshCidrs": ["198.51.100.7/32"]},
}


def assert_shell_clean(script: str, *, dialect: str = "bash") -> None:
    """The script text parses (`<dialect> -n`) and passes shellcheck at warning level."""
    subprocess.run([dialect, "-n"], input=script, text=True, check=True)
    checked = subprocess.run(
        [str(SHELLCHECK), "--severity=warning", f"--shell={dialect}", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout


def stack_file(stack: str) -> dict[str, Any]:
    """The `config:` block of stacks/Pulumi.<stack>.yaml."""
    with (ROOT / "stacks" / f"Pulumi.{stack}.yaml").open() as handle:
        return dict(yaml.safe_load(handle)["config"])


def merged(base: Mapping[str, Any], *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge config objects the way `pulumi config set --path` would."""
    result: dict[str, Any] = json.loads(json.dumps(base))
    for override in overrides:
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


def stack_config(stack: str, *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A stack file with the user's two values set, plus overrides."""
    return merged(stack_file(stack), USER_VALUES, *overrides)


def build_components(
    declare: Callable[[], Mapping[str, object]],
    *,
    stack: str = "dev",
    organization: str | None = None,
    mocks: RecordingMocks | None = None,
) -> Plan:
    """Run `declare` (which creates components and returns the outputs to keep, by name) under
    fresh mocks: the Plan holds what it registered, those outputs resolved (which were secret) and
    the warnings logged."""
    mocks = mocks or RecordingMocks()
    collector = WarningCollector(f"vllm-gcp-build-{id(mocks)}")
    install_mocks(mocks, stack=stack, logger=collector.logger, organization=organization)
    plan = Plan(resources=mocks.resources, calls=mocks.calls, warnings=collector.warnings)

    @pulumi.runtime.test
    def program() -> pulumi.Output[None]:
        return pulumi.Output.from_input(asyncio.ensure_future(plan.resolve_outputs(declare())))

    program()
    mocks.resources[:] = [r for r in mocks.resources if r.type != "pulumi:pulumi:Stack"]
    return plan


def systemd_split(line: str) -> list[str]:
    """systemd's reading of a command line (systemd.service, "COMMAND LINES"): words split on
    blanks, double or single quotes group, C escapes inside quotes, %% and $$ stand for % and $."""
    words: list[str] = []
    index = 0
    escapes = {"n": "\n", "t": "\t", "\\": "\\", '"': '"'}
    while index < len(line):
        if line[index] == " ":
            index += 1
            continue
        word = ""
        quote = ""
        while index < len(line) and (quote or line[index] != " "):
            char = line[index]
            if char in "\"'" and (not quote or char == quote):
                quote = "" if quote else char
            elif char == "\\" and quote:
                index += 1
                word += escapes[line[index]]
            elif char in "%$" and line[index + 1 : index + 2] == char:
                index += 1
                word += char
            else:
                assert char not in "%$", f"unescaped {char} in {line!r}"
                word += char
            index += 1
        words.append(word)
    return words
