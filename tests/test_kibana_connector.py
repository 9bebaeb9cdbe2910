"""The Kibana connector's dynamic provider against a stand-in Kibana (and endpoint) on loopback."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import httpx
import pytest
from pulumi.dynamic import Config, ConfigureRequest, DiffResult
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime import rpc

from components.elastic import connector_config, connector_id_for
from components.kibana_connector import (
    KIBANA_API_KEY_CONFIG,
    KibanaApiError,
    KibanaClient,
    KibanaConnectorProvider,
    verification_hint,
)
from tests.harness import ROOT
from tests.provider_process import in_provider_thread, load_sdk_dynamic_main
from tools.standins.elastic_server import tls_context
from tools.standins.kibana import StandInKibana
from tools.standins.pki import Pki, loopback_pki

KIBANA_KEY = "a2liYW5hLWtleS1pZDpraWJhbmEta2V5LXNlY3JldA=="
READ_ONLY_KEY = "cmVhZC1vbmx5LWtleQ=="
NO_ACCESS_KEY = "bm8tYWNjZXNzLWtleQ=="
ENDPOINT_KEY = "endpoint-bearer-token-0123456789abcdef"
MODEL = "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
CONNECTOR_ID = connector_id_for("org", "vllm-gcp", "test", "http://kibana", "default", "vllm")
KEYS = {KIBANA_KEY: "all", READ_ONLY_KEY: "read", NO_ACCESS_KEY: "none"}


# ------------------------------------------------------------------------------------------------
# Loopback helpers: certificates, a stand-in OpenAI-compatible endpoint, a closed port


@pytest.fixture(scope="module")
def pki() -> Pki:
    return loopback_pki()


@dataclass
class FakeEndpoint:
    """The Nginx-fronted vLLM as Kibana sees it: bearer check, then a chat completion."""

    api_key: str
    tls: tuple[str, str] | None = None
    received: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def chat_url(self) -> str:
        assert self.server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}/v1/chat/completions"

    def __enter__(self) -> FakeEndpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                authorized = self.headers.get("Authorization") == f"Bearer {endpoint.api_key}"
                endpoint.received.append({"body": body, "authorized": authorized})
                if self.path != "/v1/chat/completions" or not authorized:
                    self.send_response(401 if not authorized else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                answer = json.dumps(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": "OK"}}
                        ],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = tls_context(*self.tls).wrap_socket(server.socket, server_side=True)
        self.server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def kibana() -> Iterator[StandInKibana]:
    with StandInKibana(keys=KEYS, spaces=("default", "security")) as stand_in:
        yield stand_in


def stack_config(kibana_key: str | None) -> dict[str, Any]:
    """What the engine hands a dynamic provider's Configure: the whole stack configuration,
    namespaces kept, secrets decrypted (pulumi pkg/resource/deploy/target.go GetPackageConfig)."""
    raw: dict[str, Any] = {
        "gcp:project": "my-project",
        "gcp:zone": "us-central1-a",
        "vllm-gcp:access": json.dumps({"sshCidrs": ["198.51.100.7/32"]}),
        "vllm-gcp:elastic": json.dumps({"kibanaUrl": "https://kb.example.com"}),
    }
    if kibana_key is not None:
        raw[KIBANA_API_KEY_CONFIG] = kibana_key
    return raw


def configured(
    kibana_key: str | None = KIBANA_KEY,
    *,
    request_timeout: float = 3,
    verify_attempts: int = 1,
) -> KibanaConnectorProvider:
    """A provider as its process runs it: built, then configured from the stack config."""
    provider = KibanaConnectorProvider(
        request_timeout=request_timeout,
        verify_timeout=10,
        verify_attempts=verify_attempts,
        verify_retry_delay=0,
    )
    provider.configure(ConfigureRequest(Config(stack_config(kibana_key), "vllm-gcp")))
    return provider


@pytest.fixture
def provider() -> KibanaConnectorProvider:
    return configured(KIBANA_KEY)


def props(kibana_url: str, **overrides: Any) -> dict[str, Any]:
    """The properties the engine hands the provider (secrets already unwrapped)."""
    values: dict[str, Any] = {
        "kibana_url": kibana_url,
        "space": "default",
        "connector_id": CONNECTOR_ID,
        "connector_type_id": ".gen-ai",
        "name": f"vLLM - {MODEL}",
        "config": connector_config("https://203.0.113.10/v1/chat/completions", MODEL, True),
        "api_key": ENDPOINT_KEY,
        "verify": False,
        "__provider": "serialized-provider",
    }
    values.update(overrides)
    return values


def assert_no_credentials(error: BaseException) -> None:
    text = str(error)
    for secret in (KIBANA_KEY, READ_ONLY_KEY, NO_ACCESS_KEY, ENDPOINT_KEY):
        assert secret not in text


# ------------------------------------------------------------------------------------------------
# Create, read, update, delete


def test_create_read_update_delete_round_trip(
    kibana: StandInKibana, provider: KibanaConnectorProvider
) -> None:
    desired = props(kibana.url)
    created = provider.create(desired)
    assert created.id == CONNECTOR_ID
    stored = kibana.connector(CONNECTOR_ID)
    assert stored is not None
    assert stored["name"] == f"vLLM - {MODEL}"
    assert stored["config"]["apiUrl"] == "https://203.0.113.10/v1/chat/completions"
    assert stored["config"]["enableNativeFunctionCalling"] is True
    assert stored["secrets"] == {"apiKey": ENDPOINT_KEY}
    create_request = kibana.requests[-1]
    assert create_request.method == "POST"
    assert create_request.path == f"/api/actions/connector/{CONNECTOR_ID}"
    assert create_request.headers["kbn-xsrf"] == "true"
    assert create_request.headers["authorization"] == f"ApiKey {KIBANA_KEY}"
    assert created.outs is not None
    assert "__provider" not in created.outs

    # Refresh sees the live connector; Kibana's extra config defaults are not drift.
    state = {**created.outs, "__provider": "serialized-provider"}
    refreshed = provider.read(CONNECTOR_ID, state)
    assert refreshed.id == CONNECTOR_ID
    assert refreshed.outs is not None
    assert refreshed.outs["config"] == desired["config"]
    assert provider.diff(CONNECTOR_ID, refreshed.outs, desired).changes is False

    # New endpoint, model and key: an update in place, never a replacement.
    changed = props(
        kibana.url,
        config=connector_config("https://llm.example.com/v1/chat/completions", "other", False),
        api_key="rotated-bearer-token",
    )
    diff = provider.diff(CONNECTOR_ID, refreshed.outs, changed)
    assert diff.changes is True
    assert diff.replaces == []
    provider.update(CONNECTOR_ID, refreshed.outs, changed)
    assert kibana.requests[-1].method == "PUT"
    assert set(kibana.requests[-1].body) == {"name", "config", "secrets"}
    stored = kibana.connector(CONNECTOR_ID)
    assert stored is not None
    assert stored["config"]["apiUrl"] == "https://llm.example.com/v1/chat/completions"
    assert stored["config"]["defaultModel"] == "other"
    assert "enableNativeFunctionCalling" not in stored["config"]
    assert stored["secrets"] == {"apiKey": "rotated-bearer-token"}

    provider.delete(CONNECTOR_ID, changed)
    assert kibana.connector(CONNECTOR_ID) is None
    provider.delete(CONNECTOR_ID, changed)  # already gone counts as deleted
    assert kibana.requests[-1].method == "DELETE"


def test_refresh_drops_a_connector_deleted_in_kibana(
    kibana: StandInKibana, provider: KibanaConnectorProvider
) -> None:
    state = props(kibana.url)
    provider.create(state)
    kibana.connectors.clear()
    gone = provider.read(CONNECTOR_ID, state)
    assert not gone.id


def _diff_after_editing_in_kibana(
    kibana: StandInKibana,
    provider: KibanaConnectorProvider,
    edit: Callable[[dict[str, Any]], None],
) -> DiffResult:
    """Create the connector, let `edit` change Kibana's copy, refresh, diff with the desired."""
    desired = props(kibana.url)
    provider.create(desired)
    stored = kibana.connector(CONNECTOR_ID)
    assert stored is not None
    edit(stored)
    refreshed = provider.read(CONNECTOR_ID, desired)
    assert refreshed.outs is not None
    return provider.diff(CONNECTOR_ID, refreshed.outs, desired)


