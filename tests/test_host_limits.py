"""Every remote step runs under a host-side time limit (remote_access.step_command), and a stack
reached through a jump host makes its first contact with the system's SSH client first.

The stacks are planned by the real program under the engine's mocks (tools/offline.py); the
mock monitor is watched for the dependencies each registration declares."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.host_bundle import run_script
from components.remote_access import step_command
from tests.harness import (
    MOCK_PRIVATE_IP,
    MOCK_SSH_PRIVATE_KEY,
    Plan,
    assert_shell_clean,
    is_secret_value,
    plain_strings,
    run_program,
    stack_config,
)
from tests.test_program import PRIVATE

REMOTE_COMMAND = "command:remote:Command"
LOCAL_COMMAND = "command:local:Command"
FAKEBIN = Path(__file__).resolve().parent / "fakebin_vllm"
REGISTRY = "us-central1-docker.pkg.dev"
LETSENCRYPT = {
    "vllm-gcp:tls": {"mode": "letsencrypt", "domain": "llm.example.com", "email": "ops@example.com"}
}
_WRAPPER = re.compile(
    r"^\) && exec (?P<root>sudo -n )?timeout --kill-after=(?P<kill>\d+) (?P<limit>\d+) "
    r'env VLLM_GCP_STEP_LIMIT_SECONDS=(?P<told>\d+) bash -c "\$VLLM_GCP_STEP_SCRIPT"$'
)

# Each step's limit on the host: a minute under its custom timeout (as root: through sudo).
DEFAULT_LIMITS = {
    "vllm-host-ready": ("user", 29 * 60),
    "vllm-secrets": ("user", 4 * 60),
    "vllm-run": ("user", 79 * 60),
    "vllm-serving": ("user", 64 * 60),
    "vllm-nginx-site": ("root", 9 * 60),
}
LETSENCRYPT_LIMITS = {**DEFAULT_LIMITS, "vllm-letsencrypt": ("root", 19 * 60)}


def wrapped(command: str) -> tuple[str, int, str]:
    """(who runs it, its limit, the script) of a step's command line."""
    lines = command.rstrip("\n").split("\n")
    assert lines[1] == "VLLM_GCP_STEP_SCRIPT=$(cat <<'VLLM_GCP_STEP_SCRIPT_END'"
    assert lines[-2] == "VLLM_GCP_STEP_SCRIPT_END"
    match = _WRAPPER.match(lines[-1])
    assert match is not None, lines[-1]
    assert match["limit"] == match["told"]  # the trap's message names the limit that hit
    assert int(match["kill"]) == 20
    return ("root" if match["root"] else "user", int(match["limit"]), "\n".join(lines[2:-2]))


def step_limits(plan: Plan) -> dict[str, tuple[str, int]]:
    limits: dict[str, tuple[str, int]] = {}
    for step in plan.of_type(REMOTE_COMMAND):
        create, update = step.plain["create"], step.plain["update"]
        assert create == update, step.name
        who, limit, script = wrapped(create)
        assert script.startswith("#!/usr/bin/env bash\n"), step.name
        limits[step.name] = (who, limit)
    return limits


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({}, DEFAULT_LIMITS), (LETSENCRYPT, LETSENCRYPT_LIMITS)],
    ids=["default", "letsencrypt"],
)
def test_every_remote_step_runs_under_its_limit(
    overrides: dict[str, Any], expected: dict[str, tuple[str, int]]
) -> None:
    plan = run_program(stack_config("prod", overrides), stack="prod")
    assert step_limits(plan) == expected


def test_the_wrapper_runs_the_script_verbatim_with_its_stdin(tmp_path: Path) -> None:
    script = (
        "#!/usr/bin/env bash\nset -eu\n"
        "printf '%s|' \"it's\" '$HOME' '`true`' \"$VLLM_GCP_STEP_LIMIT_SECONDS\"\ncat\n"
    )
    env = {"PATH": f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}", "FAKE_STATE": str(tmp_path)}
    for as_root in (False, True):
        result = subprocess.run(
            ["bash", "-c", step_command(script, 7, as_root=as_root)],
            input="from stdin\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "it's|$HOME|`true`|7|from stdin\n"
    (sudo,) = (tmp_path / "calls").read_text().splitlines()[:1]
    assert sudo.startswith("sudo -n timeout --kill-after=20 7 env VLLM_GCP_STEP_LIMIT_SECONDS=7 ")


@pytest.mark.parametrize("as_root", [False, True])
def test_the_wrapped_command_passes_shellcheck_in_any_login_shell(as_root: bool) -> None:
    script = run_script("vllm/vllm-openai:v0.32.0", REGISTRY)
    command = step_command(script, 60, as_root=as_root)
    assert_shell_clean(command)
    assert_shell_clean(command, dialect="sh")


def test_the_wrapper_refuses_a_script_that_would_end_its_here_document() -> None:
    with pytest.raises(ValueError, match="VLLM_GCP_STEP_SCRIPT_END"):
        step_command("echo one\nVLLM_GCP_STEP_SCRIPT_END\necho two\n", 60)


# ------------------------------------------------------------------------------------------------
# The first contact through a jump host


def plan_recording_dependencies(
    *overrides: dict[str, Any],
) -> tuple[Plan, dict[str, tuple[str, ...]]]:
    """The prod stack planned with these overrides, and the URNs each resource depends on (as
    its registration declared them to the engine)."""
    plan = run_program(stack_config("prod", *overrides), stack="prod")
    return plan, {r.name: r.options.dependencies for r in plan.resources}


def test_a_jump_host_gets_a_first_contact_before_the_first_remote_step() -> None:
    plan, dependencies = plan_recording_dependencies(PRIVATE)
    (contact,) = plan.of_type(LOCAL_COMMAND)
    assert contact.name == "vllm-first-contact"
    assert any(urn.endswith("::vllm-first-contact") for urn in dependencies["vllm-host-ready"])
    inputs = contact.inputs
    # Nothing secret on its command line; the key is its stdin, a secret.
    assert not is_secret_value(inputs["create"])
    assert inputs["create"] == inputs["update"]
    assert inputs["interpreter"] == ["bash", "-c"]
    assert "environment" not in inputs
    assert is_secret_value(inputs["stdin"])
    assert contact.plain["stdin"] == MOCK_SSH_PRIVATE_KEY
    assert not any(MOCK_SSH_PRIVATE_KEY.strip() in text for text in plain_strings(inputs))
    script = inputs["create"]
    assert f"readonly TARGET_HOST='{MOCK_PRIVATE_IP}'" in script
    assert "readonly TARGET_USER='vllm'" in script
    assert "readonly JUMP_HOST='ops@10.0.0.5:22'" in script
    # A replaced VM makes first contact again.
    assert contact.plain["triggers"] == ["1234567890"]
    assert inputs["addPreviousOutputInEnv"] is False
    # The remote steps keep their limits.
    assert step_limits(plan) == DEFAULT_LIMITS


def test_without_a_jump_host_there_is_no_first_contact() -> None:
    plan, dependencies = plan_recording_dependencies()
    assert plan.of_type(LOCAL_COMMAND) == []
    assert not any("first-contact" in urn for urn in dependencies["vllm-host-ready"])
