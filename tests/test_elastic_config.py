"""The elastic section: Kibana, Elasticsearch or both, their keys, and what Elasticsearch trusts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.config import SECRET_KEYS, ConfigError, ElasticConfig, StackConfig, validate
from tests.harness import stack_config

ES_URL = "https://my-deployment.es.example.com"
CLOUD_ES_URL = "https://my-deployment.es.us-central1.gcp.cloud.es.io"
LETSENCRYPT = {"mode": "letsencrypt", "domain": "llm.example.com", "email": "ops@example.com"}


def config_of(*overrides: dict[str, Any]) -> tuple[StackConfig, list[str]]:
    raw = stack_config("prod", *overrides)
    return validate({k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, "prod")


def problems_of(*overrides: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        config_of(*overrides)
    return {problem.key: problem.message for problem in caught.value.problems}


def elastic(**values: Any) -> dict[str, Any]:
    return {"vllm-gcp:elastic": values}


def test_an_inference_endpoint_alone_needs_only_elasticsearch_and_its_key() -> None:
    config, warnings = config_of(
        elastic(elasticsearchUrl=ES_URL), {"vllm-gcp:elasticsearchApiKey": "ZXMta2V5"}
    )
    assert config.elastic is not None
    assert config.elastic.kibana_url is None
    assert config.elastic.elasticsearch_base_url == ES_URL
    assert config.elastic.inference_id_for("prod") == "vllm-prod"
    assert warnings == []
    assert "elasticsearchApiKey" in SECRET_KEYS


def test_both_paths_need_both_keys() -> None:
    found = problems_of(elastic(kibanaUrl="https://kb.example.com", elasticsearchUrl=ES_URL))
    assert "vllm-gcp:kibanaApiKey" in found
    assert "manage_inference" in found["vllm-gcp:elasticsearchApiKey"]


def test_an_elastic_section_needs_kibana_or_elasticsearch() -> None:
    found = problems_of(elastic(space="security"))
    assert "kibanaUrl" in found["vllm-gcp:elastic"]
    assert "elasticsearchUrl" in found["vllm-gcp:elastic"]


def test_self_signed_cannot_serve_an_inference_endpoint_on_elastic_cloud() -> None:
    key = {"vllm-gcp:elasticsearchApiKey": "ZXMta2V5"}
    found = problems_of(elastic(elasticsearchUrl=CLOUD_ES_URL), key)
    assert set(found) == {"vllm-gcp:tls.mode"}
    assert "Elasticsearch, not Kibana, calls the model" in found["vllm-gcp:tls.mode"]
    assert "letsencrypt" in found["vllm-gcp:tls.mode"]
    # A public certificate works there; a self-managed cluster can be given the CA.
    config_of(elastic(elasticsearchUrl=CLOUD_ES_URL), key, {"vllm-gcp:tls": LETSENCRYPT})
    config_of(elastic(elasticsearchUrl=ES_URL), key)
    # The Kibana connector alone is trusted through kibana.yml, even on Elastic Cloud.
    config_of(
        elastic(kibanaUrl="https://x.kb.us-central1.gcp.cloud.es.io"),
        {"vllm-gcp:kibanaApiKey": "a2V5"},
    )


@pytest.mark.parametrize("inference_id", ["Vllm-Prod", "-vllm", "vllm_", "a" * 65, "vllm prod"])
def test_inference_ids_follow_elasticsearchs_rule(inference_id: str) -> None:
    found = problems_of(
        elastic(elasticsearchUrl=ES_URL, inferenceId=inference_id),
        {"vllm-gcp:elasticsearchApiKey": "ZXMta2V5"},
    )
    assert set(found) == {"vllm-gcp:elastic.inferenceId"}


def test_an_inference_id_without_elasticsearch_is_refused() -> None:
    found = problems_of(
        elastic(kibanaUrl="https://kb.example.com", inferenceId="vllm-prod"),
        {"vllm-gcp:kibanaApiKey": "a2V5"},
    )
    assert set(found) == {"vllm-gcp:elastic.inferenceId"}


@pytest.mark.parametrize(
    ("stack", "expected"),
    [("prod", "vllm-prod"), ("E2E_Test.1", "vllm-e2e_test.1"), ("my stack!", "vllm-my-stack")],
)
def test_the_default_inference_id_is_valid_for_any_stack(stack: str, expected: str) -> None:
    assert ElasticConfig.model_validate({"elasticsearchUrl": ES_URL}).inference_id_for(stack) == (
        expected
    )


def test_an_unused_elasticsearch_key_warns() -> None:
    _, warnings = config_of({"vllm-gcp:elasticsearchApiKey": "ZXMta2V5"})
    assert any("elasticsearchApiKey is unused" in warning for warning in warnings)
