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
    run_program,
    stack_config,
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
    with_inference_id: bool = False,
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
        if with_inference_id:
            outputs["inferenceId"] = component.inference_id
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


# ------------------------------------------------------------------------------------------------
# The inference endpoint (elastic.elasticsearchUrl), alone or beside the connector


def elasticsearch(**overrides: Any) -> ElasticConfig:
    return ElasticConfig.model_validate(
        {"elasticsearchUrl": "https://my.es.example.com/", **overrides}
    )


def test_inference_endpoint_resource_when_elasticsearch_is_configured() -> None:
    built = build(elastic=elasticsearch(), with_inference_id=True)
    [endpoint] = built.of_type(DYNAMIC)
    assert endpoint.name == "vllm-inference-endpoint"
    assert is_secret_value(endpoint.inputs["api_key"])
    plain = endpoint.plain
    assert set(plain) == {
        "elasticsearch_url",
        "inference_id",
        "task_type",
        "service",
        "model_id",
        "url",
        "api_key",
        "verify",
        "__provider",
    }
    assert plain["elasticsearch_url"] == "https://my.es.example.com"
    assert plain["inference_id"] == "vllm-test"
    assert (plain["task_type"], plain["service"]) == ("chat_completion", "openai")
    assert plain["model_id"] == MODEL
    assert plain["url"] == built.outputs["connectorUrl"]
    assert plain["api_key"] == MOCK_API_KEY
    assert "api_key" in endpoint.options.additional_secret_outputs
    assert built.outputs["inferenceId"] == "vllm-test"
    assert "inferenceId" not in built.secret_outputs
    assert_no_plain_secret(built)
    # The self-signed CA: what each Elasticsearch node needs, as comments in kibanaSettings.
    text = built.outputs["kibanaSettings"]
    assert "# Inference endpoint vllm-test: Elasticsearch calls the model itself" in text
    assert "-importcert -cacerts" in text
    assert yaml.safe_load(text)["xpack.actions.responseTimeout"] == "300s"


def test_both_paths_give_a_connector_and_an_endpoint_and_an_id_may_be_chosen() -> None:
    config = ElasticConfig.model_validate(
        {
            "kibanaUrl": "https://kb.example.com",
            "elasticsearchUrl": "https://es.example.com",
            "inferenceId": "security-llm",
        }
    )
    built = build(elastic=config, with_inference_id=True)
    names = sorted(r.name for r in built.of_type(DYNAMIC))
    assert names == ["vllm-inference-endpoint", "vllm-kibana-connector"]
    assert built.outputs["inferenceId"] == "security-llm"


def test_without_elasticsearch_there_is_no_endpoint_nor_trust_comment() -> None:
    built = build(elastic=kibana(), with_inference_id=True)
    assert [r.name for r in built.of_type(DYNAMIC)] == ["vllm-kibana-connector"]
    assert built.outputs["inferenceId"] is None
    assert "Inference endpoint" not in built.outputs["kibanaSettings"]


def test_a_public_certificate_needs_no_trust_store_lines() -> None:
    text = kibana_settings("llm.example.com", None, "vllm-prod")
    assert "keytool" not in text


def test_the_program_exports_the_inference_id() -> None:
    config = stack_config(
        "dev",
        {"vllm-gcp:elastic": {"elasticsearchUrl": "https://es.example.com"}},
        {"vllm-gcp:tls": {"mode": "letsencrypt", "domain": "llm.example.com", "email": "a@b.io"}},
    )
    plan = run_program(config, stack="dev", secrets={"elasticsearchApiKey": "mock-es-key-c2VjcmV0"})
    assert plan.outputs["inferenceId"] == "vllm-dev"
    [endpoint] = plan.of_type(DYNAMIC)
    assert endpoint.plain["url"] == "https://llm.example.com/v1/chat/completions"
    for resource in plan.resources:
        assert not any("mock-es-key" in text for text in plain_strings(resource.plain))
