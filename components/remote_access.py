"""How the stack reaches the host over SSH for the remote steps (pulumi_command.remote)."""

from __future__ import annotations

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
