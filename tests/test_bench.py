"""The load benchmark (`vllm-gcp bench`): a short run through the real Nginx site to the OpenAI
stand-in."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tools import bench, cli
from tools.standins.nginx import NginxProxy
from tools.standins.openai_upstream import OpenAIUpstream

API_KEY = "bench-key-0123456789abcdefghijklmnopqrstuvwxyz"
STREAM_DELAY_S = 0.005
TOKENS_PER_REPLY = 8


def test_a_short_run_counts_what_the_upstream_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "bench.json"
    progress = io.StringIO()
    with (
        OpenAIUpstream(
            api_key=API_KEY, stream_delay_s=STREAM_DELAY_S, tokens_per_reply=TOKENS_PER_REPLY
        ) as upstream,
        NginxProxy(upstream.port, api_key=API_KEY) as nginx,
    ):
        argv = ["--endpoint", nginx.https_url, "--api-key", API_KEY, "--model", upstream.model]
        argv += ["--ca-cert", str(nginx.ca_path), "--concurrency", "1,2", "--duration", "0.8"]
        code = bench.main([*argv, "--json", str(report)], progress_stream=progress)
        sent = upstream.tokens_sent
        streamed = [r for r in upstream.requests if r.path == "/v1/chat/completions"]
    out = capsys.readouterr().out
    assert code == 0, out

    document = json.loads(report.read_text())
    levels = document["levels"]
    assert [level["concurrency"] for level in levels] == [1, 2]
    assert sum(level["output_tokens"] for level in levels) == sent
    assert sum(level["requests"] for level in levels) == len(streamed)
    for level in levels:
        assert level["errors"] == 0
        assert level["requests"] >= 2
        assert level["output_tokens"] == level["requests"] * TOKENS_PER_REPLY
        # Each token waits STREAM_DELAY_S upstream: the gaps between chunks cannot be shorter
        # than most of it, and a whole reply bounds the first token from above (generously).
        assert level["itl_ms"]["p50"] >= STREAM_DELAY_S * 1000 * 0.5
        assert 0 < level["ttft_ms"]["p50"] <= level["ttft_ms"]["p95"] < 1000
        assert level["requests_per_s"] <= level["concurrency"] / (STREAM_DELAY_S * TOKENS_PER_REPLY)
        assert level["output_tokens_per_s"] == pytest.approx(
            level["requests_per_s"] * TOKENS_PER_REPLY, rel=0.01
        )
    # The request asks vLLM for usage at the end of the stream and a fixed length.
    request = json.loads(streamed[0].body)
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert "concurrency" in out.splitlines()[1] and "TTFT p50 ms" in out
    assert "concurrency   2 [" in progress.getvalue()


def test_a_wrong_key_stops_before_any_load(capsys: pytest.CaptureFixture[str]) -> None:
    with (
        OpenAIUpstream(api_key=API_KEY) as upstream,
        NginxProxy(upstream.port, api_key=API_KEY) as nginx,
    ):
        argv = ["--endpoint", nginx.https_url, "--api-key", "wrong", "--model", upstream.model]
        code = cli.main(["bench", *argv, "--ca-cert", str(nginx.ca_path), "--duration", "5"])
        assert not [r for r in upstream.requests if r.path == "/v1/chat/completions"]
    assert code == 2
    assert "401: the API key was refused" in capsys.readouterr().err


def test_percentile_interpolates_between_ranks() -> None:
    assert bench.percentile([], 50) is None
    assert bench.percentile([3.0], 95) == 3.0
    assert bench.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert bench.percentile([float(i) for i in range(101)], 95) == 95.0
