"""The smoke test (`vllm-gcp smoke`) against the real Nginx site in front of the OpenAI stand-in."""

from __future__ import annotations

import io
import json
import re
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest

from tools import cli, smoke_test
from tools.endpoint import Endpoint, normalise_base_url
from tools.standins.nginx import NginxProxy, free_port
from tools.standins.openai_upstream import OpenAIUpstream

API_KEY = "smoke-key-0123456789abcdefghijklmnopqrstuvwxyz"
MODEL = "test-model"


@pytest.fixture(scope="module")
def proxy() -> Iterator[NginxProxy]:
    # A high burst: the tests send many wrong-key requests from one address on purpose.
    with (
        OpenAIUpstream(model=MODEL, api_key=API_KEY) as upstream,
        NginxProxy(upstream.port, api_key=API_KEY, failed_auth_burst=1000) as nginx,
    ):
        yield nginx


def _args(nginx: NginxProxy, *extra: str, api_key: str = API_KEY) -> list[str]:
    return ["--endpoint", nginx.https_url, "--api-key", api_key, "--model", MODEL, *extra]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`vllm-gcp smoke ARGV`, in this process: its exit code and what it printed."""
    code = cli.main(["smoke", *argv])
    return code, capsys.readouterr().out


def _smoke_a_stand_in(
    capsys: pytest.CaptureFixture[str], *extra: str, **upstream: Any
) -> tuple[int, str, str]:
    """`vllm-gcp smoke` through Nginx to a stand-in upstream with these knobs: its exit code,
    stdout and stderr."""
    with (
        OpenAIUpstream(model=MODEL, api_key=API_KEY, **upstream) as server,
        NginxProxy(server.port, api_key=API_KEY) as nginx,
    ):
        code = cli.main(["smoke", *_args(nginx, "--ca-cert", str(nginx.ca_path), *extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_good_endpoint_passes_every_check(
    proxy: NginxProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(_args(proxy, "--ca-cert", str(proxy.ca_path)), capsys)
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith(("PASS", "FAIL", "SKIP"))]
    assert len(lines) == 8
    assert all(line.startswith("PASS") for line in lines)
    assert all(" ms " in line for line in lines)
    assert "called get_current_time" in out
    assert 'streamed get_current_time({"timezone": "stand-in"}) in 4 deltas' in out
    assert "first token" in out
    assert "All 8 checks passed." in out


def test_a_wrong_key_fails_with_the_401_cause(
    proxy: NginxProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(_args(proxy, "--ca-cert", str(proxy.ca_path), api_key="wrong-key"), capsys)
    assert code == 1
    assert "FAIL  /v1/models lists the model" in out
    assert "401: the API key was refused" in out


def test_an_untrusted_certificate_says_pass_ca_cert(
    proxy: NginxProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run(_args(proxy), capsys)
    assert code == 1
    assert "certificate not trusted: pass --ca-cert" in out
    assert out.count("SKIP") == 7


def test_an_upstream_without_tool_calling_fails_the_tool_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _smoke_a_stand_in(capsys, tool_calls=False)
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 2
    assert "the model answered without tool_calls: check model.toolCallParser" in failed[0]
    assert "streamed answer carried no tool_calls deltas" in failed[1]


def test_a_parser_that_does_not_stream_tool_calls_fails_only_the_streamed_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # vllm#20028: non-streamed tool calls work, streamed ones arrive as text.
    code, out, _ = _smoke_a_stand_in(capsys, tool_call_stream="text")
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1
    assert "FAIL  streamed tool call in deltas" in failed[0]
    assert "vllm#20028" in failed[0]
    assert "[TOOL_CALLS]get_current_time" in failed[0]


def _sse(*chunks: tuple[dict[str, Any], str | None]) -> str:
    """A streamed chat completion's body: each (delta, finish_reason), then the usage."""
    events: list[dict[str, Any]] = [
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        for delta, finish in chunks
    ]
    usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    events.append({**events[0], "choices": [], "usage": usage})
    return "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"


