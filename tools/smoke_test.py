"""Checks a deployed endpoint the way Elastic's OpenAI connector uses it; exit 0 when all pass.

    vllm-gcp smoke --stack dev
    vllm-gcp smoke --endpoint https://203.0.113.10/v1 --api-key KEY \\
        --model Qwen/Qwen2.5-7B-Instruct --ca-cert ca.pem [--host-header llm.example.com]

One line per check with its timing; a failed check says what failed and its likely cause. The API
calls go through the official `openai` client, as Kibana's connector speaks the same protocol;
the TLS handshake, the request without a key and the routes outside /v1 are checked directly.
Two time limits: --connect-timeout for reaching the endpoint (TCP and TLS, seconds), and
--read-timeout for each wait on an answer, which a generation on a busy model can stretch. While
a check waits, stderr shows it: a counter on a terminal, else a line every 10 seconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TextIO

import httpx
import httpx2
import openai
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

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
TOOL_NAME = "get_current_time"
TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Returns the current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "e.g. Europe/Paris"}},
            "required": ["timezone"],
        },
    },
}
TOOL_QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What time is it in Paris? Use the get_current_time tool."}
]
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


# Seconds between the lines that say a check is still waiting, where stderr is not a terminal.
PROGRESS_EVERY_S = 10.0


class CheckFailed(Exception):
    """A check's failure: the message is what failed and its likely cause."""


@dataclass(frozen=True)
class Timeouts:
    connect_s: float  # TCP connect and TLS handshake
    read_s: float  # each wait for the next bytes of an answer

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(self.read_s, connect=self.connect_s)

    def httpx2(self) -> httpx2.Timeout:
        return httpx2.Timeout(self.read_s, connect=self.connect_s)