def test_refresh_reports_drift_made_in_kibana(
    kibana: StandInKibana, provider: KibanaConnectorProvider
) -> None:
    def move_the_endpoint(stored: dict[str, Any]) -> None:
        stored["config"]["apiUrl"] = "https://elsewhere.example.com/v1/chat/completions"

    diff = _diff_after_editing_in_kibana(kibana, provider, move_the_endpoint)
    assert diff.changes is True
    assert diff.replaces == []


def test_refresh_notices_secrets_kibana_lost(
    kibana: StandInKibana, provider: KibanaConnectorProvider
) -> None:
    def lose_the_secrets(stored: dict[str, Any]) -> None:
        stored["is_missing_secrets"] = True

    diff = _diff_after_editing_in_kibana(kibana, provider, lose_the_secrets)
    assert diff.changes is True


def test_diff_replaces_only_for_another_kibana_space_id_or_type(
    provider: KibanaConnectorProvider,
) -> None:
    old = props("https://kibana.example.com")
    for key, value in (
        ("kibana_url", "https://other.example.com"),
        ("space", "security"),
        ("connector_id", connector_id_for("another")),
        ("connector_type_id", ".bedrock"),
    ):
        diff = provider.diff(CONNECTOR_ID, old, {**old, key: value})
        assert diff.replaces == [key]
        assert diff.changes is True
    for key, value in (
        ("name", "renamed"),
        ("config", connector_config("https://x.example.com/v1/chat/completions", MODEL, True)),
        ("api_key", "new-token"),
        ("verify", True),
    ):
        diff = provider.diff(CONNECTOR_ID, old, {**old, key: value})
        assert diff.replaces == []
        assert diff.changes is True
    # In a preview the endpoint's address may be unknown yet: that is a change, not a replace.
    unknown = provider.diff(CONNECTOR_ID, old, {**old, "config": rpc.UNKNOWN})
    assert unknown.changes is True
    assert unknown.replaces == []
    assert provider.diff(CONNECTOR_ID, old, dict(old)).changes is False


