"""How the stack reaches the host over SSH for the remote steps (pulumi_command.remote).

Two facts of pulumi-command 1.2.1 shape this module (read in its source):

- `custom_timeouts` bound only the dialing: a command already running on the host is never
  stopped by the engine (pulumi-go-provider `cancel.go`; `session.Run` ignores the context). So
  each step bounds itself on the host: `step_command` runs its script under GNU `timeout`.
- Through a jump host (`proxy`), `Dial` (provider/pkg/provider/remote/connection.go) forwards one
  TCP connection to the host and retries the SSH handshake on that same connection
  (`dialWithRetry`): once a handshake fails (sshd answers before the guest agent has installed the
  stack's key), every retry reuses the closed connection until the step's timeout. So a first
  contact with the system's OpenSSH client, dialling afresh on every attempt, comes first
  (`first_contact`). Direct dials are fresh on each retry already.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pulumi
from pulumi_command import local, remote

from components import render

# Dial attempts are counted, never unlimited: with no limit a dial that cannot succeed (a wrong
# access.sshCidrs, OS Login enforced, a jump host that refuses the agent's keys) retries until the
# step's custom timeout, and the engine then reports only "context deadline exceeded": the cause
# is dropped (pulumi-command v1.2.1 connection.go dialWithRetry; only a reached limit returns
# "after N failed attempts: <cause>"). Between attempts the SDK's retry waits up to 5 s
# (sdk/go/common/util/retry/until.go DefaultMaxDelay), and a dial gives up after 20 s.
PER_DIAL_TIMEOUT_SECONDS = 20
# The first step meets a VM that is still booting: 60 attempts are 5 to 25 minutes.
FIRST_DIAL_ATTEMPTS = 60
# Later steps meet a host that has answered already: a failure is real, say so in minutes.
DIAL_ATTEMPTS = 10

# The host-side limit of a step is this much under its custom timeout (dialing takes some of it),
# and `timeout` kills the step's script this long after the TERM that lets it say why it stops.
STEP_LIMIT_MARGIN_SECONDS = 60
STEP_KILL_AFTER_SECONDS = 20
STEP_LIMIT_VARIABLE = "VLLM_GCP_STEP_LIMIT_SECONDS"  # read by scripts/host_lib.sh's trap
_STEP_SCRIPT_END = "VLLM_GCP_STEP_SCRIPT_END"

# The first contact through a jump host: the VM boots, the guest agent installs the key.
FIRST_CONTACT_DEADLINE_MINUTES = 15
FIRST_CONTACT_SCRIPT = "first_contact.sh"
COMPONENTS_DIR = Path(__file__).resolve().parent
_HOST = re.compile(r"^[A-Za-z0-9.:-]+$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_JUMP_HOST = re.compile(r"^[a-z_][a-z0-9_-]{0,31}@[A-Za-z0-9.-]+(:\d{1,5})?$")


def connection(
    host: pulumi.Input[str],
    user: str,
    private_key: pulumi.Input[str],
    jump_host: str | None = None,
    dial_attempts: int = DIAL_ATTEMPTS,
) -> remote.ConnectionArgs:
    """SSH connection to the GPU host with the stack's key, through a jump host where given.

    The jump host (`user@host[:port]`) authenticates with the operator's SSH agent
    (SSH_AUTH_SOCK), never with a key stored in the stack.
    """
    proxy = None
    if jump_host is not None:
        jump_user, _, address = jump_host.partition("@")
        jump_address, _, port = address.partition(":")
        proxy = remote.ProxyConnectionArgs(
            host=jump_address,
            user=jump_user,
            port=float(port) if port else 22,
            dial_error_limit=dial_attempts,
            per_dial_timeout=PER_DIAL_TIMEOUT_SECONDS,
        )
    return remote.ConnectionArgs(
        host=host,
        user=user,
        private_key=private_key,
        dial_error_limit=dial_attempts,
        per_dial_timeout=PER_DIAL_TIMEOUT_SECONDS,
        proxy=proxy,
    )


def step_limit_seconds(timeout_minutes: int) -> int:
    """The host-side limit of a step whose custom timeout is `timeout_minutes`."""
    return timeout_minutes * 60 - STEP_LIMIT_MARGIN_SECONDS


def step_command(script: str, limit_seconds: int, *, as_root: bool = False) -> str:
    """The command line that runs `script` on the host under GNU `timeout`, as root through
    `sudo -n` where asked (timeout inside sudo, so it may signal the root processes).

    The script travels verbatim in a quoted here-document (no expansion, no requoting: the bytes
    the plan shows), and the login shell runs it only if that here-document was read in full.
    Its stdin is left to the script. At the limit `timeout` sends TERM, which the scripts' trap
    (scripts/host_lib.sh) turns into "timed out after N s (this step's time limit): <what it was
    doing>", and KILL STEP_KILL_AFTER_SECONDS later.
    """
    if _STEP_SCRIPT_END in script.splitlines():
        raise ValueError(f"a step's script may not hold the line {_STEP_SCRIPT_END}")
    if limit_seconds <= 0:
        raise ValueError(f"a step's limit must be positive, not {limit_seconds}")
    runner = "sudo -n " if as_root else ""
    wrapper = (
        f"{runner}timeout --kill-after={STEP_KILL_AFTER_SECONDS} {limit_seconds} "
        f'env {STEP_LIMIT_VARIABLE}={limit_seconds} bash -c "$VLLM_GCP_STEP_SCRIPT"'
    )
    return (
        "# vllm-gcp remote step: the script below, run under GNU timeout (last line).\n"
        f"VLLM_GCP_STEP_SCRIPT=$(cat <<'{_STEP_SCRIPT_END}'\n"
        f"{script.rstrip(chr(10))}\n"
        f"{_STEP_SCRIPT_END}\n"
        f") && exec {wrapper}\n"
    )


def host_step(  # noqa: PLR0913 (keyword-only: one per convention a step can vary)
    name: str,
    *,
    connection: remote.ConnectionArgs,
    script: pulumi.Input[str],
    instance_id: pulumi.Input[str],
    parent: pulumi.Resource,
    timeout_minutes: int,
    as_root: bool = False,
    stdin: pulumi.Input[str] | None = None,
    extra_triggers: Sequence[pulumi.Input[Any]] = (),
    depends_on: Sequence[pulumi.Resource] = (),
    log_output: bool = True,
    aliases: Sequence[pulumi.Alias] = (),
) -> remote.Command:
    """One remote step on the host, with the conventions every step shares.

    - The script runs under a host-side limit a minute under `timeout_minutes` (`step_command`),
      as the SSH user, or as root through `sudo -n` with `as_root`.
    - `triggers` are replace-on-change: a change of any of them replaces the command, which runs
      `create` again (no delete command runs: there is none). The host's `instance_id` comes first,
      so a replaced VM re-runs the step; `extra_triggers` follow it.
    - `update` is the create script: a change of any other input (the script, stdin) re-runs the
      step in place (each script is idempotent).
    - The previous output is never sent as env: Ubuntu's sshd refuses the PULUMI_COMMAND_* env
      vars (the provider warns on each update), and it has no business on the host.
    - `custom_timeouts` bound create and update, but only while dialing; the host-side limit is
      what ends a command already running.
    - No delete command: the VM, and everything the step did on it, goes with the stack.

    `log_output=False` keeps the step's output out of Pulumi's logs (steps handling secrets);
    `aliases` name where the step lived before (a step that moved to another component).
    """
    timeout = f"{timeout_minutes}m"
    limit = step_limit_seconds(timeout_minutes)
    command: pulumi.Input[str] = (
        step_command(script, limit, as_root=as_root)
        if isinstance(script, str)
        else pulumi.Output.from_input(script).apply(
            lambda text: step_command(text, limit, as_root=as_root)
        )
    )
    return remote.Command(
        name,
        connection=connection,
        add_previous_output_in_env=False,
        create=command,
        update=command,
        stdin=stdin,
        logging=None if log_output else remote.Logging.NONE,
        triggers=[instance_id, *extra_triggers],
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=list(depends_on) or None,
            aliases=list(aliases) or None,
            custom_timeouts=pulumi.CustomTimeouts(create=timeout, update=timeout),
        ),
    )


def first_contact_script(
    host: str,
    user: str,
    jump_host: str,
    port: int = 22,
    deadline_seconds: int = FIRST_CONTACT_DEADLINE_MINUTES * 60,
) -> str:
    """components/first_contact.sh for this host, SSH user and jump host (`user@host[:port]`)."""
    for value, pattern, what in (
        (host, _HOST, "host address"),
        (user, _USER, "SSH user"),
        (jump_host, _JUMP_HOST, "jump host (user@host[:port])"),
    ):
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not a {what} the first contact can take")
    return render.render(
        FIRST_CONTACT_SCRIPT,
        {
            "HOST": host,
            "USER": user,
            "PORT": str(port),
            "JUMP_HOST": jump_host,
            "DEADLINE_SECONDS": str(deadline_seconds),
        },
        directory=COMPONENTS_DIR,
    )


def _jump_host(proxy: remote.ProxyConnectionArgs) -> pulumi.Output[str]:
    return pulumi.Output.all(proxy.user, proxy.host, proxy.port).apply(
        lambda v: f"{v[0]}@{v[1]}:{int(v[2] or 22)}"
    )


def first_contact(
    name: str,
    *,
    connection: remote.ConnectionArgs,
    instance_id: pulumi.Input[str],
    parent: pulumi.Resource,
) -> local.Command | None:
    """Where the connection goes through a jump host: a local command that dials the host with the
    system's OpenSSH client, afresh on each attempt, until it accepts the stack's key (see the
    module's docstring). The first remote step depends on it. None without a jump host.

    The stack's private key is the command's stdin (secret), never on its command line; the
    instance id in `triggers` makes a replaced VM run it again.
    """
    proxy = connection.proxy
    if proxy is None:
        return None
    if not isinstance(proxy, remote.ProxyConnectionArgs):
        raise TypeError("first_contact needs the proxy as remote.ProxyConnectionArgs")
    if connection.private_key is None or connection.user is None:
        raise ValueError("first_contact needs the connection's user and private key")
    script = pulumi.Output.all(
        connection.host, connection.user, _jump_host(proxy), connection.port
    ).apply(lambda v: first_contact_script(v[0], v[1], v[2], int(v[3] or 22)))
    return local.Command(
        name,
        create=script,
        update=script,
        interpreter=["bash", "-c"],
        stdin=pulumi.Output.secret(connection.private_key),
        add_previous_output_in_env=False,
        triggers=[instance_id],
        opts=pulumi.ResourceOptions(parent=parent),
    )