def _check_stream_tools_on(body: str) -> str:
    """check_stream_tools through the official client, against a server that sends `body`."""

    def reply(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, text=body, headers={"content-type": "text/event-stream"})

    endpoint = Endpoint(base_url="https://llm.example.com/v1", api_key="k", model=MODEL)
    client = smoke_test.openai.OpenAI(
        base_url=endpoint.base_url,
        api_key="k",
        http_client=smoke_test.openai.DefaultHttpxClient(transport=httpx2.MockTransport(reply)),
    )
    return smoke_test.check_stream_tools(endpoint, client)


NAMED = {"index": 0, "id": "chatcmpl-tool-1", "type": "function"}
NAME = {"name": "get_current_time"}


def _arguments(text: str, index: int = 0) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": text}}]}


def test_a_streamed_tool_call_adds_up_from_its_deltas() -> None:
    # hermes can send the name and the first piece of arguments in one chunk, as two deltas.
    first = {"tool_calls": [{**NAMED, "function": NAME}, _arguments('{"time')["tool_calls"][0]]}
    detail = _check_stream_tools_on(
        _sse(
            ({"role": "assistant", "content": ""}, None),
            (first, None),
            (_arguments('zone": "Europe/'), None),
            (_arguments('Paris"}'), "tool_calls"),
        )
    )
    assert detail == 'streamed get_current_time({"timezone": "Europe/Paris"}) in 4 deltas'


@pytest.mark.parametrize(
    ("chunks", "failure"),
    [
        (
            [({"tool_calls": [{**NAMED, "function": NAME}]}, None),
             (_arguments('{"timezone": '), "tool_calls")],
            "the streamed tool call's arguments are not JSON ('{\"timezone\": ')",
        ),
        (
            [({"tool_calls": [{"index": 0, "type": "function", "function": NAME}]}, None),
             (_arguments("{}"), "tool_calls")],
            "the streamed tool call has id '' and type 'function'",
        ),
        (
            [({"tool_calls": [{**NAMED, "function": NAME}]}, None),
             ({"tool_calls": [{"index": 0, "id": "chatcmpl-tool-2", "function": {}}]}, None),
             (_arguments("{}"), "tool_calls")],
            "tool call 0 arrived with two ids, 'chatcmpl-tool-1' and 'chatcmpl-tool-2'",
        ),
        (
            [({"tool_calls": [{**NAMED, "function": {"name": "get_current"}}]}, None),
             (_arguments("{}"), "tool_calls")],
            "names 'get_current', not the offered 'get_current_time'",
        ),
        (
            [({"tool_calls": [{**NAMED, "function": NAME}]}, None),
             (_arguments("[]"), "tool_calls")],
            "arguments are not an object: '[]'",
        ),
        (
            [({"tool_calls": [{**NAMED, "function": NAME}]}, None), (_arguments("{}"), "stop")],
            "the stream finished with 'stop', not 'tool_calls'",
        ),
        (
            [({"content": '[TOOL_CALLS]get_current_time{"timezone": "Paris"}'}, "stop")],
            "carried no tool_calls deltas (the text held '[TOOL_CALLS]get_current_time",
        ),
    ],
    ids=["arguments-not-json", "no-id", "two-ids", "wrong-name", "not-an-object",
         "finish-stop", "as-text"],
)  # fmt: skip
def test_a_streamed_tool_call_that_does_not_add_up_fails(
    chunks: list[tuple[dict[str, Any], str | None]], failure: str
) -> None:
    with pytest.raises(smoke_test.CheckFailed) as raised:
        _check_stream_tools_on(_sse(*chunks))
    assert failure in str(raised.value)


