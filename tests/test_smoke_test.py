"""The smoke test (`vllm-gcp smoke`) against the real Nginx site in front of the OpenAI stand-in."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import httpx2
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
    assert 'streamed get_current_time({"timezone": "stand-in"}) in deltas' in out
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
    with (
        OpenAIUpstream(model=MODEL, api_key=API_KEY, tool_calls=False) as upstream,
        NginxProxy(upstream.port, api_key=API_KEY) as nginx,
    ):
        code, out = _run(_args(nginx, "--ca-cert", str(nginx.ca_path)), capsys)
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 2
    assert "the model answered without tool_calls: check model.toolCallParser" in failed[0]
    assert "streamed answer carried no tool_calls deltas" in failed[1]


def test_a_parser_that_does_not_stream_tool_calls_fails_only_the_streamed_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # vllm#20028: non-streamed tool calls work, streamed ones arrive as text.
    with (
        OpenAIUpstream(model=MODEL, api_key=API_KEY, tool_call_stream="text") as upstream,
        NginxProxy(upstream.port, api_key=API_KEY) as nginx,
    ):
        code, out = _run(_args(nginx, "--ca-cert", str(nginx.ca_path)), capsys)
    assert code == 1
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1
    assert "FAIL  streamed tool call in deltas" in failed[0]
    assert "vllm#20028" in failed[0]
    assert "[TOOL_CALLS]get_current_time" in failed[0]


def test_streamed_tool_call_arguments_must_add_up_to_json() -> None:
    def chunk(delta: dict[str, object], finish: str | None = None) -> str:
        body = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n"

    def broken(request: httpx2.Request) -> httpx2.Response:
        first = {"index": 0, "id": "t1", "type": "function", "function": {"name": "f"}}
        text = (
            chunk({"tool_calls": [first]})
            + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"timezone": '}}]})
            + chunk({}, "tool_calls")
            + "data: [DONE]\n\n"
        )
        return httpx2.Response(200, text=text, headers={"content-type": "text/event-stream"})

    endpoint = Endpoint(base_url="https://llm.example.com/v1", api_key="k", model=MODEL)
    client = smoke_test.openai.OpenAI(
        base_url=endpoint.base_url,
        api_key="k",
        http_client=smoke_test.openai.DefaultHttpxClient(transport=httpx2.MockTransport(broken)),
    )
    with pytest.raises(smoke_test.CheckFailed, match="arguments are not JSON"):
        smoke_test.check_stream_tools(endpoint, client)


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


def test_stack_reads_the_outputs_and_trusts_their_ca(
    proxy: NginxProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    outputs = {
        "endpoint": f"{proxy.https_url}/v1",
        "apiKey": API_KEY,
        "model": MODEL,
        "caCertificate": proxy.ca_path.read_text(),
    }
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    fake = tmp_path / "pulumi"
    fake.write_text(
        f'#!/usr/bin/env bash\necho "$*" > {tmp_path}/args\ncat {tmp_path}/outputs.json\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("VLLM_GCP_PULUMI", str(fake))
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