def test_spaces_go_in_the_path(kibana: StandInKibana, provider: KibanaConnectorProvider) -> None:
    provider.create(props(kibana.url, space="security"))
    assert kibana.requests[-1].path == f"/s/security/api/actions/connector/{CONNECTOR_ID}"
    assert kibana.connector(CONNECTOR_ID, "security") is not None
    assert kibana.connector(CONNECTOR_ID, "default") is None
    with pytest.raises(KibanaApiError, match=r"404.*space 'nowhere' exists"):
        provider.create(props(kibana.url, space="nowhere"))


def test_create_adopts_the_connector_of_a_lost_state(
    kibana: StandInKibana, provider: KibanaConnectorProvider
) -> None:
    provider.create(props(kibana.url, name="from an interrupted run"))
    provider.create(props(kibana.url))
    stored = kibana.connector(CONNECTOR_ID)
    assert stored is not None
    assert stored["name"] == f"vLLM - {MODEL}"
    assert len(kibana.connectors) == 1


def test_update_puts_back_a_connector_deleted_outside_pulumi(
    kibana: StandInKibana, provider: KibanaConnectorProvider
) -> None:
    state = props(kibana.url)
    provider.create(state)
    kibana.connectors.clear()
    provider.update(CONNECTOR_ID, state, props(kibana.url, name="renamed"))
    stored = kibana.connector(CONNECTOR_ID)
    assert stored is not None
    assert stored["name"] == "renamed"


# ------------------------------------------------------------------------------------------------
# Kibana's rules, and the messages the provider gives when they are broken


def test_stand_in_requires_kbn_xsrf(kibana: StandInKibana) -> None:
    response = httpx.post(
        f"{kibana.url}/api/actions/connector/{CONNECTOR_ID}",
        headers={"Authorization": f"ApiKey {KIBANA_KEY}"},
        json={"name": "x", "connector_type_id": ".gen-ai", "config": {}, "secrets": {}},
    )
    assert response.status_code == 400
    assert response.json()["message"] == "Request must contain a kbn-xsrf header."


def test_wrong_kibana_key_names_the_setting(
    kibana: StandInKibana, provider: KibanaConnectorProvider
) -> None:
    with pytest.raises(KibanaApiError, match=r"refused the API key \(401\).*kibanaApiKey") as error:
        configured("d3Jvbmcta2V5").create(props(kibana.url))
    assert "d3Jvbmcta2V5" not in str(error.value)
    assert_no_credentials(error.value)


@pytest.mark.parametrize("key", [READ_ONLY_KEY, NO_ACCESS_KEY])
def test_missing_privilege_names_it(kibana: StandInKibana, key: str) -> None:
    with pytest.raises(KibanaApiError, match=r"403.*Actions and Connectors: All") as error:
        configured(key).create(props(kibana.url))
    assert_no_credentials(error.value)


