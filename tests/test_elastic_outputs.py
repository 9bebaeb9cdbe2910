"""ElasticIntegration under Pulumi mocks: the outputs Elastic needs, secret where they must be."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_random
import yaml

from components.config import ElasticConfig
from components.elastic import (
    ElasticIntegration,
    ElasticIntegrationArgs,
    connector_id_for,
    kibana_settings,
)
from tests.harness import (
    MOCK_API_KEY,
    MOCK_KIBANA_KEY,
    MOCK_PUBLIC_IP,
    Plan,
    build_components,
    is_secret_value,
    plain_strings,
)

MODEL = "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIBmock\nLINE2mock\n-----END CERTIFICATE-----\n"
DYNAMIC = "pulumi-python:dynamic:Resource"
SECRETS = (MOCK_API_KEY, MOCK_KIBANA_KEY)


def build(
    *,
    host: str = MOCK_PUBLIC_IP,
    ca_certificate: str | None = CA_PEM,
    elastic: ElasticConfig | None = None,
    tool_calling: bool = True,
) -> Plan:
    def declare() -> dict[str, object]:
        ready = pulumi_random.RandomId("ready", byte_length=4)
        component = ElasticIntegration(
            "vllm",
            ElasticIntegrationArgs(
                elastic=elastic,
                stack="test",
                endpoint_host=pulumi.Output.from_input(host),
                api_key=pulumi.Output.secret(MOCK_API_KEY),
                served_model_name=MODEL,
                tool_calling=tool_calling,
                ca_certificate=(
                    None if ca_certificate is None else pulumi.Output.from_input(ca_certificate)
                ),
                endpoint_ready=[ready],
            ),
        )
        outputs: dict[str, object] = {
            "endpoint": component.endpoint,
            "connectorUrl": component.connector_url,
            "kibanaConnector": component.connector_body,
            "kibanaSettings": component.kibana_settings,
        }
        if component.connector_id is not None:
            outputs["connectorId"] = component.connector_id
        return outputs

    return build_components(declare, stack="test", organization="test-org")


def kibana(**overrides: Any) -> ElasticConfig:
    return ElasticConfig.model_validate({"kibanaUrl": "https://kb.example.com/", **overrides})


def assert_no_plain_secret(built: Plan) -> None:
    for key, value in built.outputs.items():
        if key in built.secret_outputs:
            continue
        for text in plain_strings(value):
            assert not any(secret in text for secret in SECRETS), key
    for resource in built.resources:
        for text in plain_strings(resource.inputs):
            assert not any(secret in text for secret in SECRETS), resource.name


def test_self_signed_ip_endpoint_outputs() -> None:
    built = build()
    host = MOCK_PUBLIC_IP
    assert built.outputs["endpoint"] == f"https://{host}/v1"
    assert built.outputs["connectorUrl"] == f"https://{host}/v1/chat/completions"
    assert built.secret_outputs == {"kibanaConnector"}
    assert built.outputs["kibanaConnector"] == {
        "name": f"vLLM - {MODEL}",
        "connector_type_id": ".gen-ai",
        "config": {
            "apiProvider": "Other",
            "apiUrl": f"https://{host}/v1/chat/completions",
            "defaultModel": MODEL,
            "enableNativeFunctionCalling": True,
        },
        "secrets": {"apiKey": MOCK_API_KEY},
    }
    settings = yaml.safe_load(built.outputs["kibanaSettings"])
    assert settings["xpack.actions.customHostSettings"] == [
        {
            "url": f"https://{host}:443",
            "ssl": {"verificationMode": "full", "certificateAuthoritiesData": CA_PEM},
        }
    ]
    assert settings["xpack.actions.responseTimeout"] == "300s"
    assert settings["feature_flags.overrides"] == {
        "securitySolution.inferenceChatModelDisabled": True
    }
    assert_no_plain_secret(built)
    assert built.of_type(DYNAMIC) == []


def test_domain_endpoint_without_ca_has_no_custom_host_settings() -> None:
    built = build(host="llm.example.com", ca_certificate=None)
    assert built.outputs["connectorUrl"] == "https://llm.example.com/v1/chat/completions"
    assert built.outputs["kibanaConnector"]["config"]["apiUrl"] == built.outputs["connectorUrl"]
    settings = yaml.safe_load(built.outputs["kibanaSettings"])
    assert "xpack.actions.customHostSettings" not in settings
    assert "BEGIN CERTIFICATE" not in built.outputs["kibanaSettings"]
    assert settings["xpack.actions.responseTimeout"] == "300s"


def test_models_without_tool_calling_leave_the_flag_out() -> None:
    built = build(tool_calling=False)
    assert "enableNativeFunctionCalling" not in built.outputs["kibanaConnector"]["config"]


def test_connector_resource_when_kibana_is_configured() -> None:
    built = build(elastic=kibana(space="security", connectorName="Mistral on GCP"))
    [connector] = built.of_type(DYNAMIC)
    assert connector.name == "vllm-kibana-connector"
    assert is_secret_value(connector.inputs["api_key"])
    plain = connector.plain
    assert plain["api_key"] == MOCK_API_KEY
    # The Kibana API key is no input: the provider reads vllm-gcp:kibanaApiKey from the stack
    # configuration, so rotating it plans no update and no state holds a key gone stale.
    assert "kibana_api_key" not in connector.inputs
    assert set(plain) == {
        "kibana_url",
        "space",
        "connector_id",
        "connector_type_id",
        "name",
        "config",
        "api_key",
        "verify",
        "__provider",
    }
    for resource in built.resources:
        assert not any(MOCK_KIBANA_KEY in text for text in plain_strings(resource.plain))
    assert plain["kibana_url"] == "https://kb.example.com"
    assert plain["space"] == "security"
    assert plain["name"] == "Mistral on GCP"
    assert plain["verify"] is True
    assert plain["connector_type_id"] == ".gen-ai"
    assert plain["config"] == built.outputs["kibanaConnector"]["config"]
    assert built.outputs["kibanaConnector"]["name"] == "Mistral on GCP"
    expected_id = connector_id_for(
        "vllm-gcp",
        "test",
        "https://kb.example.com",
        "security",
        "vllm",
    )
    assert plain["connector_id"] == expected_id
    assert built.outputs["connectorId"] == expected_id
    assert "connectorId" not in built.secret_outputs
    assert_no_plain_secret(built)


def test_connector_follows_verify_setting() -> None:
    built = build(elastic=kibana(verify=False))
    [connector] = built.of_type(DYNAMIC)
    assert connector.plain["verify"] is False


def test_kibana_settings_indent_every_line_of_a_chain() -> None:
    chain = CA_PEM + CA_PEM.replace("mock", "second")
    text = kibana_settings("10.42.0.10", chain)
    parsed = yaml.safe_load(text)
    data = parsed["xpack.actions.customHostSettings"][0]["ssl"]["certificateAuthoritiesData"]
    assert data == chain
