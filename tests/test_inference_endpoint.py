"""The inference endpoint's dynamic provider against a stand-in Elasticsearch on loopback, which
calls the OpenAI stand-in (and, for trust, the real Nginx site in front of it)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest
from pulumi.dynamic import Config, ConfigureRequest
from pulumi.dynamic.dynamic import serialize_provider

from components.elastic_api import ElasticApiError, classify, error_text
from components.inference_endpoint import (
    ELASTICSEARCH_API_KEY_CONFIG,
    ElasticsearchClient,
    InferenceEndpointProvider,
    verification_hint,
)
from tests.provider_process import in_provider_thread, load_sdk_dynamic_main
from tools.standins.elasticsearch import StandInElasticsearch
from tools.standins.nginx import NginxProxy, free_port
from tools.standins.openai_upstream import OpenAIUpstream

ES_KEY = base64.b64encode(b"es-key-id:es-key-secret").decode()
MONITOR_KEY = base64.b64encode(b"monitor-id:monitor-secret").decode()
NO_ACCESS_KEY = base64.b64encode(b"none-id:none-secret").decode()
KEY_B = base64.b64encode(b"rotated-id:rotated-secret").decode()
ENDPOINT_KEY = "endpoint-bearer-token-0123456789abcdef"
MODEL = "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
INFERENCE_ID = "vllm-test"
SECRETS = (ES_KEY, MONITOR_KEY, NO_ACCESS_KEY, KEY_B, ENDPOINT_KEY)


@pytest.fixture
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream(model=MODEL, api_key=ENDPOINT_KEY) as stand_in:
        yield stand_in


@pytest.fixture
def es() -> Iterator[StandInElasticsearch]:
    keys = {
        ES_KEY: "manage_inference",
        MONITOR_KEY: "monitor_inference",
        NO_ACCESS_KEY: "none",
        KEY_B: "manage_inference",
    }
    with StandInElasticsearch(keys=keys) as stand_in:
        yield stand_in


def stack_config(key: str | None) -> dict[str, Any]:
    """The whole stack configuration, namespaced, as the engine hands a dynamic provider."""
    raw: dict[str, Any] = {
        "gcp:project": "my-project",
        "vllm-gcp:elastic": json.dumps({"elasticsearchUrl": "https://es.example.com"}),
    }
    if key is not None:
        raw[ELASTICSEARCH_API_KEY_CONFIG] = key
    return raw


def configured(
    key: str | None = ES_KEY, *, request_timeout: float = 3, verify_attempts: int = 1
) -> InferenceEndpointProvider:
    provider = InferenceEndpointProvider(
        request_timeout=request_timeout,
        verify_timeout=10,
        verify_attempts=verify_attempts,
        verify_retry_delay=0,
    )
    provider.configure(ConfigureRequest(Config(stack_config(key), "vllm-gcp")))
    return provider


def props(es_url: str, url: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "elasticsearch_url": es_url,
        "inference_id": INFERENCE_ID,
        "task_type": "chat_completion",
        "service": "openai",
        "model_id": MODEL,
        "url": url,
        "api_key": ENDPOINT_KEY,
        "verify": True,
        "__provider": "serialized-provider",
    }
    values.update(overrides)
    return values


def chat_url(upstream: OpenAIUpstream) -> str:
    return f"{upstream.url}/v1/chat/completions"


def assert_no_credentials(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# ------------------------------------------------------------------------------------------------
# Create, read, update, delete


def test_create_verify_read_update_delete(
    es: StandInElasticsearch, upstream: OpenAIUpstream
) -> None:
    provider = configured()
    desired = props(es.url, chat_url(upstream))
    created = provider.create(desired)
    assert created.id == INFERENCE_ID
    put = es.requests[0]
    assert (put.method, put.path) == ("PUT", f"/_inference/chat_completion/{INFERENCE_ID}")
    assert put.headers["authorization"] == f"ApiKey {ES_KEY}"
    assert put.body == {
        "service": "openai",
        "service_settings": {"api_key": ENDPOINT_KEY, "model_id": MODEL, "url": chat_url(upstream)},
    }
    # Elasticsearch validated it ("how big"), then the provider ran it through _stream.
    assert es.requests[-1].path == f"/_inference/chat_completion/{INFERENCE_ID}/_stream"
    bodies = [json.loads(r.body) for r in upstream.requests]
    assert [b["messages"][0]["content"] for b in bodies] == [
        "how big",
        "Reply with the single word OK.",
    ]
    assert all(b["stream"] is True and b["model"] == MODEL for b in bodies)
    assert all(r.headers["authorization"] == f"Bearer {ENDPOINT_KEY}" for r in upstream.requests)
    assert created.outs is not None
    assert "__provider" not in created.outs

    state = {**created.outs, "__provider": "serialized-provider"}
    refreshed = provider.read(INFERENCE_ID, state)
    assert refreshed.id == INFERENCE_ID
    assert refreshed.outs is not None
    assert provider.diff(INFERENCE_ID, refreshed.outs, desired).changes is False

    # A new bearer token updates in place, through _update, and is verified again.
    upstream.api_key = "rotated-bearer-token"
    changed = props(es.url, chat_url(upstream), api_key="rotated-bearer-token")
    diff = provider.diff(INFERENCE_ID, refreshed.outs, changed)
    assert (diff.changes, diff.replaces) == (True, [])
    provider.update(INFERENCE_ID, refreshed.outs, changed)
    update = next(r for r in es.requests if r.path.endswith("/_update"))
    assert update.body == {"service_settings": {"api_key": "rotated-bearer-token"}}
    stored = es.endpoint(INFERENCE_ID)
    assert stored is not None
    assert stored["service_settings"]["api_key"] == "rotated-bearer-token"
    assert upstream.requests[-1].headers["authorization"] == "Bearer rotated-bearer-token"

    provider.delete(INFERENCE_ID, changed)
    assert es.endpoint(INFERENCE_ID) is None
    provider.delete(INFERENCE_ID, changed)  # already gone counts as deleted


def test_another_model_or_url_replaces_the_endpoint_deleting_it_first() -> None:
    provider = configured()
    old = props("http://es", "https://203.0.113.10/v1/chat/completions")
    for key, value in (
        ("model_id", "google/gemma-4-31B-it"),
        ("url", "https://llm.example.com/v1/chat/completions"),
        ("inference_id", "vllm-other"),
        ("elasticsearch_url", "http://other-es"),
    ):
        diff = provider.diff(INFERENCE_ID, old, {**old, key: value})
        assert (diff.changes, diff.replaces, diff.delete_before_replace) == (True, [key], True)
    for key, value in (("api_key", "new-token"), ("verify", False)):
        diff = provider.diff(INFERENCE_ID, old, {**old, key: value})
        assert (diff.changes, diff.replaces) == (True, [])
    assert provider.diff(INFERENCE_ID, old, dict(old)).changes is False


def test_refresh_sees_drift_and_deletion(
    es: StandInElasticsearch, upstream: OpenAIUpstream
) -> None:
    provider = configured()
    desired = props(es.url, chat_url(upstream), verify=False)
    provider.create(desired)
    stored = es.endpoint(INFERENCE_ID)
    assert stored is not None
    stored["service_settings"]["model_id"] = "someone-elses-model"
    refreshed = provider.read(INFERENCE_ID, desired)
    assert refreshed.outs is not None
    assert provider.diff(INFERENCE_ID, refreshed.outs, desired).replaces == ["model_id"]
    es.endpoints.clear()
    assert not provider.read(INFERENCE_ID, desired).id


def test_create_adopts_its_own_endpoint_and_refuses_someone_elses(
    es: StandInElasticsearch, upstream: OpenAIUpstream
) -> None:
    provider = configured()
    upstream.api_key = "lost-state-token"
    provider.create(props(es.url, chat_url(upstream), api_key="lost-state-token", verify=False))
    # The state was lost; the same stack runs again with the current token.
    upstream.api_key = ENDPOINT_KEY
    upstream.clear()
    provider.create(props(es.url, chat_url(upstream)))
    stored = es.endpoint(INFERENCE_ID)
    assert stored is not None
    assert stored["service_settings"]["api_key"] == ENDPOINT_KEY
    es.endpoints[INFERENCE_ID]["service_settings"]["url"] = "https://api.openai.com/v1/x"
    with pytest.raises(ElasticApiError, match=r"is taken .* did not make .*elastic\.inferenceId"):
        provider.create(props(es.url, chat_url(upstream)))


def test_update_puts_back_an_endpoint_deleted_outside_pulumi(
    es: StandInElasticsearch, upstream: OpenAIUpstream
) -> None:
    provider = configured()
    state = props(es.url, chat_url(upstream))
    provider.create(state)
    es.endpoints.clear()
    provider.update(INFERENCE_ID, state, props(es.url, chat_url(upstream), verify=False))
    assert es.endpoint(INFERENCE_ID) is not None


# ------------------------------------------------------------------------------------------------
# The stand-in is strict as Elasticsearch is


def _put(es: StandInElasticsearch, path: str, body: Any, key: str = ES_KEY) -> httpx.Response:
    return httpx.put(f"{es.url}{path}", json=body, headers={"Authorization": f"ApiKey {key}"})


def test_stand_in_refuses_what_elasticsearch_refuses(
    es: StandInElasticsearch, upstream: OpenAIUpstream
) -> None:
    settings = {"api_key": ENDPOINT_KEY, "model_id": MODEL, "url": chat_url(upstream)}
    path = f"/_inference/chat_completion/{INFERENCE_ID}"
    unknown = _put(es, path, {"service": "openai", "service_settings": {**settings, "foo": 1}})
    assert unknown.status_code == 400
    assert "settings [{foo=1}] unknown to the [openai] service" in unknown.text
    dims = _put(es, path, {"service": "openai", "service_settings": {**settings, "dimensions": 8}})
    assert "unknown to the [openai] service" in dims.text  # an embeddings setting
    no_model = {k: v for k, v in settings.items() if k != "model_id"}
    assert "[model_id]" in _put(es, path, {"service": "openai", "service_settings": no_model}).text
    bad_id = _put(es, "/_inference/chat_completion/Vllm_Prod!", {"service": "openai"})
    assert "Invalid inference_id" in bad_id.text
    assert _put(es, "/_inference/chat_thing/x", {}).status_code == 400
    assert _put(es, path, {"service": "openai", "service_settings": settings}).status_code == 200
    again = _put(es, path, {"service": "openai", "service_settings": settings})
    assert (again.status_code, again.json()["error"]["type"]) == (
        400,
        "resource_already_exists_exception",
    )
    moved = _put(es, f"{path}/_update", {"service_settings": {"url": "https://elsewhere/v1"}})
    assert moved.status_code == 400  # model_id and url cannot be updated
    extra = _put(es, f"{path}/_update", {"service": "openai"})
    assert "cannot be updated" in extra.text
    gone = httpx.get(
        f"{es.url}/_inference/chat_completion/nothing",
        headers={"Authorization": f"ApiKey {ES_KEY}"},
    )
    assert (gone.status_code, gone.json()["error"]["type"]) == (404, "resource_not_found_exception")
    listed = httpx.get(f"{es.url}{path}", headers={"Authorization": f"ApiKey {ES_KEY}"}).json()
    assert "api_key" not in listed["endpoints"][0]["service_settings"]  # never read back


def test_a_model_elasticsearch_cannot_reach_fails_the_create_with_its_words(
    es: StandInElasticsearch,
) -> None:
    provider = configured()
    url = f"http://127.0.0.1:{free_port()}/v1/chat/completions"
    with pytest.raises(ElasticApiError) as error:
        provider.create(props(es.url, url))
    message = str(error.value)
    assert "validation call to service threw an exception" in message
    assert "Connection refused" in message
    assert "apiCidrs" in message  # the hint
    assert_no_credentials(message)
    assert es.endpoints == {}


def test_a_wrong_bearer_token_points_at_the_api_key_output(
    es: StandInElasticsearch, upstream: OpenAIUpstream
) -> None:
    with pytest.raises(ElasticApiError, match=r"(?s)status \[401\].*stack output `apiKey`") as e:
        configured().create(props(es.url, chat_url(upstream), api_key="not-the-token"))
    assert_no_credentials(str(e.value))


def test_an_untrusted_certificate_points_at_the_trust_store(upstream: OpenAIUpstream) -> None:
    with NginxProxy(upstream.port, api_key=ENDPOINT_KEY) as nginx:
        url = f"{nginx.https_url}/v1/chat/completions"
        with StandInElasticsearch(keys={ES_KEY: "manage_inference"}) as untrusting:
            with pytest.raises(ElasticApiError, match=r"(?s)PKIX.*trust store.*Elastic Cloud"):
                configured().create(props(untrusting.url, url))
            assert untrusting.endpoints == {}
        # With the CA in the JVM's trust store (what kibanaSettings tells self-managed users).
        trusting = StandInElasticsearch(keys={ES_KEY: "manage_inference"})
        trusting.upstream_ca = nginx.ca_path.read_text()
        with trusting:
            configured().create(props(trusting.url, url))
            assert trusting.endpoint(INFERENCE_ID) is not None


def test_verification_failure_after_create_leaves_no_endpoint(
    es: StandInElasticsearch, upstream: OpenAIUpstream
) -> None:
    provider = configured(verify_attempts=2)
    original = es.handle

    def model_down_after_validation(method: str, path: str, headers: Any, raw: bytes) -> Any:
        if path.endswith("/_stream"):
            stored = es.endpoint(INFERENCE_ID)
            assert stored is not None
            stored["service_settings"]["url"] = f"http://127.0.0.1:{free_port()}/v1"
        return original(method, path, headers, raw)

    es.handle = model_down_after_validation
    with pytest.raises(ElasticApiError, match=r"(?s)could not run inference endpoint.*verify"):
        provider.create(props(es.url, chat_url(upstream)))
    assert [r.path.rsplit("/", 1)[-1] for r in es.requests].count("_stream") == 2  # retried
    assert es.endpoints == {}


def test_the_stream_carries_tool_calls_as_vllm_streams_them(
    es: StandInElasticsearch, upstream: OpenAIUpstream
) -> None:
    configured().create(props(es.url, chat_url(upstream), verify=False))
    tool = {
        "type": "function",
        "function": {
            "name": "get_alerts",
            "parameters": {"type": "object", "properties": {"host": {}}, "required": ["host"]},
        },
    }
    body = {"messages": [{"role": "user", "content": "alerts?"}], "tools": [tool]}
    with httpx.stream(
        "POST",
        f"{es.url}/_inference/chat_completion/{INFERENCE_ID}/_stream",
        json=body,
        headers={"Authorization": f"ApiKey {MONITOR_KEY}"},
    ) as response:
        assert response.headers["content-type"] == "text/event-stream"
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in map(json.loads, data[:-1]) if c.get("choices")]
    calls = [call for delta in deltas for call in delta.get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "get_alerts"
    assert "".join(c["function"].get("arguments", "") for c in calls) == '{"host": "stand-in"}'


# ------------------------------------------------------------------------------------------------
# Elasticsearch's own refusals, and the messages


def test_a_refused_key_names_the_setting_and_a_missing_privilege_names_it(
    es: StandInElasticsearch, upstream: OpenAIUpstream
) -> None:
    desired = props(es.url, chat_url(upstream))
    with pytest.raises(ElasticApiError, match=r"refused the API key \(401\).*elasticsearchApiKey"):
        configured("d3Jvbmc=").create(desired)
    for key in (MONITOR_KEY, NO_ACCESS_KEY):
        with pytest.raises(ElasticApiError, match=r"403.*manage_inference") as error:
            configured(key).create(desired)
        assert_no_credentials(str(error.value))


def test_without_a_configured_key_every_call_names_the_config_key_and_cli() -> None:
    provider = configured(None)
    state = props("http://127.0.0.1:9", "https://h/v1/chat/completions")
    for call in (
        lambda: provider.create(state),
        lambda: provider.read(INFERENCE_ID, state),
        lambda: provider.update(INFERENCE_ID, state, state),
        lambda: provider.delete(INFERENCE_ID, state),
    ):
        with pytest.raises(ElasticApiError, match=r"vllm-gcp:elasticsearchApiKey.*3\.139"):
            call()


def test_error_text_reads_both_error_shapes_and_hints_follow_the_words() -> None:
    nested = {
        "error": {
            "type": "exception",
            "reason": "Http client failed",
            "caused_by": {"type": "connect_exception", "reason": "Connection refused"},
        }
    }
    assert (
        error_text(nested) == "exception: Http client failed (caused by: connect_exception: "
        "Connection refused)"
    )
    assert error_text({"error": {"code": "x", "message": "m", "type": "t"}}) == "t: m"
    assert classify("PKIX path building failed") == "tls"
    assert classify("status [401]. Error message: [Unauthorized]") == "auth"
    assert classify("java.net.ConnectException: Connection refused") == "network"
    assert "trust store" in verification_hint("SSLHandshakeException")
    client = ElasticsearchClient("http://es", ES_KEY, redact=(ENDPOINT_KEY,))
    assert client.redacted(f"{ES_KEY} {ENDPOINT_KEY}") == "[redacted] [redacted]"
    assert ES_KEY not in repr(client)


# ------------------------------------------------------------------------------------------------
# Rotation and outages, as for the Kibana connector


def test_a_rotated_key_reads_updates_verifies_and_deletes(
    es: StandInElasticsearch, upstream: OpenAIUpstream
) -> None:
    created = configured(ES_KEY).create(props(es.url, chat_url(upstream)))
    assert created.outs is not None
    assert not set(created.outs) & {"elasticsearch_api_key", "es_api_key"}
    state = {**created.outs, "__provider": "serialized-provider"}
    es.revoke(ES_KEY)
    rotated = len(es.requests)
    provider = configured(KEY_B)
    desired = props(es.url, chat_url(upstream))
    assert provider.diff(INFERENCE_ID, state, desired).changes is False
    refreshed = provider.read(INFERENCE_ID, state)
    assert refreshed.outs is not None
    provider.update(INFERENCE_ID, refreshed.outs, desired)
    provider.delete(INFERENCE_ID, desired)
    assert es.endpoint(INFERENCE_ID) is None
    calls = [(r.method, r.path.rsplit("/", 1)[-1]) for r in es.requests[rotated:]]
    assert calls == [
        ("GET", INFERENCE_ID),
        ("PUT", "_update"),
        ("POST", "_stream"),
        ("DELETE", INFERENCE_ID),
    ]
    assert es.keys_used()[rotated:] == [KEY_B] * 4


@pytest.fixture(scope="module")
def sdk_dynamic_main() -> ModuleType:
    return load_sdk_dynamic_main("sdk_dynamic_main_inference")


def test_the_sdk_unpickles_and_configures_the_provider_with_the_current_key(
    es: StandInElasticsearch, upstream: OpenAIUpstream, sdk_dynamic_main: ModuleType
) -> None:
    es.revoke(ES_KEY)
    serialized = serialize_provider(InferenceEndpointProvider(request_timeout=3))
    cache: dict[str, Any] = sdk_dynamic_main._PROVIDER_CACHE
    cache.clear()

    def provider_process() -> Any:
        provider = sdk_dynamic_main.get_provider({"__provider": serialized}, stack_config(KEY_B))
        desired = props(es.url, chat_url(upstream), __provider=serialized, verify=False)
        created = provider.create(desired)
        state = {**created.outs, "__provider": serialized}
        assert provider.read(INFERENCE_ID, state).id == INFERENCE_ID
        provider.delete(INFERENCE_ID, state)
        return provider

    try:
        provider = in_provider_thread(provider_process)
    finally:
        cache.clear()
    assert type(provider) is InferenceEndpointProvider
    assert set(es.keys_used()) == {KEY_B}
    raw = base64.b64decode(serialized)
    assert b"components.inference_endpoint" in raw
    assert b"InferenceEndpointProvider" in raw
    assert ES_KEY.encode() not in raw


OUTAGES = ("connection refused", "503", "timeout", "key revoked (401)")


@pytest.mark.parametrize("outage", OUTAGES)
def test_refresh_during_an_outage_keeps_the_state_and_warns(
    es: StandInElasticsearch,
    upstream: OpenAIUpstream,
    capsys: pytest.CaptureFixture[str],
    outage: str,
) -> None:
    created = configured().create(props(es.url, chat_url(upstream), verify=False))
    assert created.outs is not None
    state = {**created.outs, "__provider": "serialized-provider"}
    provider = configured()
    if outage == "connection refused":
        es.stop()
        expected = "Cannot connect to Elasticsearch"
    elif outage == "503":
        es.unavailable = True
        expected = "Elasticsearch answered 503 while reading the inference endpoint"
    elif outage == "timeout":
        es.stall_seconds = 2
        provider = configured(request_timeout=0.2)
        expected = "did not answer within 0.2 s"
    else:
        es.revoke(ES_KEY)
        expected = "refused the API key (401)"
    capsys.readouterr()
    refreshed = in_provider_thread(lambda: provider.read(INFERENCE_ID, state))
    warning = capsys.readouterr().err
    assert refreshed.id == INFERENCE_ID
    assert refreshed.outs == {k: v for k, v in state.items() if k != "__provider"}
    assert warning.startswith(f"warning: Inference endpoint {INFERENCE_ID}: refresh could not")
    assert expected in warning
    assert_no_credentials(warning)


def test_create_update_and_delete_fail_while_elasticsearch_is_down(
    es: StandInElasticsearch, upstream: OpenAIUpstream
) -> None:
    provider = configured()
    state = props(es.url, chat_url(upstream), verify=False)
    provider.create(state)
    es.unavailable = True
    for verb, call in (
        ("creating", lambda: provider.create(props(es.url, chat_url(upstream), inference_id="x"))),
        ("updating", lambda: provider.update(INFERENCE_ID, state, state)),
        ("deleting", lambda: provider.delete(INFERENCE_ID, state)),
    ):
        with pytest.raises(ElasticApiError, match=f"answered 503 while {verb}") as error:
            call()
        assert_no_credentials(str(error.value))
    es.unavailable = False
    assert es.endpoint(INFERENCE_ID) is not None