def test_schema_violations_pass_kibanas_message(
    kibana: StandInKibana, provider: KibanaConnectorProvider
) -> None:
    unknown_key = {**connector_config("https://h/v1/chat/completions", MODEL, False), "foo": 1}
    with pytest.raises(KibanaApiError, match=r"400.*\[foo\]: definition for this key is missing"):
        provider.create(props(kibana.url, config=unknown_key))
    no_model = {"apiProvider": "Other", "apiUrl": "https://h/v1/chat/completions"}
    with pytest.raises(KibanaApiError, match=r"400.*\[defaultModel\]"):
        provider.create(props(kibana.url, config=no_model))
    with pytest.raises(KibanaApiError, match=r"400.*UUID"):
        provider.create(props(kibana.url, connector_id="vllm-connector"))
    assert kibana.connectors == {}


def test_native_function_calling_is_left_out_when_off_for_kibana_before_9_2(
    provider: KibanaConnectorProvider,
) -> None:
    with StandInKibana(keys=KEYS, native_function_calling=False) as old_kibana:
        url = "https://h/v1/chat/completions"
        provider.create(props(old_kibana.url, config=connector_config(url, MODEL, False)))
        assert old_kibana.connector(CONNECTOR_ID) is not None
        old_kibana.connectors.clear()
        with pytest.raises(KibanaApiError, match="enableNativeFunctionCalling"):
            provider.create(props(old_kibana.url, config=connector_config(url, MODEL, True)))


def test_connector_ids_are_stable_uuid_v4() -> None:
    first = connector_id_for("org", "vllm-gcp", "prod", "https://kb", "default", "vllm")
    assert first == connector_id_for("org", "vllm-gcp", "prod", "https://kb", "default", "vllm")
    assert first != connector_id_for("org", "vllm-gcp", "prod", "https://kb", "security", "vllm")
    assert first != connector_id_for("org", "vllm-gcp", "dev", "https://kb", "default", "vllm")
    assert first[14] == "4"
    assert first[19] in "89ab"


