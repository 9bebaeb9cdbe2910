"""How the stack reaches the host over SSH for the remote steps (pulumi_command.remote)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
from pulumi_command import remote

# A first boot of a GPU VM (image, drivers, startup script) takes minutes: dial without a
# count limit, each attempt short, and let each step's custom timeout bound the wait.
UNLIMITED_DIAL_ATTEMPTS = -1
PER_DIAL_TIMEOUT_SECONDS = 20


def connection(
    host: pulumi.Input[str],
    user: str,
    private_key: pulumi.Input[str],
    jump_host: str | None = None,
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
            dial_error_limit=UNLIMITED_DIAL_ATTEMPTS,
            per_dial_timeout=PER_DIAL_TIMEOUT_SECONDS,
        )
    return remote.ConnectionArgs(
        host=host,
        user=user,
        private_key=private_key,
        dial_error_limit=UNLIMITED_DIAL_ATTEMPTS,
        per_dial_timeout=PER_DIAL_TIMEOUT_SECONDS,
        proxy=proxy,
    )


def host_step(
    name: str,
    *,
    connection: remote.ConnectionArgs,
    script: pulumi.Input[str],
    instance_id: pulumi.Input[str],
    parent: pulumi.Resource,
    timeout_minutes: int,
    stdin: pulumi.Input[str] | None = None,
    extra_triggers: Sequence[pulumi.Input[Any]] = (),
    depends_on: Sequence[pulumi.Resource] = (),
    log_output: bool = True,
) -> remote.Command:
    """One remote step on the host, with the conventions every step shares.

    - `update` is the create script: a change re-runs the step in place rather than deleting
      and re-creating it (each script is idempotent).
    - The host's `instance_id` comes first in `triggers`, so a replaced VM re-runs the step;
      `extra_triggers` follow it.
    - The previous output is never sent as env: Ubuntu's sshd refuses the PULUMI_COMMAND_* env
      vars (the provider warns on each update), and it has no business on the host.
    - `custom_timeouts` bound create and update, since the connection dials without a limit.
    - No delete command: the VM, and everything the step did on it, goes with the stack.

    `log_output=False` keeps the step's output out of Pulumi's logs (steps handling secrets).
    """
    timeout = f"{timeout_minutes}m"
    return remote.Command(
        name,
        connection=connection,
        add_previous_output_in_env=False,
        create=script,
        update=script,
        stdin=stdin,
        logging=None if log_output else remote.Logging.NONE,
        triggers=[instance_id, *extra_triggers],
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=list(depends_on) or None,
            custom_timeouts=pulumi.CustomTimeouts(create=timeout, update=timeout),
        ),
    )
