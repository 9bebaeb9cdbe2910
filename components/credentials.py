"""The endpoint's bearer token: made by the stack, kept secret, shared by whatever serves it.

The single VM's vLLM and Nginx (components/vllm_server.py, tls_proxy.py) and a fleet's replicas
(components/fleet.py) check it; the Elastic integration hands it to Kibana or Elasticsearch.
"""

from __future__ import annotations

import pulumi
import pulumi_random as random

from components.host_bundle import secrets_env

# The key was the vLLM server's before this component existed: the alias keeps it, and with it
# every client's configuration.
FORMER_PARENT_TYPE = "vllm-gcp:vllm_server:VllmServer"
API_KEY_LENGTH = 48


class ApiKey(pulumi.ComponentResource):
    """The bearer token clients send (`Authorization: Bearer <apiKey>`)."""

    value: pulumi.Output[str]  # secret

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("vllm-gcp:credentials:ApiKey", name, None, opts)
        # Letters and digits only: the key travels in an env file and an HTTP header unquoted.
        password = random.RandomPassword(
            f"{name}-api-key",
            length=API_KEY_LENGTH,
            special=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                aliases=[pulumi.Alias(parent=pulumi.create_urn(name, FORMER_PARENT_TYPE))],
            ),
        )
        # RandomPassword marks its result secret; stating it keeps it so under any provider.
        self.value = pulumi.Output.secret(password.result)
        self.register_outputs({"value": self.value})


def secrets_env_output(
    api_key: pulumi.Output[str], hugging_face_token: pulumi.Output[str] | None
) -> pulumi.Output[str]:
    """The host's env file (host_bundle.secrets_env) of the secret values, itself secret."""
    content = (
        pulumi.Output.all(api_key, hugging_face_token).apply(lambda v: secrets_env(v[0], v[1]))
        if hugging_face_token is not None
        else api_key.apply(lambda key: secrets_env(key, None))
    )
    return pulumi.Output.secret(content)