def test_kibana_that_stalls_times_out_with_a_clear_message(
    kibana: StandInKibana,
) -> None:
    kibana.stall_seconds = 5
    quick = configured(request_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(KibanaApiError, match=r"did not answer within 0.3 s while creating"):
        quick.create(props(kibana.url))
    assert time.monotonic() - started < 3


def test_unreachable_kibana_is_named(provider: KibanaConnectorProvider) -> None:
    with pytest.raises(KibanaApiError, match=r"Cannot connect to Kibana.*elastic\.kibanaUrl"):
        provider.create(props(f"http://127.0.0.1:{closed_port()}"))


def test_untrusted_kibana_certificate_is_named_as_tls(
    pki: Pki, provider: KibanaConnectorProvider
) -> None:
    with StandInKibana(keys=KEYS, tls=(pki.certificate_pem, pki.key_pem)) as tls_kibana:
        with pytest.raises(KibanaApiError, match=r"TLS with Kibana.*SSL_CERT_FILE") as error:
            provider.create(props(tls_kibana.url))
        assert_no_credentials(error.value)


def test_messages_redact_credentials() -> None:
    client = KibanaClient("https://kb", "default", KIBANA_KEY, redact=(ENDPOINT_KEY,))
    text = client.redacted(f"echoed {KIBANA_KEY} and {ENDPOINT_KEY}")
    assert text == "echoed [redacted] and [redacted]"
    assert KIBANA_KEY not in repr(client)


# ------------------------------------------------------------------------------------------------
# Verification: Kibana runs the connector once against the endpoint


def test_verify_runs_the_test_sub_action_through_kibana(
    kibana: StandInKibana, provider: KibanaConnectorProvider
) -> None:
    with FakeEndpoint(ENDPOINT_KEY) as endpoint:
        config = connector_config(endpoint.chat_url, MODEL, True)
        provider.create(props(kibana.url, config=config, verify=True))
        execute = kibana.requests[-1]
        assert execute.path == f"/api/actions/connector/{CONNECTOR_ID}/_execute"
        assert execute.body["params"]["subAction"] == "test"
        assert isinstance(execute.body["params"]["subActionParams"]["body"], str)
        assert endpoint.received[-1]["authorized"] is True
        assert endpoint.received[-1]["body"]["model"] == MODEL
        assert kibana.connector(CONNECTOR_ID) is not None
        # An update verifies again.
        provider.update(
            CONNECTOR_ID, props(kibana.url), props(kibana.url, config=config, verify=True)
        )
        assert len(endpoint.received) == 2


def test_verify_failure_on_create_leaves_no_connector(
    kibana: StandInKibana, provider: KibanaConnectorProvider
) -> None:
    with FakeEndpoint("the-real-token") as endpoint:
        config = connector_config(endpoint.chat_url, MODEL, True)
        with pytest.raises(KibanaApiError) as error:
            provider.create(props(kibana.url, config=config, verify=True))
    message = str(error.value)
    assert "Status code: 401" in message
    assert "stack output `apiKey`" in message
    assert "elastic.verify" in message
    assert_no_credentials(error.value)
    assert kibana.connector(CONNECTOR_ID) is None


def test_verify_failure_for_an_untrusted_endpoint_points_at_kibana_settings(
    pki: Pki, provider: KibanaConnectorProvider
) -> None:
    with (
        FakeEndpoint(ENDPOINT_KEY, tls=(pki.certificate_pem, pki.key_pem)) as endpoint,
        StandInKibana(keys=KEYS) as untrusting,
    ):
        config = connector_config(endpoint.chat_url, MODEL, True)
        with pytest.raises(KibanaApiError, match=r"(?s)UNABLE_TO_VERIFY.*kibanaSettings"):
            provider.create(props(untrusting.url, config=config, verify=True))
        assert endpoint.received == []
        # With the CA in customHostSettings (what `kibanaSettings` adds), the same create passes.
        with StandInKibana(keys=KEYS, upstream_ca=pki.ca_pem) as trusting:
            provider.create(props(trusting.url, config=config, verify=True))
            assert trusting.connector(CONNECTOR_ID) is not None
        assert endpoint.received[-1]["authorized"] is True


def test_verify_failure_for_an_unreachable_endpoint_retries_then_hints_firewall(
    kibana: StandInKibana,
) -> None:
    retrying = configured(verify_attempts=2)
    config = connector_config(f"https://127.0.0.1:{closed_port()}/v1/chat/completions", MODEL, True)
    with pytest.raises(KibanaApiError, match=r"(?s)ECONNREFUSED.*apiCidrs"):
        retrying.create(props(kibana.url, config=config, verify=True))
    executes = [r for r in kibana.requests if r.path.endswith("/_execute")]
    assert len(executes) == 2


def test_verify_failure_on_update_fails_the_update(
    kibana: StandInKibana, provider: KibanaConnectorProvider
) -> None:
    provider.create(props(kibana.url))
    config = connector_config(f"http://127.0.0.1:{closed_port()}/v1/chat/completions", MODEL, True)
    with pytest.raises(KibanaApiError, match="could not run connector"):
        provider.update(
            CONNECTOR_ID, props(kibana.url), props(kibana.url, config=config, verify=True)
        )
    assert kibana.connector(CONNECTOR_ID) is not None


def test_hints_follow_kibanas_words() -> None:
    assert "kibanaSettings" in verification_hint("SELF_SIGNED_CERT_IN_CHAIN - self-signed")
    assert "apiCidrs" in verification_hint("ETIMEDOUT - connect ETIMEDOUT 203.0.113.10:443")
    assert "`apiKey`" in verification_hint("Status code: 401. Message: Unauthorized API Error")
    generic = verification_hint("something else")
    assert "kibanaSettings" in generic
    assert "apiCidrs" in generic


# ------------------------------------------------------------------------------------------------
# The provider as Pulumi stores it


def test_provider_round_trips_through_its_serialized_form() -> None:
    serialized = serialize_provider(KibanaConnectorProvider(request_timeout=7))
    assert KIBANA_KEY not in base64.b64decode(serialized).decode("latin-1")
    # The dynamic provider process runs in the project directory; it must load the provider there.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import base64, sys, dill; "
            "p = dill.loads(base64.b64decode(sys.stdin.read())); "
            "print(type(p).__name__, p.request_timeout)",
        ],
        input=serialized,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    assert loaded.stdout.split() == ["KibanaConnectorProvider", "7"]


def test_the_pickled_provider_names_this_module_and_class() -> None:
    # dill pickles the class by reference: every stack's state names this module and class, so a
    # rename or a move breaks every existing stack's refresh, update and destroy.
    raw = base64.b64decode(serialize_provider(KibanaConnectorProvider()))
    assert KibanaConnectorProvider.__module__ == "components.kibana_connector"
    assert b"components.kibana_connector" in raw
    assert b"KibanaConnectorProvider" in raw


