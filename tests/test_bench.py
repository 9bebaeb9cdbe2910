"""The load benchmark (`vllm-gcp bench`): a short run through the real Nginx site to the OpenAI
stand-in."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from benchmarks import proxy_bench
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


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench.main(["--help"])
    assert exited.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "--concurrency N,N,... clients at each level, one level after another (default: 1,4,16)",
        "--duration SECONDS how long each level sends requests (default: 30)",
        "--max-tokens N output tokens per request, every reply runs to it (default: 256)",
        f"--prompt PROMPT the user message (default: {bench.DEFAULT_PROMPT!r})",
        "connecting has 10 s (default: 300)",
    ):
        assert shown in help_text
    # Every option with a default says it; the others (the endpoint, --json) have none.
    parser = bench.build_parser("vllm-gcp bench")
    with_default = {
        action.option_strings[0]
        for action in parser._actions
        if action.default not in (None, argparse.SUPPRESS)
    }
    assert with_default == {"--concurrency", "--duration", "--max-tokens", "--prompt", "--timeout"}
    assert help_text.count("(default: ") == len(with_default)


def test_the_default_levels_parse_as_given_on_the_command_line() -> None:
    assert bench.build_parser("bench").parse_args([]).concurrency == [1, 4, 16]


# ------------------------------------------------------------------------------------------------
# benchmarks.proxy_bench's arithmetic: what it prints is never a negative time


def test_the_median_margin_comes_from_the_order_statistics() -> None:
    # 100 values 1..100 ms: ranks 50 -+ 9.8 -> the 40th and 60th values around a median of 50.5.
    values = [i / 1000 for i in range(1, 101)]
    median = proxy_bench.median_with_margin(values)
    assert median.seconds == pytest.approx(0.0505)
    assert median.margin_s == pytest.approx(0.0105)
    assert proxy_bench.median_with_margin([0.002]) == proxy_bench.Median(0.002, 0.0)


@pytest.mark.parametrize(
    ("direct", "proxy", "shown"),
    [
        # The proxy measured quicker than direct: noise, not a negative cost.
        ((0.00100, 0.00010), (0.00095, 0.00010), "no added time above the noise (+-0.14 ms)"),
        # Slower, but by less than the noise.
        ((0.00100, 0.00010), (0.00110, 0.00010), "no added time above the noise (+-0.14 ms)"),
        ((0.00100, 0.00003), (0.00150, 0.00004), "+0.50 ms (+-0.05 ms)"),
        ((0.00100, 0.0), (0.00100, 0.0), "no added time above the noise (+-0.00 ms)"),
    ],
)
def test_added_time_is_never_negative(
    direct: tuple[float, float], proxy: tuple[float, float], shown: str
) -> None:
    assert proxy_bench.added_time(proxy_bench.Median(*direct), proxy_bench.Median(*proxy)) == shown


def _log_line(status: str, request_time: str, upstream_time: str) -> str:
    # The site's log_format vllm_gcp (scripts/nginx-site.conf).
    return (
        f'127.0.0.1 [01/Dec/2026:18:00:00 +0000] "POST /v1/chat/completions HTTP/1.1" '
        f'{status} 512 300 {request_time} {upstream_time} "python-httpx"'
    )


def test_nginx_own_time_below_the_log_resolution_is_not_negative() -> None:
    rounded_apart = "\n".join(
        [_log_line("200", "0.002", "0.003"), _log_line("200", "0.002", "0.002")]
    )
    assert proxy_bench.nginx_own_time(rounded_apart) == (
        "below the log's 1 ms resolution (mean of 2 requests)"
    )
    measurable = "\n".join(
        [_log_line("200", "0.004", "0.002"), _log_line("200", "0.003", "0.002"),
         _log_line("401", "0.000", "-")]
    )  # fmt: skip
    assert proxy_bench.nginx_own_time(measurable) == "1.500 ms (mean of 2 requests)"
    assert proxy_bench.nginx_own_time("") == "no proxied requests in the access log"
