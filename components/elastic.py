"""What Elastic needs from the endpoint: the connector's values, kibana.yml lines, the connector,
the inference endpoint.

The outputs serve the by-hand path (paste them into Kibana); with `elastic.kibanaUrl` set the
stack also creates the Kibana connector itself through the Connectors API (`KibanaConnector`),
and with `elastic.elasticsearchUrl` an Elasticsearch inference endpoint (`InferenceEndpoint`),
which Kibana 9.4+ lists under Model management. Either, both, or neither.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pulumi

from components.config import ElasticConfig
from components.inference_endpoint import InferenceEndpoint, InferenceEndpointArgs
from components.kibana_connector import KibanaConnector, KibanaConnectorArgs

CONNECTOR_TYPE = ".gen-ai"  # Kibana's OpenAI connector
API_PROVIDER = "Other"  # "Other (OpenAI Compatible Service)" in the Kibana UI
# Kibana waits max(xpack.actions.responseTimeout, the caller's timeout) (actions'
# axios_utils.ts): 120 s for the OpenAI connector's non-streaming calls (DEFAULT_TIMEOUT_MS),
# 180 s for the Security AI Assistant's (kbn-langchain DEFAULT_TIMEOUT), and responseTimeout
# alone (default 60 s) for streamed calls that set none. 300 s lets all of them finish.
RESPONSE_TIMEOUT = "300s"
# Fixed namespace for connector ids, so the same stack always derives the same id.
_CONNECTOR_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:vllm-gcp:kibana-connector")


@dataclass(frozen=True)
class ElasticIntegrationArgs:
    # None: outputs only, no connector resource. The Kibana API key is not passed here: the
    # connector's provider reads vllm-gcp:kibanaApiKey from the stack configuration (see
    # components/kibana_connector.py), so it never becomes a resource input or state.
    elastic: ElasticConfig | None
    stack: str
    endpoint_host: pulumi.Output[str]  # the domain, else the IP
    api_key: pulumi.Output[str]  # secret bearer token
    served_model_name: str
    tool_calling: bool  # the model has a tool-call parser: enableNativeFunctionCalling
    ca_certificate: pulumi.Output[str] | None  # self-signed CA PEM, else None
    endpoint_ready: list[pulumi.Resource]  # the connector is created and verified after these


def default_connector_name(served_model_name: str) -> str:
    return f"vLLM - {served_model_name}"


def connector_config(connector_url: str, model: str, tool_calling: bool) -> dict[str, Any]:
    """The `.gen-ai` config for apiProvider Other (Kibana's stack_connectors openai schema).

    `enableNativeFunctionCalling` exists from Kibana 9.2 (elastic/kibana#232097) and the schema
    refuses unknown keys, so it is set only when on: older Kibanas accept the rest.
    """
    config: dict[str, Any] = {
        "apiProvider": API_PROVIDER,
        "apiUrl": connector_url,
        "defaultModel": model,
    }
    if tool_calling:
        config["enableNativeFunctionCalling"] = True
    return config


def connector_body(
    name: str, connector_url: str, model: str, tool_calling: bool, api_key: str
) -> dict[str, Any]:
    """The body for `POST /api/actions/connector`."""
    return {
        "name": name,
        "connector_type_id": CONNECTOR_TYPE,
        "config": connector_config(connector_url, model, tool_calling),
        "secrets": {"apiKey": api_key},
    }


def kibana_settings(host: str, ca_certificate: str | None, inference_id: str | None = None) -> str:
    """The kibana.yml lines this endpoint needs (no secrets), and, with an inference endpoint and
    a self-signed CA, what each Elasticsearch node needs, as comments: Elasticsearch, not Kibana,
    calls the model then, with its JVM's default trust store (the inference API's HTTP client has
    TLS settings for the elastic service only), which kibana.yml cannot reach."""
    lines: list[str] = []
    if ca_certificate is not None:
        lines += [
            "# Trust the endpoint's self-signed CA for connector requests to it.",
            "xpack.actions.customHostSettings:",
            f"  - url: https://{host}:443",
            "    ssl:",
            "      verificationMode: full",
            "      certificateAuthoritiesData: |",
            *(f"        {line}" for line in ca_certificate.strip().splitlines()),
        ]
    lines += [
        "# Let long non-streaming generations finish (Kibana's default is 60s).",
        f"xpack.actions.responseTimeout: {RESPONSE_TIMEOUT}",
        "# From Elastic's vLLM guide: lets AI Assistant for Security use this connector.",
        "feature_flags.overrides:",
        "  securitySolution.inferenceChatModelDisabled: true",
    ]
    if inference_id is not None and ca_certificate is not None:
        lines += [
            f"# Inference endpoint {inference_id}: Elasticsearch calls the model itself and does",
            "# not read kibana.yml. On every Elasticsearch node (self-managed; Elastic Cloud",
            "# cannot trust a private CA) add the CA to the bundled JDK's trust store, then",
            "# restart the node, and again after each Elasticsearch upgrade (it replaces the JDK):",
            "#   pulumi stack output caCertificate > ca.pem",
            '#   "$ES_HOME/jdk/bin/keytool" -importcert -cacerts -storepass changeit -noprompt \\',
            f"#     -alias {inference_id} -file ca.pem",
        ]
    return "\n".join(lines) + "\n"


def connector_id_for(*identity: str) -> str:
    """A stable id from the stack's identity, shaped as a UUID v4.

    Kibana stores connectors as saved objects with encrypted secrets; before 9.4 it accepts a
    caller's id for those only when it is a UUID (v1 or v4 in older releases). A derived id makes
    create idempotent: a create whose state was lost finds its connector instead of a duplicate.
    """
    derived = uuid.uuid5(_CONNECTOR_ID_NAMESPACE, "\n".join(identity))
    return str(uuid.UUID(bytes=derived.bytes, version=4))


class ElasticIntegration(pulumi.ComponentResource):
    """Outputs for Elastic's OpenAI connector; the connector itself when Kibana is set; an
    inference endpoint when Elasticsearch is set."""

    endpoint: pulumi.Output[str]
    connector_url: pulumi.Output[str]
    connector_body: pulumi.Output[dict[str, Any]]
    kibana_settings: pulumi.Output[str]
    connector_id: pulumi.Output[str] | None
    inference_id: pulumi.Output[str] | None

    def __init__(
        self, name: str, args: ElasticIntegrationArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("vllm-gcp:elastic:ElasticIntegration", name, None, opts)
        elastic = args.elastic
        model = args.served_model_name
        connector_name = (elastic.connector_name if elastic else None) or default_connector_name(
            model
        )
        inference_id = (
            elastic.inference_id_for(args.stack)
            if elastic is not None and elastic.elasticsearch_url is not None
            else None
        )

        self.endpoint = args.endpoint_host.apply(lambda host: f"https://{host}/v1")
        self.connector_url = args.endpoint_host.apply(
            lambda host: f"https://{host}/v1/chat/completions"
        )
        self.connector_body = pulumi.Output.secret(
            pulumi.Output.all(self.connector_url, args.api_key).apply(
                lambda values: connector_body(
                    connector_name, values[0], model, args.tool_calling, values[1]
                )
            )
        )
        ca_certificate: pulumi.Output[str | None] = (
            args.ca_certificate
            if args.ca_certificate is not None
            else pulumi.Output.from_input(None)
        )
        self.kibana_settings = pulumi.Output.all(args.endpoint_host, ca_certificate).apply(
            lambda values: kibana_settings(values[0], values[1], inference_id)
        )

        self.connector_id = None
        if elastic is not None and elastic.kibana_url is not None:
            connector = KibanaConnector(
                f"{name}-kibana-connector",
                KibanaConnectorArgs(
                    kibana_url=elastic.base_url,
                    space=elastic.space,
                    # Not the organization: moving the stack to another backend must not
                    # replace the connector that Kibana's assistants point at.
                    connector_id=connector_id_for(
                        pulumi.get_project(),
                        args.stack,
                        elastic.base_url,
                        elastic.space,
                        name,
                    ),
                    connector_type_id=CONNECTOR_TYPE,
                    name=connector_name,
                    config=self.connector_url.apply(
                        lambda url: connector_config(url, model, args.tool_calling)
                    ),
                    api_key=args.api_key,
                    verify=elastic.verify,
                ),
                pulumi.ResourceOptions(parent=self, depends_on=args.endpoint_ready),
            )
            self.connector_id = connector.connector_id

        self.inference_id = None
        if elastic is not None and elastic.elasticsearch_url is not None and inference_id:
            # The Elasticsearch API key is not passed either: the endpoint's provider reads
            # vllm-gcp:elasticsearchApiKey from the stack configuration (inference_endpoint.py).
            endpoint = InferenceEndpoint(
                f"{name}-inference-endpoint",
                InferenceEndpointArgs(
                    elasticsearch_url=elastic.elasticsearch_base_url,
                    inference_id=inference_id,
                    model_id=model,
                    url=self.connector_url,
                    api_key=args.api_key,
                    verify=elastic.verify,
                ),
                pulumi.ResourceOptions(parent=self, depends_on=args.endpoint_ready),
            )
            self.inference_id = endpoint.inference_id

        self.register_outputs(
            {
                "endpoint": self.endpoint,
                "connectorUrl": self.connector_url,
                "connectorBody": self.connector_body,
                "kibanaSettings": self.kibana_settings,
                "connectorId": self.connector_id,
                "inferenceId": self.inference_id,
            }
        )