# ------------------------------------------------------------------------------------------------
# The Kibana API key comes from the current stack configuration: rotation, older states


KEY_A = base64.b64encode(b"rotation-key-id-a:rotation-key-secret-a").decode()
KEY_B = base64.b64encode(b"rotation-key-id-b:rotation-key-secret-b").decode()


@pytest.fixture
def kibana_ab() -> Iterator[StandInKibana]:
    with StandInKibana(keys={KEY_A: "all", KEY_B: "all"}) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def sdk_dynamic_main() -> ModuleType:
    return load_sdk_dynamic_main("sdk_dynamic_main")


@pytest.fixture
def get_provider(sdk_dynamic_main: ModuleType) -> Iterator[Callable[..., Any]]:
    """The SDK's get_provider(props, config), with its per-process cache cleared around a test."""
    cache: dict[str, Any] = sdk_dynamic_main._PROVIDER_CACHE
    cache.clear()
    yield sdk_dynamic_main.get_provider
    cache.clear()


def test_a_rotated_key_reads_updates_verifies_and_deletes(kibana_ab: StandInKibana) -> None:
    kibana = kibana_ab
    with FakeEndpoint(ENDPOINT_KEY) as endpoint:
        config = connector_config(endpoint.chat_url, MODEL, True)
        created = configured(KEY_A).create(props(kibana.url, config=config, verify=True))
        assert created.outs is not None
        assert "kibana_api_key" not in created.outs  # the state holds no key to go stale
        assert set(kibana.keys_used()) == {KEY_A}
        state = {**created.outs, "__provider": "serialized-provider"}

        # Rotate: the stack config now holds B, and A is revoked in Kibana.
        kibana.revoke(KEY_A)
        rotated = len(kibana.requests)
        provider = configured(KEY_B)
        desired = props(kibana.url, config=config, verify=True)
        assert provider.diff(CONNECTOR_ID, state, desired).changes is False  # nothing to update

        refreshed = provider.read(CONNECTOR_ID, state)
        assert refreshed.id == CONNECTOR_ID
        assert refreshed.outs is not None
        assert provider.diff(CONNECTOR_ID, refreshed.outs, desired).changes is False
        updated = provider.update(
            CONNECTOR_ID, refreshed.outs, props(kibana.url, config=config, verify=True, name="r")
        )
        assert updated.outs is not None
        assert "kibana_api_key" not in updated.outs
        stored = kibana.connector(CONNECTOR_ID)
        assert stored is not None
        assert stored["name"] == "r"
        assert endpoint.received[-1]["authorized"] is True  # verified again, through Kibana
        provider.delete(CONNECTOR_ID, {**updated.outs, "__provider": "serialized-provider"})
    assert kibana.connector(CONNECTOR_ID) is None
    calls = [(r.method, r.path.rsplit("/", 1)[-1]) for r in kibana.requests[rotated:]]
    assert calls == [
        ("GET", CONNECTOR_ID),
        ("PUT", CONNECTOR_ID),
        ("POST", "_execute"),
        ("DELETE", CONNECTOR_ID),
    ]
    assert kibana.keys_used()[rotated:] == [KEY_B] * 4


def test_an_older_state_holding_the_kibana_key_plans_no_change_and_uses_the_config(
    kibana_ab: StandInKibana,
) -> None:
    kibana = kibana_ab
    created = configured(KEY_A).create(props(kibana.url))
    assert created.outs is not None
    # What versions before this one wrote: the Kibana API key among the properties.
    old_state = {**created.outs, "kibana_api_key": KEY_A, "__provider": "serialized-provider"}
    kibana.revoke(KEY_A)
    rotated = len(kibana.requests)
    provider = configured(KEY_B)
    desired = props(kibana.url)

    diff = provider.diff(CONNECTOR_ID, old_state, desired)
    assert diff.changes is False
    assert diff.replaces == []
    refreshed = provider.read(CONNECTOR_ID, old_state)
    assert refreshed.outs is not None
    assert "kibana_api_key" not in refreshed.outs  # the refresh drops the stale copy
    updated = provider.update(CONNECTOR_ID, old_state, props(kibana.url, name="renamed"))
    assert updated.outs is not None
    assert "kibana_api_key" not in updated.outs
    provider.delete(CONNECTOR_ID, old_state)
    assert kibana.connector(CONNECTOR_ID) is None
    assert kibana.keys_used()[rotated:] == [KEY_B] * 3


