"""Checks a deployed endpoint the way Elastic's OpenAI connector uses it; exit 0 when all pass.

    vllm-gcp smoke --stack dev
    vllm-gcp smoke --endpoint https://203.0.113.10/v1 --api-key KEY \\
        --model Qwen/Qwen2.5-7B-Instruct --ca-cert ca.pem [--host-header llm.example.com]

One line per check with its timing; a failed check says what failed and its likely cause. The API
calls go through the official `openai` client, as Kibana's connector speaks the same protocol;
the TLS handshake, the request without a key and the routes outside /v1 are checked directly.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httpx
import httpx2
import openai
from openai.types.chat import ChatCompletionToolParam

from tools.endpoint import (
    Endpoint,
    EndpointError,
    add_endpoint_arguments,
    explain_connection_error,
    resolve_endpoint,
)

# Routes vLLM serves without its API key: the proxy must not expose them (README, "What the
# proxy guarantees").
ROUTES_OUTSIDE_V1 = ("/metrics", "/health", "/tokenize", "/version", "/docs")
TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_time",
        "description": "Returns the current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "e.g. Europe/Paris"}},
            "required": ["timezone"],
        },
    },
}
# What an API error from the proxy or vLLM most likely means, by its class; {model} is --model.
API_ERRORS: tuple[tuple[type[openai.APIStatusError], str], ...] = (
    (openai.AuthenticationError, "401: the API key was refused"),
    (openai.PermissionDeniedError, "403: your address is not in access.apiCidrs"),
    (
        openai.RateLimitError,
        "429: too many failed attempts from your address; wait a minute and retry",
    ),
    (
        openai.NotFoundError,
        "404: the endpoint does not serve model {model!r}: check --model or model.servedName",
    ),
)


class CheckFailed(Exception):
    """A check's failure: the message is what failed and its likely cause."""


@dataclass(frozen=True)
class Result:
    name: str
    status: str  # PASS, FAIL or SKIP
    seconds: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def line(self) -> str:
        return f"{self.status}  {self.name:<32} {self.seconds * 1000:>7.0f} ms  {self.detail}"


def explain_api_error(error: openai.OpenAIError, endpoint: Endpoint) -> str:
    if isinstance(error, openai.APIConnectionError):
        return explain_connection_error(error, endpoint)
    if not isinstance(error, openai.APIStatusError):
        return str(error)
    for kind, explanation in API_ERRORS:
        if isinstance(error, kind):
            return explanation.format(model=endpoint.model)
    return f"HTTP {error.status_code}: {error.message}"


# ------------------------------------------------------------------------------------------------
# The checks: each returns the detail shown on success or raises CheckFailed.


def check_tls(endpoint: Endpoint, timeout: float) -> str:
    if not endpoint.base_url.startswith("https://"):
        raise CheckFailed("the endpoint is not HTTPS: the stack serves https://<host>/v1")
    try:
        with (
            socket.create_connection(endpoint.address, timeout=timeout) as raw,
            endpoint.ssl_context().wrap_socket(raw, server_hostname=endpoint.server_name) as tls,
        ):
            version = tls.version()
            certificate = tls.getpeercert() or {}
    except (OSError, ssl.SSLError) as error:
        raise CheckFailed(explain_connection_error(error, endpoint)) from None
    expires = certificate.get("notAfter")
    return f"{version}, certificate for {endpoint.server_name} valid until {expires}"


def check_refuses_unauthenticated(
    endpoint: Endpoint, http: httpx.Client, wrong_key_client: openai.OpenAI
) -> str:
    response = http.get(f"{endpoint.base_url}/models", extensions=endpoint.request_extensions())
    if response.status_code == HTTPStatus.FORBIDDEN:
        raise CheckFailed("403: your address is not in access.apiCidrs")
    if response.status_code != HTTPStatus.UNAUTHORIZED:
        raise CheckFailed(
            f"a request without a key got {response.status_code}, not 401: the proxy's "
            "token check is not in place"
        )
    try:
        wrong_key_client.models.list()
    except openai.AuthenticationError:
        return "no key and a wrong key both get 401"
    except openai.OpenAIError as error:
        raise CheckFailed(f"a wrong key: {explain_api_error(error, endpoint)}") from None
    raise CheckFailed("a wrong key was accepted: the proxy's token check is not in place")


def check_models(endpoint: Endpoint, client: openai.OpenAI) -> str:
    served = [model.id for model in client.models.list()]
    if endpoint.model not in served:
        raise CheckFailed(
            f"model {endpoint.model!r} is not listed (served: {', '.join(served) or 'none'}): "
            "check --model or model.servedName"
        )
    return f"lists {endpoint.model}"


