"""A fleet replica's Nginx site (the single VM's, plus LoadBalancerSite) on the real Nginx, in
front of the OpenAI stand-in. Loopback stands for the network: 127.0.0.1 is the load balancer's
proxy subnet and health checkers, 192.0.2.10 the forwarding rule's address, and X-Forwarded-For
carries the clients' addresses as the load balancer appends them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from components.host_bundle import LoadBalancerSite
from components.host_paths import HEALTH_PATH
from tests.test_proxy_nginx import pytestmark as nginx_installed
from tools.standins.nginx import NginxProxy
from tools.standins.openai_upstream import OpenAIUpstream

pytestmark = nginx_installed

KEY = "fl33t-Token_0123456789abcdefghijklmnopqrstuv"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROXIES = "127.0.0.1/32"
FORWARDING_RULE = "192.0.2.10"
ALLOWED_CLIENT = "203.0.113.9"  # in access.apiCidrs
OTHER_CLIENT = "198.51.100.1"  # not in it


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream(model="test-model", api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: OpenAIUpstream) -> Iterator[NginxProxy]:
    behind = LoadBalancerSite(
        trusted_proxies=[PROXIES, FORWARDING_RULE], health_check_sources=[PROXIES]
    )
    with NginxProxy(
        upstream.port,
        api_key=KEY,
        api_cidrs=["203.0.113.0/24"],
        load_balancer=behind,
        failed_auth_burst=2,
    ) as nginx:
        yield nginx


def get(
    proxy: NginxProxy,
    path: str,
    forwarded_for: str | None = None,
    *,
    source: str = "127.0.0.1",
    token: bool = True,
) -> httpx.Response:
    headers = dict(AUTH) if token else {}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    transport = httpx.HTTPTransport(verify=proxy.ssl_context(), local_address=source)
    with httpx.Client(base_url=proxy.https_url, transport=transport, timeout=30) as client:
        return client.get(path, headers=headers)


def test_the_client_address_comes_from_the_load_balancers_header(proxy: NginxProxy) -> None:
    assert get(proxy, "/v1/models", ALLOWED_CLIENT).status_code == 200
    refused = get(proxy, "/v1/models", OTHER_CLIENT)
    assert refused.status_code == 403
    assert "access.apiCidrs" in refused.text
    # The forwarding rule's own address, where the load balancer appends it, is skipped.
    forwarded = f"{ALLOWED_CLIENT}, {FORWARDING_RULE}"
    assert get(proxy, "/v1/models", forwarded).status_code == 200
    assert f"{ALLOWED_CLIENT} [" in proxy.access_log()


def test_a_client_cannot_choose_its_own_address(proxy: NginxProxy) -> None:
    # The client wrote the first entry; the load balancer appended the address it saw.
    spoofed = f"{ALLOWED_CLIENT}, {OTHER_CLIENT}"
    assert get(proxy, "/v1/models", spoofed).status_code == 403


def test_connections_from_elsewhere_than_the_load_balancer_are_refused(
    proxy: NginxProxy,
) -> None:
    direct = get(proxy, "/v1/models", ALLOWED_CLIENT, source="127.0.0.2")
    assert direct.status_code == 403
    assert direct.json()["error"]["message"] == "Connect through the load balancer"
    assert get(proxy, HEALTH_PATH, source="127.0.0.2").status_code == 403


def test_the_health_route_answers_the_health_checkers_with_vllms_health(
    proxy: NginxProxy, upstream: OpenAIUpstream
) -> None:
    before = len(upstream.arrivals)
    response = get(proxy, HEALTH_PATH, token=False)
    assert response.status_code == 200
    assert [(a.method, a.path) for a in upstream.arrivals[before:]] == [("GET", "/health")]
    # Probes every few seconds from every checker: answered, not logged (refusals are).
    assert f'"GET {HEALTH_PATH} HTTP/1.1" 200' not in proxy.access_log()
    # A client through the load balancer does not reach it.
    assert get(proxy, HEALTH_PATH, ALLOWED_CLIENT, token=False).status_code == 403


def test_the_token_and_the_route_allow_list_are_unchanged(proxy: NginxProxy) -> None:
    assert get(proxy, "/v1/models", ALLOWED_CLIENT, token=False).status_code == 401
    for path in ("/metrics", "/health", "/v1/load_lora_adapter"):
        assert get(proxy, path, ALLOWED_CLIENT).status_code == 404, path


def test_failed_tokens_are_limited_per_client_not_per_load_balancer(proxy: NginxProxy) -> None:
    noisy, quiet = "203.0.113.77", "203.0.113.78"
    statuses = [get(proxy, "/v1/models", noisy, token=False).status_code for _ in range(6)]
    assert 429 in statuses
    assert get(proxy, "/v1/models", quiet, token=False).status_code == 401