def test_a_stream_without_the_usage_it_asked_for_fails() -> None:
    body = _sse(
        ({"tool_calls": [{**NAMED, "function": NAME}]}, None), (_arguments("{}"), "tool_calls")
    )
    without_usage = "".join(part + "\n\n" for part in body.split("\n\n") if '"usage"' not in part)
    with pytest.raises(smoke_test.CheckFailed, match="without the usage chunk"):
        _check_stream_tools_on(without_usage)


def test_host_header_sets_the_name_the_certificate_is_checked_against(
    proxy: NginxProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = str(proxy.ca_path)
    code, out = _run(_args(proxy, "--ca-cert", ca, "--host-header", "localhost"), capsys)
    assert code == 0, out
    assert "certificate for localhost" in out
    code, out = _run(_args(proxy, "--ca-cert", ca, "--host-header", "llm.example.com"), capsys)
    assert code == 1
    assert "the certificate does not name llm.example.com" in out


def test_a_closed_port_points_at_the_host_or_firewall(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--endpoint", f"https://127.0.0.1:{free_port()}", "--api-key", "k", "--model", MODEL]
    code, out = _run(argv, capsys)
    assert code == 1
    assert "connection refused" in out


def test_a_route_outside_v1_that_answers_fails() -> None:
    def leaky(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if request.url.path == "/metrics" else 404)

    endpoint = Endpoint(base_url="https://llm.example.com/v1", api_key="k", model=MODEL)
    with (
        httpx.Client(transport=httpx.MockTransport(leaky)) as http,
        pytest.raises(smoke_test.CheckFailed, match="serves routes outside /v1: /metrics"),
    ):
        smoke_test.check_outside_v1(endpoint, http)


def _stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nginx: NginxProxy) -> None:
    """A stand-in pulumi whose stack outputs name the proxy."""
    outputs = {
        "endpoint": f"{nginx.https_url}/v1",
        "apiKey": API_KEY,
        "model": MODEL,
        "caCertificate": nginx.ca_path.read_text(),
    }
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    fake = tmp_path / "pulumi"
    fake.write_text(
        f'#!/usr/bin/env bash\necho "$*" > {tmp_path}/args\ncat {tmp_path}/outputs.json\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("VLLM_GCP_PULUMI", str(fake))


def test_stack_reads_the_outputs_and_trusts_their_ca(
    proxy: NginxProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _stack(tmp_path, monkeypatch, proxy)
    code, out = _run(["--stack", "e2e-1"], capsys)
    assert code == 0, out
    assert (tmp_path / "args").read_text().split() == [
        "stack", "output", "--json", "--show-secrets", "--stack", "e2e-1"
    ]  # fmt: skip


def test_explicit_arguments_are_required_without_a_stack(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["smoke", "--endpoint", "https://example.com"]) == 2
    assert "--api-key, --model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "given",
    [
        "https://203.0.113.10",
        "https://203.0.113.10/",
        "https://203.0.113.10/v1",
        "https://203.0.113.10/v1/chat/completions",
    ],
)
def test_base_url_accepts_origin_endpoint_and_connector_url(given: str) -> None:
    assert normalise_base_url(given) == "https://203.0.113.10/v1"


def test_the_connect_timeout_bounds_reaching_the_endpoint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A listener that takes the connection and never answers the TLS handshake.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        argv = ["--endpoint", f"https://127.0.0.1:{port}", "--api-key", "k", "--model", MODEL]
        started = time.perf_counter()
        code, out = _run([*argv, "--connect-timeout", "0.3", "--read-timeout", "60"], capsys)
        elapsed = time.perf_counter() - started
    assert code == 1
    assert elapsed < 5
    assert "FAIL  TLS handshake and trust" in out
    assert f"no answer from 127.0.0.1:{port} in time" in out


def test_the_read_timeout_bounds_waiting_for_a_generation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Each non-streamed answer takes 16 x 0.05 s = 0.8 s to generate, past a read timeout of 0.3 s.
    code, out, _ = _smoke_a_stand_in(capsys, "--read-timeout", "0.3", stream_delay_s=0.05)
    assert code == 1
    failed = [line.split("  ")[1].strip() for line in out.splitlines() if line.startswith("FAIL")]
    # The streams send a chunk every 0.05 s, well within it; the non-streamed answers do not.
    assert failed == ["chat completion answers", "tool request returns tool_calls"]
    assert "took the request but its answer stopped for longer than the read timeout" in out


def test_a_slow_check_shows_that_it_is_waiting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(smoke_test, "PROGRESS_EVERY_S", 0.1)
    code, out, err = _smoke_a_stand_in(capsys, stream_delay_s=0.03)
    assert code == 0, out
    waits = err.splitlines()
    assert waits
    assert all(
        re.fullmatch(r"  \.\.\. (.+): waiting \d+ s \(read timeout 120 s\)", line) for line in waits
    ), waits
    # A non-streamed completion waits for its 16 tokens (0.48 s): several lines.
    assert sum("chat completion answers" in line for line in waits) >= 2


def test_on_a_terminal_the_wait_is_one_line_redrawn_and_erased() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    with smoke_test.Waiting(terminal, every_s=10, read_timeout_s=120, redraw_s=0.1).on("chat"):
        time.sleep(0.35)
    redraws = terminal.getvalue().split("\r")
    assert redraws[0] == ""
    # About three redraws of the one line (the machine may be slow to wake the ticker).
    assert set(redraws[1:-1]) == {"  ... chat: waiting 0 s (read timeout 120 s)\x1b[K"}
    assert len(redraws[1:-1]) >= 2
    assert redraws[-1] == "\x1b[K"
    quiet = Terminal()
    with smoke_test.Waiting(quiet, every_s=10, read_timeout_s=120, redraw_s=0.1).on("chat"):
        pass
    assert quiet.getvalue() == ""


def test_an_api_key_from_the_environment_that_overrides_the_stack_is_warned_about(
    proxy: NginxProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _stack(tmp_path, monkeypatch, proxy)
    monkeypatch.setenv("VLLM_GCP_API_KEY", "an-old-key")
    assert cli.main(["smoke", "--stack", "dev"]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == (
        "warning: VLLM_GCP_API_KEY is set and differs from the apiKey output of stack 'dev': "
        "using VLLM_GCP_API_KEY; unset it to use the stack's key"
    )
    assert "401: the API key was refused" in captured.out
    # The same key, or one given with --api-key on purpose: nothing to warn about.
    monkeypatch.setenv("VLLM_GCP_API_KEY", API_KEY)
    assert cli.main(["smoke", "--stack", "dev"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["smoke", "--stack", "dev", "--api-key", "an-old-key"]) == 1
    assert "warning" not in capsys.readouterr().err


def test_a_server_without_auto_tool_choice_fails_both_tool_checks_with_its_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _smoke_a_stand_in(capsys, auto_tool_choice=False)
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert [line.split("  ")[1].strip() for line in failed] == [
        "tool request returns tool_calls",
        "streamed tool call in deltas",
    ]
    for line in failed:
        assert (
            'the server refused a request with tools (Error code: 400 - "auto" tool choice '
            "requires "
            "--enable-auto-tool-choice and --tool-call-parser to be set): check "
            "model.toolCallParser"
        ) in line


# ------------------------------------------------------------------------------------------------
# The stand-in upstream, held to what vLLM does, through the client the smoke test uses


def test_the_stand_in_streams_a_tool_call_as_vllm_does() -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "time?"}],
        "tools": [smoke_test.TOOL],
        "stream": True,
    }
    with OpenAIUpstream(model=MODEL) as upstream, httpx.Client(base_url=upstream.url) as http:
        text = http.post("/v1/chat/completions", json=body).text
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert text.endswith("data: [DONE]\n\n")
    choices = [event["choices"][0] for event in events]
    assert choices[0] == {"index": 0, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None}  # fmt: skip
    first = choices[1]["delta"]["tool_calls"]
    assert len(first) == 1
    assert set(first[0]) == {"id", "type", "index", "function"}
    assert re.fullmatch(r"chatcmpl-tool-[0-9a-f]{32}", first[0]["id"])
    assert (first[0]["type"], first[0]["index"], first[0]["function"]) == (
        "function", 0, {"name": "get_current_time"}
    )  # fmt: skip
    pieces = [choice["delta"]["tool_calls"] for choice in choices[2:]]
    assert all(p == [{"index": 0, "function": {"arguments": p[0]["function"]["arguments"]}}]
               for p in pieces)  # fmt: skip
    assert "".join(p[0]["function"]["arguments"] for p in pieces) == '{"timezone": "stand-in"}'
    assert [choice["finish_reason"] for choice in choices[1:]] == [None, None, None, "tool_calls"]


def _stand_in_client(upstream: OpenAIUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="unused", max_retries=0)


USER: Any = [{"role": "user", "content": "time?"}]


@pytest.mark.parametrize(
    ("request_", "refusal", "message"),
    [
        ({"model": "other-model"}, openai.NotFoundError,
         "The model `other-model` does not exist. Valid aliases: test-model."),
        ({"stream_options": {"include_usage": True}}, openai.BadRequestError,
         "Stream options can only be defined when `stream=True`."),
        ({"tools": []}, openai.BadRequestError, "`tools` must not be an empty array."),
        ({"tool_choice": "auto"}, openai.BadRequestError,
         "When using `tool_choice`, `tools` must be set."),
        ({"tools": [smoke_test.TOOL], "tool_choice": "any"}, openai.BadRequestError,
         "Invalid value for `tool_choice`: any!"),
        ({"tools": [smoke_test.TOOL],
          "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
         openai.BadRequestError,
         "The tool specified in `tool_choice` does not match any of the specified `tools`"),
    ],
    ids=["unknown-model", "stream-options-without-stream", "empty-tools", "choice-without-tools",
         "unknown-choice", "named-tool-not-offered"],
)  # fmt: skip
def test_the_stand_in_refuses_what_vllm_refuses(
    request_: dict[str, Any], refusal: type[openai.APIStatusError], message: str
) -> None:
    arguments: dict[str, Any] = {"model": MODEL, "messages": USER, **request_}
    with OpenAIUpstream(model=MODEL) as upstream, _stand_in_client(upstream) as client:
        with pytest.raises(refusal) as raised:
            client.chat.completions.create(**arguments)
        assert not upstream.tokens_sent
    assert message in raised.value.message


def test_without_auto_tool_choice_a_request_with_tools_is_refused_unless_it_says_none() -> None:
    tools: Any = [smoke_test.TOOL]
    with (
        OpenAIUpstream(model=MODEL, auto_tool_choice=False) as upstream,
        _stand_in_client(upstream) as client,
    ):
        # Tools without a tool_choice mean "auto" (vLLM's check_tool_usage).
        with pytest.raises(openai.BadRequestError, match="requires --enable-auto-tool-choice"):
            client.chat.completions.create(model=MODEL, messages=USER, tools=tools)
        answer = client.chat.completions.create(
            model=MODEL, messages=USER, tools=tools, tool_choice="none"
        )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.tool_calls is None


def test_a_named_tool_choice_finishes_with_stop_as_vllm_does() -> None:
    tools: Any = [smoke_test.TOOL]
    named: Any = {"type": "function", "function": {"name": "get_current_time"}}
    with OpenAIUpstream(model=MODEL) as upstream, _stand_in_client(upstream) as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=USER, tools=tools, tool_choice=named
        )
        stream = client.chat.completions.create(
            model=MODEL, messages=USER, tools=tools, tool_choice=named, stream=True
        )
        streamed = smoke_test.assemble_stream(stream)
    assert answer.choices[0].finish_reason == "stop"
    assert streamed.finish_reason == "stop"
    assert streamed.calls[0].name == "get_current_time"