class Waiting:
    """Shows that a check is still waiting for its answer, on `stream`: on a terminal a counter
    redrawn in place every `redraw_s` (erased when the check ends), elsewhere a line every
    `every_s`."""

    def __init__(
        self, stream: TextIO, every_s: float, read_timeout_s: float, redraw_s: float = 1.0
    ) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.every_s = redraw_s if self.live else every_s
        self.read_timeout_s = read_timeout_s

    @contextmanager
    def on(self, name: str) -> Generator[None]:
        done = threading.Event()
        started = time.perf_counter()
        drawn = threading.Event()

        def tick() -> None:
            while not done.wait(self.every_s):
                elapsed = time.perf_counter() - started
                text = (
                    f"  ... {name}: waiting {elapsed:.0f} s "
                    f"(read timeout {self.read_timeout_s:g} s)"
                )
                self.stream.write(f"\r{text}\033[K" if self.live else f"{text}\n")
                self.stream.flush()
                drawn.set()

        ticker = threading.Thread(target=tick, name="smoke-waiting", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
            if self.live and drawn.is_set():
                self.stream.write("\r\033[K")
                self.stream.flush()


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
    """The TLS handshake, bounded by the connect timeout."""
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


def _refused_tools(error: openai.BadRequestError) -> CheckFailed:
    return CheckFailed(
        f"the server refused a request with tools ({error.message}): check model.toolCallParser"
    )


def check_tools(endpoint: Endpoint, client: openai.OpenAI) -> str:
    try:
        completion = client.chat.completions.create(
            model=endpoint.model,
            messages=TOOL_QUESTION,
            tools=[TOOL],
            tool_choice="auto",
            max_tokens=128,
            temperature=0,
        )
    except openai.BadRequestError as error:
        raise _refused_tools(error) from None
    calls = completion.choices[0].message.tool_calls if completion.choices else None
    if not calls:
        raise CheckFailed("the model answered without tool_calls: check model.toolCallParser")
    call = calls[0]
    function = getattr(call, "function", None)
    name = getattr(function, "name", "?")
    arguments = getattr(function, "arguments", "")
    return f"called {name}({arguments})"


@dataclass
class StreamedToolCall:
    """One tool call as its deltas add up: OpenAI's streaming format sends `index` in every delta,
    `id`, `type` and `function.name` in the first, and `function.arguments` in pieces."""

    id: str = ""
    type: str = ""
    name: str = ""
    arguments: str = ""
    deltas: int = 0


@dataclass
class StreamedAnswer:
    calls: dict[int, StreamedToolCall] = field(default_factory=dict)
    content: str = ""
    finish_reason: str | None = None
    usage_seen: bool = False


def assemble_stream(chunks: Iterable[ChatCompletionChunk]) -> StreamedAnswer:
    """The answer a streamed chat completion adds up to (choice 0), as a client assembles it."""
    answer = StreamedAnswer()
    for chunk in chunks:
        answer.usage_seen = answer.usage_seen or chunk.usage is not None
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            answer.content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = answer.calls.setdefault(delta.index, StreamedToolCall())
                call.deltas += 1
                if delta.id:
                    if call.id and delta.id != call.id:
                        raise CheckFailed(
                            f"tool call {delta.index} arrived with two ids, {call.id!r} and "
                            f"{delta.id!r}: the deltas of one call must share its first id"
                        )
                    call.id = delta.id
                call.type = delta.type or call.type
                if delta.function is not None:
                    call.name += delta.function.name or ""
                    call.arguments += delta.function.arguments or ""
            answer.finish_reason = choice.finish_reason or answer.finish_reason
    return answer


def check_stream_tools(endpoint: Endpoint, client: openai.OpenAI) -> str:
    """A streamed tool call, as an Elasticsearch inference endpoint always asks for one (with the
    usage at the end): the call must arrive in `tool_calls` deltas that add up to an id, a name
    and JSON arguments, and finish with "tool_calls". vLLM's Mistral parser once passed it on as
    text or dropped it (vllm#20028)."""
    try:
        stream = client.chat.completions.create(
            model=endpoint.model,
            messages=TOOL_QUESTION,
            tools=[TOOL],
            tool_choice="auto",
            max_tokens=128,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    except openai.BadRequestError as error:
        raise _refused_tools(error) from None
    answer = assemble_stream(stream)
    hint = "check model.toolCallParser and model.image"
    if not answer.calls:
        seen = f" (the text held {answer.content.strip()[:60]!r})" if answer.content.strip() else ""
        raise CheckFailed(
            f"the streamed answer carried no tool_calls deltas{seen}: the tool-call parser does "
            f"not stream tool calls (vllm#20028); {hint}"
        )
    call = answer.calls[min(answer.calls)]
    if not call.id or call.type != "function":
        raise CheckFailed(
            f"the streamed tool call has id {call.id!r} and type {call.type!r}: its first delta "
            f"must carry an id (the tool's answer refers to it) and type 'function'; {hint}"
        )
    if call.name != TOOL_NAME:
        raise CheckFailed(
            f"the streamed tool call names {call.name!r}, not the offered {TOOL_NAME!r}: the "
            f"tool-call parser split the name wrongly; {hint}"
        )
    try:
        parsed = json.loads(call.arguments or "{}")
    except ValueError:
        raise CheckFailed(
            f"the streamed tool call's arguments are not JSON ({call.arguments[:60]!r}): the "
            f"tool-call parser splits them wrongly (vllm#20028); {hint}"
        ) from None
    if not isinstance(parsed, dict):
        raise CheckFailed(
            f"the streamed tool call's arguments are not an object: {call.arguments[:60]!r}"
        )
    if answer.finish_reason != "tool_calls":
        raise CheckFailed(f"the stream finished with {answer.finish_reason!r}, not 'tool_calls'")
    if not answer.usage_seen:
        raise CheckFailed(
            "the stream ended without the usage chunk that stream_options.include_usage asks for"
        )
    return f"streamed {call.name}({call.arguments}) in {call.deltas} deltas"


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


def _openai_client(endpoint: Endpoint, api_key: str, timeouts: Timeouts) -> openai.OpenAI:
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
        timeout=timeouts.httpx2(),
        default_headers=endpoint.headers(),
        http_client=http_client,
    )


def run_checks(
    endpoint: Endpoint,
    timeouts: Timeouts,
    report: Callable[[Result], None],
    waiting: Waiting,
) -> list[Result]:
    """Run every check in order, reporting each as it finishes; without TLS the rest are skipped."""
    results: list[Result] = []

    def run(name: str, check: Callable[[], str]) -> None:
        started = time.perf_counter()
        try:
            with waiting.on(name):
                detail, status = check(), "PASS"
        except CheckFailed as failure:
            detail, status = str(failure), "FAIL"
        except openai.OpenAIError as error:
            detail, status = explain_api_error(error, endpoint), "FAIL"
        except httpx.HTTPError as error:
            detail, status = explain_connection_error(error, endpoint), "FAIL"
        results.append(Result(name, status, time.perf_counter() - started, detail))
        report(results[-1])

    run("TLS handshake and trust", lambda: check_tls(endpoint, timeouts.connect_s))
    client = _openai_client(endpoint, endpoint.api_key, timeouts)
    wrong_key_client = _openai_client(endpoint, "wrong-" + endpoint.api_key[:8], timeouts)
    with (
        httpx.Client(
            verify=endpoint.ssl_context(), timeout=timeouts.httpx(), headers=endpoint.headers()
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
    limits = parser.add_argument_group("time limits")
    limits.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="to open a connection: TCP connect and TLS handshake (default: %(default)g)",
    )
    limits.add_argument(
        "--read-timeout",
        "--timeout",
        dest="read_timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="for each wait on an answer's next bytes; a non-streamed completion sends none "
        "until it is generated (default: %(default)g)",
    )
    args = parser.parse_args(argv)
    timeouts = Timeouts(connect_s=args.connect_timeout, read_s=args.read_timeout)
    waiting = Waiting(sys.stderr, PROGRESS_EVERY_S, timeouts.read_s)
    try:
        with resolve_endpoint(args) as endpoint:
            for warning in endpoint.warnings:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            via = f" via Host {endpoint.host_header}" if endpoint.host_header else ""
            print(f"Smoke test of {endpoint.base_url}{via}, model {endpoint.model}", flush=True)
            results = run_checks(endpoint, timeouts, lambda r: print(r.line(), flush=True), waiting)
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