def test_without_a_configured_key_only_an_older_state_key_is_used(
    kibana: StandInKibana,
) -> None:
    # A CLI before 3.139 passes dynamic providers no config at all.
    configured(KIBANA_KEY).create(props(kibana.url))
    legacy = configured(None)
    old_state = {**props(kibana.url), "kibana_api_key": KIBANA_KEY}
    refreshed = legacy.read(CONNECTOR_ID, old_state)
    assert refreshed.outs is not None
    assert refreshed.outs["kibana_api_key"] == KIBANA_KEY  # the only key a destroy could use
    for call in (
        lambda: legacy.create(props(kibana.url)),
        lambda: legacy.read(CONNECTOR_ID, props(kibana.url)),  # a config problem: no warning
        lambda: legacy.update(CONNECTOR_ID, props(kibana.url), props(kibana.url, name="x")),
        lambda: legacy.delete(CONNECTOR_ID, props(kibana.url)),
        lambda: KibanaConnectorProvider().delete(CONNECTOR_ID, props(kibana.url)),
    ):
        with pytest.raises(KibanaApiError, match=r"vllm-gcp:kibanaApiKey.*3\.139"):
            call()
    legacy.delete(CONNECTOR_ID, old_state)
    assert kibana.connector(CONNECTOR_ID) is None


def test_the_sdk_unpickles_and_configures_the_provider_with_the_current_key(
    kibana_ab: StandInKibana, get_provider: Callable[..., Any]
) -> None:
    kibana = kibana_ab
    kibana.revoke(KEY_A)
    serialized = serialize_provider(KibanaConnectorProvider(request_timeout=3))

    def provider_process() -> Any:
        # The Configure RPC's config (stack config, namespaced); then each RPC's get_provider.
        provider = get_provider({"__provider": serialized}, stack_config(KEY_B))
        desired = props(kibana.url, __provider=serialized)
        created = provider.create(desired)
        state = {**created.outs, "__provider": serialized}
        assert get_provider(state, stack_config(KEY_A)) is provider  # configured once
        assert provider.read(CONNECTOR_ID, state).id == CONNECTOR_ID
        provider.update(CONNECTOR_ID, state, {**desired, "name": "renamed"})
        provider.delete(CONNECTOR_ID, state)
        return provider

    provider = in_provider_thread(provider_process)
    assert type(provider) is KibanaConnectorProvider
    assert [r.method for r in kibana.requests] == ["POST", "GET", "PUT", "DELETE"]
    assert kibana.keys_used() == [KEY_B] * 4
    assert kibana.connector(CONNECTOR_ID) is None


@pytest.mark.parametrize("config_key", [KIBANA_KEY, None], ids=["config", "no config"])
def test_a_provider_pickled_by_an_earlier_version_still_works(
    kibana: StandInKibana, get_provider: Callable[..., Any], config_key: str | None
) -> None:
    configured(KIBANA_KEY).create(props(kibana.url))
    # An earlier version's pickle: the instance __dict__ its __init__ made, nothing added since.
    old = KibanaConnectorProvider.__new__(KibanaConnectorProvider)
    old.__dict__.update(
        request_timeout=3.0, verify_timeout=10.0, verify_attempts=1, verify_retry_delay=0.0
    )
    serialized = serialize_provider(old)
    # With the key in the config (CLI 3.139+) the state's copy, long revoked, is not used; with
    # no config (an older CLI) the state's copy is the only key there is.
    legacy = "c3RhbGUta2V5LWxvbmctcmV2b2tlZA==" if config_key else KIBANA_KEY
    old_state = {**props(kibana.url, __provider=serialized), "kibana_api_key": legacy}

    def provider_process() -> Any:
        provider = get_provider(old_state, stack_config(config_key))
        refreshed = provider.read(CONNECTOR_ID, old_state)
        provider.delete(CONNECTOR_ID, old_state)
        return refreshed

    refreshed = in_provider_thread(provider_process)
    assert refreshed.id == CONNECTOR_ID
    assert kibana.keys_used()[1:] == [KIBANA_KEY, KIBANA_KEY]
    assert kibana.connector(CONNECTOR_ID) is None


# ------------------------------------------------------------------------------------------------
# Kibana down: a refresh keeps the state and warns; create, update and delete still fail