def check_chat(endpoint: Endpoint, client: openai.OpenAI) -> str:
    completion = client.chat.completions.create(
        model=endpoint.model,
        messages=[{"role": "user", "content": "Reply with one word: ready."}],
        max_tokens=32,
        temperature=0,
    )
    if not completion.choices:
        raise CheckFailed("the completion has no choices")
    content = completion.choices[0].message.content or ""
    if not content.strip():
        raise CheckFailed("the completion is empty")
    tokens = completion.usage.completion_tokens if completion.usage else "?"
    return f"{tokens} tokens: {content.strip()[:40]!r}"


def check_stream(endpoint: Endpoint, client: openai.OpenAI) -> str:
    started = time.perf_counter()
    first_event: float | None = None
    first_token: float | None = None
    events = 0
    stream = client.chat.completions.create(
        model=endpoint.model,
        messages=[{"role": "user", "content": "Count from 1 to 5."}],
        max_tokens=32,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        now = time.perf_counter() - started
        events += 1
        first_event = now if first_event is None else first_event
        if first_token is None and chunk.choices and chunk.choices[0].delta.content:
            first_token = now
    if first_event is None or first_token is None:
        raise CheckFailed(
            f"the stream delivered {events} event(s) and no tokens: a proxy buffering the "
            "response? (the site sets proxy_buffering off)"
        )
    return (
        f"first event {first_event * 1000:.0f} ms, first token {first_token * 1000:.0f} ms, "
        f"{events} events"
    )


def check_tools(endpoint: Endpoint, client: openai.OpenAI) -> str:
    try:
        completion = client.chat.completions.create(
            model=endpoint.model,
            messages=[
                {
                    "role": "user",
                    "content": "What time is it in Paris? Use the get_current_time tool.",
                }
            ],
            tools=[TOOL],  # pyright: ignore[reportArgumentType]
            tool_choice="auto",
            max_tokens=128,
            temperature=0,
        )
    except openai.BadRequestError as error:
        raise CheckFailed(
            f"the server refused a request with tools ({error.message}): check model.toolCallParser"
        ) from None
    calls = completion.choices[0].message.tool_calls if completion.choices else None
    if not calls:
        raise CheckFailed("the model answered without tool_calls: check model.toolCallParser")
    call = calls[0]
    function = getattr(call, "function", None)
    name = getattr(function, "name", "?")
    arguments = getattr(function, "arguments", "")
    return f"called {name}({arguments})"


def check_stream_tools(endpoint: Endpoint, client: openai.OpenAI) -> str:
    """A streamed tool call, as an Elasticsearch inference endpoint always asks for one: the call
    must arrive in `tool_calls` deltas (name first, then the arguments in pieces) that add up to
    valid JSON. vLLM's Mistral parser once passed it on as text or dropped it (vllm#20028)."""
    stream = client.chat.completions.create(
        model=endpoint.model,
        messages=[
            {"role": "user", "content": "What time is it in Paris? Use the get_current_time tool."}
        ],
        tools=[cast("ChatCompletionToolParam", TOOL)],
        tool_choice="auto",
        max_tokens=128,
        temperature=0,
        stream=True,
    )
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    content = ""
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for call in delta.tool_calls or []:
                function = call.function
                if function is not None and function.name:
                    names[call.index] = names.get(call.index, "") + function.name
                if function is not None and function.arguments:
                    arguments[call.index] = arguments.get(call.index, "") + function.arguments
            finish = choice.finish_reason or finish
    if not names:
        seen = f" (the text held {content.strip()[:60]!r})" if content.strip() else ""
        raise CheckFailed(
            f"the streamed answer carried no tool_calls deltas{seen}: the tool-call parser does "
            "not stream tool calls (vllm#20028); check model.toolCallParser and model.image"
        )
    text = arguments.get(0, "")
    try:
        parsed = json.loads(text or "{}")
    except ValueError:
        raise CheckFailed(
            f"the streamed tool call's arguments are not JSON ({text[:60]!r}): the tool-call "
            "parser splits them wrongly (vllm#20028); check model.toolCallParser and model.image"
        ) from None
    if not isinstance(parsed, dict):
        raise CheckFailed(f"the streamed tool call's arguments are not an object: {text[:60]!r}")
    if finish != "tool_calls":
        raise CheckFailed(f"the stream finished with {finish!r}, not 'tool_calls'")
    return f"streamed {names[0]}({text}) in deltas"


def check_outside_v1(endpoint: Endpoint, http: httpx.Client) -> str:
    # With the right key: the key must not unlock vLLM's unguarded routes either.
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    answered: dict[str, int] = {}
    for route in ROUTES_OUTSIDE_V1:
        response = http.get(
            f"{endpoint.origin}{route}", headers=headers, extensions=endpoint.request_extensions()
        )
        answered[route] = response.status_code
    # Any 2xx: the route was served (the proxy answers the others 401, 403 or 404).
    served = [
        route
        for route, status in answered.items()
        if HTTPStatus.OK <= status < HTTPStatus.MULTIPLE_CHOICES
    ]
    if served:
        raise CheckFailed(f"the proxy serves routes outside /v1: {', '.join(served)} answered")
    statuses = sorted(set(answered.values()))
    return f"{' '.join(ROUTES_OUTSIDE_V1)} answer {', '.join(map(str, statuses))}"


# ------------------------------------------------------------------------------------------------


def _openai_client(endpoint: Endpoint, api_key: str, timeout: float) -> openai.OpenAI:
    extensions = endpoint.request_extensions()

    def set_server_name(request: httpx2.Request) -> None:
        request.extensions.update(extensions)

    http_client = openai.DefaultHttpxClient(
        verify=endpoint.ssl_context(), event_hooks={"request": [set_server_name]}
    )
    return openai.OpenAI(
        base_url=endpoint.base_url,
        api_key=api_key,
        max_retries=0,
        timeout=timeout,
        default_headers=endpoint.headers(),
        http_client=http_client,
    )


def run_checks(
    endpoint: Endpoint, timeout: float, report: Callable[[Result], None]
) -> list[Result]:
    """Run every check in order, reporting each as it finishes; without TLS the rest are skipped."""
    results: list[Result] = []

    def run(name: str, check: Callable[[], str]) -> None:
        started = time.perf_counter()
        try:
            detail, status = check(), "PASS"
        except CheckFailed as failure:
            detail, status = str(failure), "FAIL"
        except openai.OpenAIError as error:
            detail, status = explain_api_error(error, endpoint), "FAIL"
        except httpx.HTTPError as error:
            detail, status = explain_connection_error(error, endpoint), "FAIL"
        results.append(Result(name, status, time.perf_counter() - started, detail))
        report(results[-1])

    run("TLS handshake and trust", lambda: check_tls(endpoint, timeout))
    client = _openai_client(endpoint, endpoint.api_key, timeout)
    wrong_key_client = _openai_client(endpoint, "wrong-" + endpoint.api_key[:8], timeout)
    with (
        httpx.Client(
            verify=endpoint.ssl_context(), timeout=timeout, headers=endpoint.headers()
        ) as http,
        client,
        wrong_key_client,
    ):
        api_checks: list[tuple[str, Callable[[], str]]] = [
            (
                "no or wrong key gives 401",
                lambda: check_refuses_unauthenticated(endpoint, http, wrong_key_client),
            ),
            ("/v1/models lists the model", lambda: check_models(endpoint, client)),
            ("chat completion answers", lambda: check_chat(endpoint, client)),
            ("streamed completion delivers", lambda: check_stream(endpoint, client)),
            ("tool request returns tool_calls", lambda: check_tools(endpoint, client)),
            ("streamed tool call in deltas", lambda: check_stream_tools(endpoint, client)),
            ("routes outside /v1 not served", lambda: check_outside_v1(endpoint, http)),
        ]
        for name, check in api_checks:
            if results[0].passed:
                run(name, check)
            else:
                results.append(Result(name, "SKIP", 0.0, "no secure connection"))
                report(results[-1])
    return results


def main(argv: list[str] | None = None, prog: str = "vllm-gcp smoke") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n", 1)[0])
    add_endpoint_arguments(parser)
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per request (default 120)"
    )
    args = parser.parse_args(argv)
    try:
        with resolve_endpoint(args) as endpoint:
            via = f" via Host {endpoint.host_header}" if endpoint.host_header else ""
            print(f"Smoke test of {endpoint.base_url}{via}, model {endpoint.model}", flush=True)
            results = run_checks(endpoint, args.timeout, lambda r: print(r.line(), flush=True))
    except EndpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    passed = sum(result.passed for result in results)
    if passed == len(results):
        print(f"All {passed} checks passed.")
        return 0
    print(f"{passed} of {len(results)} checks passed.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
