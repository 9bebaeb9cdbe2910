"""The rendered Nginx site against the real Nginx, in front of the OpenAI stand-in."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from components.host_bundle import (
    WORKER_CONNECTIONS,
    WORKER_RLIMIT_NOFILE,
    ProxyPaths,
    SiteSettings,
    file_bundle,
    letsencrypt_script,
    nginx_site,
    proxy_script,
)
from tools.standins.nginx import NGINX, NginxProxy, free_port, main_config
from tools.standins.openai_upstream import OpenAIUpstream
from tools.standins.pki import loopback_pki

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason=f"{NGINX} is not installed")

KEY = "s3cr3t-Token_0123456789abcdefghijklmnopqrstuv"
AUTH = {"Authorization": f"Bearer {KEY}"}
# vLLM routes that answer without its API key, and /v1/ routes a client has no business with.
FORBIDDEN_PATHS = [
    "/metrics",
    "/tokenize",
    "/detokenize",
    "/invocations",
    "/pause",
    "/resume",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/version",
    "/health",
    "/ping",
    "/server_info",
    "/reset_prefix_cache",
    "/sleep",
    "/collective_rpc",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/v1/models/../../metrics",
    "/v1/chat/completions/extra",
    "/",
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream(model="test-model", api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: OpenAIUpstream) -> Iterator[NginxProxy]:
    with NginxProxy(upstream.port, api_key=KEY) as nginx:
        yield nginx


@pytest.fixture
def client(proxy: NginxProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.https_url, verify=proxy.ssl_context(), timeout=30) as http:
        yield http


def _openai(proxy: NginxProxy, api_key: str = KEY) -> openai.OpenAI:
    http = openai.DefaultHttpxClient(verify=proxy.ssl_context(), timeout=30)
    return openai.OpenAI(base_url=f"{proxy.https_url}/v1", api_key=api_key, http_client=http)


def _since(upstream: OpenAIUpstream, count: int) -> list[str]:
    """The paths of the requests whose header reached the upstream since `count` arrivals."""
    return [r.path for r in upstream.arrivals[count:]]


# --- the official client ---------------------------------------------------------------------


def test_openai_client_lists_models_and_chats(proxy: NginxProxy) -> None:
    llm = _openai(proxy)
    assert [m.id for m in llm.models.list()] == ["test-model"]
    reply = llm.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hello"}]
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 16


def test_openai_client_streams(proxy: NginxProxy) -> None:
    stream = _openai(proxy).chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == [f"tok{i}" for i in range(16)]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16


def test_openai_client_gets_tool_calls(proxy: NginxProxy) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_alerts",
            "description": "Security alerts",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    reply = _openai(proxy).chat.completions.create(
        model="test-model",
        messages=[{"role": "user", "content": "any alerts?"}],
        tools=[tool],  # pyright: ignore[reportArgumentType]
    )
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert calls is not None and calls[0].function.name == "get_alerts"  # pyright: ignore[reportAttributeAccessIssue]


def test_openai_client_with_wrong_key_is_refused(
    proxy: NginxProxy, upstream: OpenAIUpstream
) -> None:
    seen = len(upstream.arrivals)
    with pytest.raises(openai.AuthenticationError):
        _openai(proxy, api_key="wrong-key").models.list()
    assert _since(upstream, seen) == []


# --- TLS ---------------------------------------------------------------------------------------


def _handshake(proxy: NginxProxy, version: ssl.TLSVersion) -> tuple[str | None, str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(proxy.ca_path)
    context.minimum_version = context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer what old clients would
    with (
        socket.create_connection(("127.0.0.1", proxy.https_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        cipher = tls.cipher()
        return tls.version(), cipher[0] if cipher else ""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_client_could_connect_elsewhere_but_is_refused(
    proxy: NginxProxy, tmp_path: Path
) -> None:
    # Control: this client does speak TLS 1.1 to a server that allows it.
    _, certificate, key = loopback_pki().write(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificate, key)
    server_context.minimum_version = ssl.TLSVersion.TLSv1_1
    server_context.set_ciphers("ALL:@SECLEVEL=0")
    listener = socket.create_server(("127.0.0.1", 0))
    negotiated: list[str | None] = []

    def serve_once() -> None:
        connection, _ = listener.accept()
        with server_context.wrap_socket(connection, server_side=True) as tls:
            negotiated.append(tls.version())

    server = threading.Thread(target=serve_once)
    server.start()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with (
        socket.create_connection(listener.getsockname(), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        assert tls.version() == "TLSv1.1"
    server.join(5)
    listener.close()
    assert negotiated == ["TLSv1.1"]

    with pytest.raises(ssl.SSLError):
        _handshake(proxy, ssl.TLSVersion.TLSv1_1)
    with pytest.raises(ssl.SSLError):
        _handshake(proxy, ssl.TLSVersion.TLSv1)


def test_tls_1_2_and_1_3_with_modern_ciphers(proxy: NginxProxy) -> None:
    version, cipher = _handshake(proxy, ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
    assert _handshake(proxy, ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"


def test_hsts_and_no_version_on_every_answer(client: httpx.Client) -> None:
    for response in (
        client.get("/v1/models", headers=AUTH),
        client.get("/v1/models"),
        client.get("/metrics"),
    ):
        assert response.headers["strict-transport-security"] == "max-age=63072000"
        assert response.headers["server"] == "nginx"
        assert "1.2" not in response.text


def test_plain_http_only_redirects_or_serves_acme(proxy: NginxProxy) -> None:
    with httpx.Client(base_url=proxy.http_url) as http:
        for path in ("/v1/models", "/metrics"):
            response = http.get(path, headers=AUTH)
            assert response.status_code == 301
            assert response.headers["location"] == f"https://127.0.0.1{path}"
        challenge = Path(proxy.settings.acme_webroot) / ".well-known" / "acme-challenge"
        challenge.mkdir(parents=True)
        (challenge / "token123").write_text("token123.thumbprint")
        (challenge / "token123").chmod(0o644)
        for directory in (challenge, challenge.parent):
            directory.chmod(0o755)
        response = http.get("/.well-known/acme-challenge/token123")
        assert response.status_code == 200
        assert response.text == "token123.thumbprint"


# --- routes and the token ------------------------------------------------------------------------


def test_other_routes_are_404_and_never_reach_vllm(
    client: httpx.Client, upstream: OpenAIUpstream
) -> None:
    seen = len(upstream.arrivals)
    for path in FORBIDDEN_PATHS:
        for method in ("GET", "POST"):
            response = client.request(method, path, headers=AUTH, content=b"{}")
            assert response.status_code == 404, (method, path)
    assert _since(upstream, seen) == []


def _raw_https(proxy: NginxProxy, request: bytes) -> bytes:
    """One request sent byte for byte (clients normalise paths such as /a/../b)."""
    context = ssl.create_default_context(cafile=str(proxy.ca_path))
    with (
        socket.create_connection(("127.0.0.1", proxy.https_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(request)
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
        return received


def test_vllm_gets_the_path_nginx_checked(proxy: NginxProxy, upstream: OpenAIUpstream) -> None:
    seen = len(upstream.arrivals)
    # vLLM mounts /metrics as a prefix: /metrics/../v1/models passed on raw would be its /metrics.
    # Only the exact request line of a route gets past Nginx's first check.
    for path in (
        "/metrics/../v1/models",
        "/metrics/%2e%2e/v1/models",
        "/v1/./models",
        "//v1/models",
    ):
        reply = _raw_https(
            proxy,
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert reply.startswith(b"HTTP/1.1 404"), reply[:80]
    reply = _raw_https(
        proxy,
        f"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.1 200"), reply[:80]
    assert [a.path for a in upstream.arrivals[seen:]] == ["/v1/models"]


def test_client_host_header_never_reaches_vllm(
    client: httpx.Client, upstream: OpenAIUpstream
) -> None:
    seen = len(upstream.requests)
    assert client.get("/v1/models", headers={**AUTH, "Host": "evil.example"}).status_code == 200
    assert upstream.requests[seen].headers["host"] == f"127.0.0.1:{upstream.port}"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
    ],
)
def test_missing_or_wrong_token_is_401(
    client: httpx.Client, upstream: OpenAIUpstream, headers: dict[str, str]
) -> None:
    seen = len(upstream.arrivals)
    response = client.post("/v1/chat/completions", headers=headers, json={"model": "test-model"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["type"] == "authentication_error"
    assert _since(upstream, seen) == []


def test_token_reaches_vllm_which_checks_it_too(
    client: httpx.Client, upstream: OpenAIUpstream
) -> None:
    seen = len(upstream.requests)
    assert client.get("/v1/models", headers=AUTH).status_code == 200
    assert upstream.requests[seen].headers["authorization"] == f"Bearer {KEY}"


def test_wrong_tokens_are_rate_limited_per_address_right_token_never() -> None:
    with OpenAIUpstream(api_key=KEY) as upstream, NginxProxy(upstream.port, api_key=KEY) as proxy:
        verify = proxy.ssl_context()
        with httpx.Client(base_url=proxy.https_url, verify=verify) as http:
            wrong = [
                http.get("/v1/models", headers={"Authorization": "Bearer x"}) for _ in range(25)
            ]
            codes = [r.status_code for r in wrong]
            assert codes[:5] == [401] * 5
            assert codes[-5:] == [429] * 5
            assert wrong[-1].json()["error"]["type"] == "rate_limit_error"
            right = [http.get("/v1/models", headers=AUTH).status_code for _ in range(40)]
            assert right == [200] * 40
            assert http.get("/v1/models").status_code == 429  # still limited
        other_source = httpx.HTTPTransport(verify=verify, local_address="127.0.0.2")
        with httpx.Client(base_url=proxy.https_url, transport=other_source) as http:
            assert http.get("/v1/models", headers={"Authorization": "Bearer x"}).status_code == 401


# --- streaming, timeouts, sizes, keep-alive ------------------------------------------------------


def test_events_stream_through_unbuffered_and_slow_replies_survive() -> None:
    delay, tokens = 0.25, 8  # the stand-in takes 2 s for a reply
    with (
        OpenAIUpstream(api_key=KEY, stream_delay_s=delay, tokens_per_reply=tokens) as upstream,
        NginxProxy(upstream.port, api_key=KEY) as proxy,
        httpx.Client(base_url=proxy.https_url, verify=proxy.ssl_context(), timeout=30) as http,
    ):
        body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
        start = time.monotonic()
        arrivals: list[float] = []
        with http.stream(
            "POST", "/v1/chat/completions", headers=AUTH, json={**body, "stream": True}
        ) as response:
            for line in response.iter_lines():
                if '"content": "tok' in line:
                    arrivals.append(time.monotonic() - start)
        assert len(arrivals) == tokens
        # Buffered, every event would arrive together at the end (~2 s).
        assert arrivals[0] < 1.0
        assert arrivals[-1] - arrivals[0] > 1.0

        start = time.monotonic()
        response = http.post("/v1/chat/completions", headers=AUTH, json=body)
        assert response.status_code == 200
        assert time.monotonic() - start > delay * tokens * 0.9
    timeouts = re.findall(r'proxy_(read|send)_timeout "(\d+)s";', proxy.site_text)
    assert {kind for kind, _ in timeouts} == {"read", "send"}
    assert all(int(seconds) >= 600 for _, seconds in timeouts)


def test_16_mb_prompt_reaches_vllm_intact(client: httpx.Client, upstream: OpenAIUpstream) -> None:
    seen = len(upstream.requests)
    prompt = "alert " * (16 * 1024 * 1024 // 6 + 1)
    response = client.post(
        "/v1/chat/completions",
        headers=AUTH,
        json={"model": "test-model", "messages": [{"role": "user", "content": prompt}]},
    )
    assert response.status_code == 200
    assert len(upstream.requests[seen].body) > 16 * 1024 * 1024


def test_body_over_the_limit_is_413_without_reaching_vllm(
    client: httpx.Client, upstream: OpenAIUpstream
) -> None:
    seen = len(upstream.arrivals)
    response = client.post("/v1/chat/completions", headers=AUTH, content=b"x" * (33 * 1024 * 1024))
    assert response.status_code == 413
    assert _since(upstream, seen) == []


def test_upstream_connections_are_kept_alive(
    client: httpx.Client, upstream: OpenAIUpstream
) -> None:
    seen = len(upstream.requests)
    for _ in range(20):
        assert client.get("/v1/models", headers=AUTH).status_code == 200
    recorded = upstream.requests[seen:]
    assert len({r.client_port for r in recorded}) <= 4  # one per Nginx worker, give or take
    assert all("connection" not in r.headers for r in recorded)


def test_access_log_never_records_the_token(client: httpx.Client, proxy: NginxProxy) -> None:
    client.get("/v1/models", headers=AUTH)
    client.get("/v1/models?api_key=" + KEY, headers=AUTH)
    client.get("/metrics", headers={"Authorization": f"Bearer {KEY}-wrong"})
    log = proxy.access_log()
    assert "GET /v1/models HTTP/1.1" in log
    assert KEY not in log
    assert KEY not in proxy.error_log()


def test_api_cidrs_refuse_other_sources() -> None:
    with (
        OpenAIUpstream(api_key=KEY) as upstream,
        NginxProxy(upstream.port, api_key=KEY, api_cidrs=["10.0.0.0/8", "127.0.0.2/32"]) as proxy,
    ):
        verify = proxy.ssl_context()
        with httpx.Client(base_url=proxy.https_url, verify=verify) as http:
            response = http.get("/v1/models", headers=AUTH)
            assert response.status_code == 403
            assert response.json()["error"]["type"] == "permission_error"
        assert upstream.requests == []
        allowed = httpx.HTTPTransport(verify=verify, local_address="127.0.0.2")
        with httpx.Client(base_url=proxy.https_url, transport=allowed) as http:
            assert http.get("/v1/models", headers=AUTH).status_code == 200


# --- raw exchanges -------------------------------------------------------------------------------


def _exchange(
    proxy: NginxProxy,
    head: str,
    body: Iterable[bytes] = (),
    *,
    plain_http: bool = False,
) -> tuple[int, dict[str, str], bytes]:
    """One request sent byte for byte (header lines as given, then `body`), and its answer:
    status, headers (lower-case names) and body. Sending stops where Nginx stops reading."""
    port = proxy.http_port if plain_http else proxy.https_port
    connection: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=20)
    if not plain_http:
        connection = proxy.ssl_context().wrap_socket(connection, server_hostname="localhost")
    with connection:
        try:
            connection.sendall(head.encode())
            for part in body:
                connection.sendall(part)
        except OSError:
            pass  # Nginx answered and closed before the whole body was sent
        received = b""
        while b"\r\n\r\n" not in received and (chunk := connection.recv(65536)):
            received += chunk
        header_text, _, rest = received.partition(b"\r\n\r\n")
        status_line, *lines = header_text.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length and (chunk := connection.recv(65536)):
            rest += chunk
    return int(status_line.split()[1]), headers, rest


def _head(request_line: str, *headers: str) -> str:
    return "\r\n".join([request_line, "Host: localhost", *headers, "Connection: close", "", ""])


def _chunked(total: int, size: int = 65536) -> Iterator[bytes]:
    """A chunked body of `total` bytes, ending with the last chunk."""
    while total > 0:
        part = min(size, total)
        yield f"{part:x}\r\n".encode() + b"x" * part + b"\r\n"
        total -= part
    yield b"0\r\n\r\n"


OVER_THE_LIMIT = 33 * 1024 * 1024  # the site's client_max_body_size is 32m


# --- the token check is exact ---------------------------------------------------------------------

# Authorization values that are not exactly "Bearer <KEY>": each is refused by Nginx itself.
NEAR_MISSES = {
    "scheme in lower case": f"bearer {KEY}",
    "scheme in upper case": f"BEARER {KEY}",
    "key in upper case": f"Bearer {KEY.upper()}",
    "key in lower case": f"Bearer {KEY.lower()}",
    "one letter of the key in the other case": f"Bearer {KEY[0].upper()}{KEY[1:]}",
    "two spaces": f"Bearer  {KEY}",
    "a tab for the space": f"Bearer\t{KEY}",
    "a tab after the key": f"Bearer {KEY}\t",
    "a prefix of the key": f"Bearer {KEY[:-1]}",
    "the key and a suffix": f"Bearer {KEY}x",
    "the key after a prefix": f"Bearer x{KEY}",
    "the scheme twice": f"Bearer Bearer {KEY}",
}


@pytest.fixture(scope="module")
def lenient_proxy(upstream: OpenAIUpstream) -> Iterator[NginxProxy]:
    """The site with a brute-force burst large enough for a table of wrong tokens."""
    with NginxProxy(upstream.port, api_key=KEY, failed_auth_burst=1000) as nginx:
        yield nginx


@pytest.mark.parametrize("value", list(NEAR_MISSES.values()), ids=list(NEAR_MISSES))
def test_only_the_exact_token_passes(
    lenient_proxy: NginxProxy, upstream: OpenAIUpstream, value: str
) -> None:
    seen = len(upstream.arrivals)
    status, headers, body = _exchange(
        lenient_proxy, _head("GET /v1/models HTTP/1.1", f"Authorization: {value}")
    )
    assert status == 401, value
    assert headers["www-authenticate"].startswith("Bearer")
    assert b"authentication_error" in body
    assert _since(upstream, seen) == []


def test_spaces_around_the_value_are_not_part_of_it(
    proxy: NginxProxy, upstream: OpenAIUpstream
) -> None:
    # RFC 9110, 5.5: a field value excludes the whitespace around it. Nginx drops it before the
    # check, and vLLM gets the very value Nginx compared.
    seen = len(upstream.arrivals)
    head = _head("GET /v1/models HTTP/1.1", f"Authorization:   Bearer {KEY}   ")
    assert _exchange(proxy, head)[0] == 200
    assert [a.headers["authorization"] for a in upstream.arrivals[seen:]] == [f"Bearer {KEY}"]


def test_near_misses_count_against_the_brute_force_limit() -> None:
    with (
        OpenAIUpstream(api_key=KEY) as upstream,
        NginxProxy(upstream.port, api_key=KEY, failed_auth_burst=3) as proxy,
    ):
        statuses = [
            _exchange(proxy, _head("GET /v1/models HTTP/1.1", f"Authorization: {value}"))[0]
            for value in NEAR_MISSES.values()
        ]
        assert statuses[:3] == [401] * 3
        assert statuses[-3:] == [429] * 3
        assert upstream.arrivals == []
        assert (
            _exchange(proxy, _head("GET /v1/models HTTP/1.1", f"Authorization: Bearer {KEY}"))[0]
            == 200
        )


# --- methods --------------------------------------------------------------------------------------

ROUTE_METHODS = {
    "/v1/models": "GET",
    "/v1/chat/completions": "POST",
    "/v1/completions": "POST",
    "/v1/embeddings": "POST",
}
OTHER_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "PROPFIND")


@pytest.mark.parametrize("route", sorted(ROUTE_METHODS))
def test_other_methods_are_405_and_never_reach_vllm(
    proxy: NginxProxy, upstream: OpenAIUpstream, route: str
) -> None:
    seen = len(upstream.arrivals)
    allowed = ROUTE_METHODS[route]
    for method in OTHER_METHODS:
        if method == allowed:
            continue
        head = _head(
            f"{method} {route} HTTP/1.1",
            f"Authorization: Bearer {KEY}",
            "Content-Type: application/json",
            "Content-Length: 2",
        )
        status, headers, _ = _exchange(proxy, head, [b"{}"])
        assert status == 405, (method, route)
        assert headers["allow"] == allowed, (method, route)
    assert _since(upstream, seen) == []


# --- nothing writes the token to a log ------------------------------------------------------------


def _query_shapes(name: str) -> list[str]:
    return [
        f"/v1/models?{name}={KEY}",
        f"/v1/chat/completions?stream=true&{name}={KEY}",
    ]


@pytest.mark.parametrize("level", ["error", "info"])
def test_no_request_shape_writes_the_token_to_a_log(level: str) -> None:
    right = f"Authorization: Bearer {KEY}"
    with (
        OpenAIUpstream(api_key=KEY) as upstream,
        NginxProxy(
            upstream.port, api_key=KEY, failed_auth_burst=2, main={"error_level": level}
        ) as proxy,
    ):
        # The token in the query string, under any name, with or without the right header.
        for name in ("api_key", "key", "token", "access_token", "x"):
            for target in _query_shapes(name):
                method = "GET" if target.startswith("/v1/models") else "POST"
                for headers in ((), (right,)):
                    status, _, body = _exchange(
                        proxy, _head(f"{method} {target} HTTP/1.1", *headers)
                    )
                    assert status == 400, target
                    assert b"no query string" in body
        # Rate-limited: wrong tokens until 429, then the token in the query string.
        wrong = _head("GET /v1/models HTTP/1.1", "Authorization: Bearer wrong")
        assert [_exchange(proxy, wrong)[0] for _ in range(5)][-1] == 429
        assert _exchange(proxy, _head(f"GET /v1/models?api_key={KEY} HTTP/1.1"))[0] == 400
        # Oversized bodies, declared and chunked, with the token in the query string and with
        # the right header.
        post = f"POST /v1/chat/completions?api_key={KEY} HTTP/1.1"
        declared = f"Content-Length: {OVER_THE_LIMIT}"
        chunked = "Transfer-Encoding: chunked"
        assert _exchange(proxy, _head(post, declared))[0] == 400
        assert _exchange(proxy, _head(post, chunked), _chunked(OVER_THE_LIMIT))[0] == 400
        post = "POST /v1/chat/completions HTTP/1.1"
        assert _exchange(proxy, _head(post, right, declared))[0] == 413
        assert _exchange(proxy, _head(post, right, chunked), _chunked(OVER_THE_LIMIT))[0] == 413
        # The right header, and the malformed header lines Nginx logs in full at info level.
        assert _exchange(proxy, _head("GET /v1/models HTTP/1.1", right))[0] == 200
        assert _exchange(proxy, _head("GET /v1/models HTTP/1.1", right, right))[0] == 400
        underscored = f"X_Authorization: Bearer {KEY}"
        assert _exchange(proxy, _head("GET /v1/models HTTP/1.1", right, underscored))[0] == 200
        # Plain HTTP: a large POST and an ACME path, each with the token in the query string.
        large = _head(f"POST /?api_key={KEY} HTTP/1.1", "Content-Length: 4000000")
        assert _exchange(proxy, large, [b"x" * 65536], plain_http=True)[0] == 301
        acme = _head(f"GET /.well-known/acme-challenge/missing?api_key={KEY} HTTP/1.1")
        assert _exchange(proxy, acme, plain_http=True)[0] == 301
        missing = _head("GET /.well-known/acme-challenge/missing HTTP/1.1")
        assert _exchange(proxy, missing, plain_http=True)[0] == 404

        time.sleep(0.2)  # the workers' last lines
        error_log, access_log = proxy.error_log(), proxy.access_log()
    # The lines that quote the request line were written: without the token.
    assert "limiting requests" in error_log
    assert "client intended to send too large body" in error_log
    assert "client intended to send too large chunked body" in error_log
    assert KEY not in error_log
    assert KEY not in access_log
    assert "/.well-known/acme-challenge/missing" not in error_log  # log_not_found off
    assert all("?" not in arrival.path for arrival in upstream.arrivals)


# --- bodies over the limit ------------------------------------------------------------------------


def test_an_oversized_chunked_body_is_cut_off_and_vllm_never_runs_it(
    proxy: NginxProxy, upstream: OpenAIUpstream
) -> None:
    seen, answered = len(upstream.arrivals), len(upstream.requests)
    head = _head(
        "POST /v1/chat/completions HTTP/1.1",
        f"Authorization: Bearer {KEY}",
        "Transfer-Encoding: chunked",
    )
    status, _, body = _exchange(proxy, head, _chunked(OVER_THE_LIMIT))
    assert status == 413
    assert json.loads(body)["error"]["code"] == 413
    time.sleep(0.2)  # the upstream notices the closed connection
    # It streamed in up to the limit, then Nginx closed vLLM's connection mid-body.
    assert _since(upstream, seen) == ["/v1/chat/completions"]
    (received,) = [n for a, n in upstream.aborted if a in upstream.arrivals[seen:]]
    assert received <= 32 * 1024 * 1024
    assert len(upstream.requests) == answered
    # Without the right token, none of it is read for vLLM at all.
    seen = len(upstream.arrivals)
    head = _head(
        "POST /v1/chat/completions HTTP/1.1",
        "Authorization: Bearer x",
        "Transfer-Encoding: chunked",
    )
    assert _exchange(proxy, head, _chunked(OVER_THE_LIMIT))[0] == 401
    assert _since(upstream, seen) == []


# --- slow clients ---------------------------------------------------------------------------------


def _stalled(proxy: NginxProxy, kind: str) -> tuple[socket.socket, float]:
    """A connection that sends part of a request and stalls, and when it started."""
    started = time.monotonic()
    connection = socket.create_connection(("127.0.0.1", proxy.https_port), timeout=5)
    if kind == "handshake":
        connection.sendall(b"\x16\x03\x01\x00")  # the start of a TLS ClientHello record
        return connection, started
    tls = proxy.ssl_context().wrap_socket(connection, server_hostname="localhost")
    tls.sendall(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bea")
    return tls, started


def _wait_until_closed(
    connections: list[tuple[socket.socket, float]], deadline: float
) -> list[float]:
    """How long each connection lived until the server closed it (inf: still open)."""
    lifetimes = [float("inf")] * len(connections)
    open_ones = dict(enumerate(connections))
    for connection, _ in connections:
        connection.setblocking(False)
    while open_ones and time.monotonic() < deadline:
        for index, (connection, started) in list(open_ones.items()):
            try:
                closed = connection.recv(1) == b""
            except (BlockingIOError, ssl.SSLWantReadError):
                closed = False
            except OSError:
                closed = True
            if closed:
                lifetimes[index] = time.monotonic() - started
                del open_ones[index]
        time.sleep(0.05)
    return lifetimes


def test_stalled_headers_are_cut_off_and_the_right_token_still_gets_through() -> None:
    header_timeout = 2
    wave = [*["handshake"] * 200, *["header"] * 50]
    # Room for one wave of stalled connections, not two: without the header timeout (Nginx's
    # default is 60 s), the second wave takes every connection and the right token is refused.
    main = {"worker_processes": 1, "worker_connections": 400}
    with (
        OpenAIUpstream(api_key=KEY) as upstream,
        NginxProxy(
            upstream.port, api_key=KEY, client_header_timeout=f"{header_timeout}s", main=main
        ) as proxy,
    ):
        first = [_stalled(proxy, kind) for kind in wave]
        right = _head("GET /v1/models HTTP/1.1", f"Authorization: Bearer {KEY}")
        assert _exchange(proxy, right)[0] == 200
        lifetimes = _wait_until_closed(first, time.monotonic() + header_timeout + 3)
        assert max(lifetimes) < header_timeout + 1.5, sorted(lifetimes)[-5:]
        second = [_stalled(proxy, kind) for kind in wave]
        assert _exchange(proxy, right)[0] == 200
        for connection, _ in second:
            connection.close()
        assert [a.path for a in upstream.arrivals] == ["/v1/models", "/v1/models"]


def test_a_stalled_body_is_cut_off_and_vllm_never_runs_it() -> None:
    body_timeout = 2
    with (
        OpenAIUpstream(api_key=KEY) as upstream,
        NginxProxy(upstream.port, api_key=KEY, client_body_timeout=f"{body_timeout}s") as proxy,
    ):
        connection = socket.create_connection(("127.0.0.1", proxy.https_port), timeout=10)
        with proxy.ssl_context().wrap_socket(connection, server_hostname="localhost") as tls:
            head = _head(
                "POST /v1/chat/completions HTTP/1.1",
                f"Authorization: Bearer {KEY}",
                "Content-Length: 1000",
            )
            started = time.monotonic()
            tls.sendall(head.encode() + b'{"model": ')
            try:
                while tls.recv(65536):
                    pass
            except OSError:
                pass  # reset: reset_timedout_connection
            lived = time.monotonic() - started
        assert body_timeout - 0.5 < lived < body_timeout + 1.5
        time.sleep(0.2)
        assert [(a.path, n) for a, n in upstream.aborted] == [("/v1/chat/completions", 10)]
        assert upstream.requests == []


def test_one_address_has_a_bounded_number_of_requests_in_progress() -> None:
    with (
        OpenAIUpstream(api_key=KEY, stream_delay_s=0.25, tokens_per_reply=8) as upstream,
        NginxProxy(upstream.port, api_key=KEY, connections_per_address=2) as proxy,
    ):
        body = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})
        slow = _head(
            "POST /v1/chat/completions HTTP/1.1",
            f"Authorization: Bearer {KEY}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        )
        statuses: list[int] = []
        holders = [
            threading.Thread(
                target=lambda: statuses.append(_exchange(proxy, slow, [body.encode()])[0])
            )
            for _ in range(2)
        ]
        for holder in holders:
            holder.start()
        deadline = time.monotonic() + 5
        while len(upstream.arrivals) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        right = _head("GET /v1/models HTTP/1.1", f"Authorization: Bearer {KEY}")
        status, _, reply = _exchange(proxy, right)
        assert status == 503
        assert json.loads(reply)["error"]["type"] == "rate_limit_error"
        other = socket.create_connection(
            ("127.0.0.1", proxy.https_port), source_address=("127.0.0.2", 0)
        )
        with proxy.ssl_context().wrap_socket(other, server_hostname="localhost") as tls:
            tls.sendall(right.encode())
            assert tls.recv(12) == b"HTTP/1.1 200"
        for holder in holders:
            holder.join(10)
        assert statuses == [200, 200]
        assert _exchange(proxy, right)[0] == 200
        assert [a.path for a in upstream.arrivals].count("/v1/models") == 2


# --- the remote steps, against the real `nginx -t` ----------------------------------------------


class HostLayout:
    """A Debian-like /etc/nginx in a temporary directory, with `nginx` and `systemctl` on PATH
    standing for the host's (nginx: the real binary on this layout; systemctl: records calls)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o755)
        self.sites_available = root / "sites-available"
        self.sites_enabled = root / "sites-enabled"
        for directory in (self.sites_available, self.sites_enabled, root / "bin"):
            directory.mkdir()
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (root / "temp" / name).mkdir(parents=True)
        self.config = root / "nginx.conf"
        self.config.write_text(main_config(root, self.sites_enabled / "*"))
        self.paths = ProxyPaths(
            site=str(self.sites_available / "vllm-gcp.conf"),
            site_enabled=str(self.sites_enabled / "vllm-gcp.conf"),
            default_site_enabled=str(self.sites_enabled / "default"),
            certificate=str(root / "tls" / "server.crt"),
            certificate_key=str(root / "tls" / "server.key"),
            acme_webroot=str(root / "acme"),
            nginx_conf=str(self.config),
        )
        (self.sites_available / "default").write_text(
            f"server {{ listen 127.0.0.1:{free_port()} default_server; return 404; }}\n"
        )
        (self.sites_enabled / "default").symlink_to(self.sites_available / "default")
        self.systemctl_log = root / "systemctl.log"
        self._tool(
            "nginx",
            f'exec {NGINX} -p {root} -e {root}/error.log -c {self.config} "$@"',
        )
        self._tool("systemctl", f'echo "$*" >>{self.systemctl_log}')

    def _tool(self, name: str, body: str) -> None:
        tool = self.root / "bin" / name
        tool.write_text(f"#!/usr/bin/env bash\n{body}\n")
        tool.chmod(0o755)

    def run(self, script: str, stdin: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": f"{self.root / 'bin'}:{os.environ['PATH']}"}
        return subprocess.run(
            ["bash", "-c", script],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    def site_settings(self, api_key: str) -> SiteSettings:
        return SiteSettings(
            api_key=api_key,
            server_name="localhost",
            certificate_path=self.paths.certificate,
            certificate_key_path=self.paths.certificate_key,
            https_listen=f"127.0.0.1:{free_port()}",
            http_listen=f"127.0.0.1:{free_port()}",
            access_log=str(self.root / "access.log"),
            acme_webroot=self.paths.acme_webroot,
        )


def _site_and_pki(layout: HostLayout, api_key: str = KEY) -> dict[str, str]:
    pki = loopback_pki()
    site = nginx_site(layout.site_settings(api_key))
    return {"site": site, "certificate": pki.certificate_pem, "private_key": pki.key_pem}


def test_configure_step_installs_root_only_files_and_reloads(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "host")
    files = _site_and_pki(layout)
    result = layout.run(proxy_script(layout.paths), file_bundle(files))
    assert result.returncode == 0, result.stderr
    for path, content in (
        (layout.paths.site, files["site"]),
        (layout.paths.certificate, files["certificate"]),
        (layout.paths.certificate_key, files["private_key"]),
    ):
        assert Path(path).read_text() == content
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(layout.paths.certificate).parent.stat().st_mode) == 0o700
    assert os.readlink(layout.paths.site_enabled) == layout.paths.site
    assert not Path(layout.paths.default_site_enabled).exists()
    assert layout.systemctl_log.read_text().splitlines() == [
        "enable --quiet nginx",
        "reload-or-restart nginx",
    ]
    assert KEY not in result.stdout + result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    # The workers, sized in the main configuration the site cannot reach; once.
    sized = layout.config.read_text()
    assert sized.splitlines()[0] == f"worker_rlimit_nofile {WORKER_RLIMIT_NOFILE};"
    assert f"    worker_connections {WORKER_CONNECTIONS};" in sized.splitlines()
    assert layout.run(proxy_script(layout.paths), file_bundle(files)).returncode == 0
    assert layout.config.read_text() == sized


def test_configure_step_sizes_the_distributions_nginx_conf(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "host")
    # As Debian and Ubuntu write it: tab-indented, 768 connections, no file limit.
    debian = layout.config.read_text().replace(
        "    worker_connections 1024;", "\tworker_connections 768;"
    )
    layout.config.write_text(debian)
    assert (
        layout.run(proxy_script(layout.paths), file_bundle(_site_and_pki(layout))).returncode == 0
    )
    assert layout.config.read_text() == (
        f"worker_rlimit_nofile {WORKER_RLIMIT_NOFILE};\n"
        + debian.replace("\tworker_connections 768;", f"\tworker_connections {WORKER_CONNECTIONS};")
    )
    # A configuration without the line to size is left alone, and the step says why.
    layout = HostLayout(tmp_path / "other")
    custom = layout.config.read_text().replace("    worker_connections 1024;\n", "")
    layout.config.write_text(custom)
    result = layout.run(proxy_script(layout.paths), file_bundle(_site_and_pki(layout)))
    assert result.returncode == 1
    assert "has no 'worker_connections N;' line" in result.stderr
    assert layout.config.read_text() == custom
    assert not Path(layout.paths.site).exists()


def test_configure_step_rolls_back_a_config_nginx_rejects(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "host")
    good = _site_and_pki(layout)
    assert layout.run(proxy_script(layout.paths), file_bundle(good)).returncode == 0
    layout.systemctl_log.unlink()
    broken = {
        **good,
        "site": good["site"].replace("proxy_buffering off;", "proxy_buffering maybe;"),
    }
    result = layout.run(proxy_script(layout.paths), file_bundle(broken))
    assert result.returncode == 1
    assert "proxy_buffering" in result.stderr and "nginx -t rejected" in result.stderr
    assert Path(layout.paths.site).read_text() == good["site"]
    assert Path(layout.paths.certificate_key).read_text() == good["private_key"]
    assert not layout.systemctl_log.exists()  # nothing reloaded: the running proxy is untouched
    assert KEY not in result.stdout + result.stderr


def test_configure_step_first_failure_restores_the_default_site(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "host")
    files = _site_and_pki(layout)
    files["site"] = files["site"].replace("ssl_session_tickets off;", "ssl_session_tickets nope;")
    original = layout.config.read_text()
    result = layout.run(proxy_script(layout.paths), file_bundle(files))
    assert result.returncode == 1
    assert layout.config.read_text() == original
    assert not Path(layout.paths.site).exists()
    assert not Path(layout.paths.certificate_key).exists()
    assert not Path(layout.paths.site_enabled).is_symlink()
    assert os.readlink(layout.paths.default_site_enabled) == str(layout.sites_available / "default")


def test_configure_step_refuses_unknown_input(tmp_path: Path) -> None:
    layout = HostLayout(tmp_path / "host")
    result = layout.run(proxy_script(layout.paths), file_bundle({"other": "x"}))
    assert result.returncode == 1
    assert "unknown file 'other'" in result.stderr
    result = layout.run(proxy_script(layout.paths), "")
    assert result.returncode == 1
    assert "no site on stdin" in result.stderr


def test_letsencrypt_step_fails_clearly_when_dns_points_elsewhere(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "certbot", "systemctl", "nginx"):
        (bin_dir / tool).write_text('#!/usr/bin/env bash\necho "unexpected: $0" >&2; exit 99\n')
        (bin_dir / tool).chmod(0o755)
    script = letsencrypt_script("localhost", "ops@example.com", "203.0.113.10")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 1
    assert "resolves to '127.0.0.1', not to this endpoint's address 203.0.113.10" in result.stderr
    assert "unexpected" not in result.stderr