@contextmanager
def hangs_up() -> Generator[int]:
    """A port that accepts TCP and closes at once, as a load balancer with no backend does: a
    TLS handshake there ends before it starts."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


OUTAGES = (
    "connection refused",
    "503",
    "timeout",
    "name not found",
    "tls hang-up",
    "key revoked (401)",
    "key without privilege (403)",
)


def assert_refresh_keeps_state(
    provider: KibanaConnectorProvider,
    state: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> str:
    """Refresh as the provider process does; the old state comes back unchanged, with a warning."""
    capsys.readouterr()
    refreshed = in_provider_thread(lambda: provider.read(CONNECTOR_ID, state))
    warning = capsys.readouterr().err
    assert refreshed.id == CONNECTOR_ID
    assert refreshed.outs == {k: v for k, v in state.items() if k != "__provider"}
    assert warning.startswith(f"warning: Kibana connector {CONNECTOR_ID}: refresh could not read")
    assert "kept unchanged" in warning
    for secret in (KIBANA_KEY, READ_ONLY_KEY, NO_ACCESS_KEY, ENDPOINT_KEY):
        assert secret not in warning
    return warning


@pytest.mark.parametrize("outage", OUTAGES)
def test_refresh_during_an_outage_keeps_the_state_and_warns(
    kibana: StandInKibana, capsys: pytest.CaptureFixture[str], outage: str
) -> None:
    created = configured(KIBANA_KEY).create(props(kibana.url))
    assert created.outs is not None
    state = {**created.outs, "__provider": "serialized-provider"}
    provider = configured(KIBANA_KEY)
    with ExitStack() as stack:
        if outage == "connection refused":
            kibana.stop()
            expected = "Cannot connect to Kibana"
        elif outage == "503":
            kibana.unavailable = True
            expected = "Kibana answered 503 while reading the connector: Kibana server is not"
        elif outage == "timeout":
            kibana.stall_seconds = 2
            provider = configured(KIBANA_KEY, request_timeout=0.2)
            expected = "did not answer within 0.2 s while reading"
        elif outage == "name not found":
            state["kibana_url"] = "http://kibana.invalid"
            expected = "Kibana at http://kibana.invalid"
        elif outage == "tls hang-up":
            state["kibana_url"] = f"https://127.0.0.1:{stack.enter_context(hangs_up())}"
            expected = "Kibana at https://127.0.0.1"
        elif outage == "key revoked (401)":
            kibana.revoke(KIBANA_KEY)
            expected = "refused the API key (401)"
        else:
            provider = configured(NO_ACCESS_KEY)
            expected = "lacks a privilege (403)"
        warning = assert_refresh_keeps_state(provider, state, capsys)
        assert expected in warning


def test_refresh_after_the_outage_reads_kibana_again(
    kibana: StandInKibana, provider: KibanaConnectorProvider, capsys: pytest.CaptureFixture[str]
) -> None:
    created = provider.create(props(kibana.url))
    assert created.outs is not None
    state = {**created.outs, "__provider": "serialized-provider"}
    kibana.stop()
    assert_refresh_keeps_state(provider, state, capsys)
    kibana.start()
    stored = kibana.connector(CONNECTOR_ID)
    assert stored is not None
    stored["name"] = "renamed in Kibana"
    refreshed = provider.read(CONNECTOR_ID, state)
    assert refreshed.outs is not None
    assert refreshed.outs["name"] == "renamed in Kibana"
    kibana.connectors.clear()
    assert not provider.read(CONNECTOR_ID, state).id  # a 404 still means gone


@pytest.mark.parametrize("outage", ["closed port", "503"])
def test_create_update_and_delete_fail_while_kibana_is_down(
    kibana: StandInKibana, provider: KibanaConnectorProvider, outage: str
) -> None:
    state = props(kibana.url)
    provider.create(state)
    if outage == "closed port":
        state = props(f"http://127.0.0.1:{closed_port()}")
        expected = r"Cannot connect to Kibana at .* while {}.*elastic\.kibanaUrl"
    else:
        kibana.unavailable = True
        expected = r"Kibana answered 503 while {}"
    with pytest.raises(KibanaApiError, match=expected.format("creating")):
        provider.create(state)
    with pytest.raises(KibanaApiError, match=expected.format("updating")) as error:
        provider.update(CONNECTOR_ID, state, {**state, "name": "renamed"})
    assert_no_credentials(error.value)
    with pytest.raises(KibanaApiError, match=expected.format("deleting")) as error:
        provider.delete(CONNECTOR_ID, state)
    assert_no_credentials(error.value)
    assert kibana.connector(CONNECTOR_ID) is not None
