"""Load benchmark through the proxy, with the real key: what Elastic's connector will see.

    vllm-gcp bench --stack dev [--concurrency 1,4,16] [--duration 30] [--json out.json]

At each concurrency level, that many clients send streamed chat completions back to back for
--duration seconds (requests in flight at the end are completed and counted). Per level: requests
and output tokens per second, time to first token (TTFT) and inter-token latency (ITL, the gaps
between streamed chunks, as `vllm bench serve` reports them) at p50 and p95, and errors. Output
tokens come from the usage vLLM reports at the end of each stream (else one per chunk).
A progress bar on stderr while it runs; the table on stdout; --json writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, TextIO

import httpx

from tools.endpoint import (
    Endpoint,
    EndpointError,
    add_endpoint_arguments,
    explain_connection_error,
    resolve_endpoint,
)

DEFAULT_PROMPT = (
    "Summarise the MITRE ATT&CK tactics an attacker uses after initial access, one short "
    "paragraph per tactic."
)
BAR_WIDTH = 30


@dataclass(frozen=True)
class Load:
    """What each client sends, and for how long at each level."""

    payload: dict[str, Any]  # one streamed chat completion request
    duration_s: float  # per concurrency level
    timeout_s: float = 300.0  # per request


@dataclass(frozen=True)
class RequestResult:
    ttft_s: float | None = None
    itl_s: tuple[float, ...] = ()
    output_tokens: int = 0
    error: str | None = None


@dataclass
class LevelResult:
    concurrency: int
    elapsed_s: float = 0.0
    completed: list[RequestResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.completed)

    def figures(self) -> dict[str, Any]:
        ttft = [r.ttft_s for r in self.completed if r.ttft_s is not None]
        itl = [gap for r in self.completed for gap in r.itl_s]
        elapsed = self.elapsed_s or 1e-9
        return {
            "concurrency": self.concurrency,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests": len(self.completed),
            "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else None,
            "requests_per_s": round(len(self.completed) / elapsed, 3),
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": round(self.output_tokens / elapsed, 1),
            "ttft_ms": {"p50": _ms(percentile(ttft, 50)), "p95": _ms(percentile(ttft, 95))},
            "itl_ms": {"p50": _ms(percentile(itl, 50)), "p95": _ms(percentile(itl, 95))},
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile by linear interpolation between closest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# ------------------------------------------------------------------------------------------------
# One streamed request


def chat_payload(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        # vLLM's extension: every reply runs to max_tokens, so levels compare like for like.
        "ignore_eos": True,
    }


async def one_request(
    client: httpx.AsyncClient, endpoint: Endpoint, payload: dict[str, Any]
) -> RequestResult:
    started = time.perf_counter()
    first: float | None = None
    last = started
    gaps: list[float] = []
    chunks = 0
    usage_tokens: int | None = None
    try:
        async with client.stream(
            "POST",
            f"{endpoint.base_url}/chat/completions",
            json=payload,
            extensions=endpoint.request_extensions(),
        ) as response:
            if response.status_code != HTTPStatus.OK:
                body = (await response.aread()).decode(errors="replace").strip()
                return RequestResult(error=f"HTTP {response.status_code}: {body[:200]}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("usage"):
                    usage_tokens = int(event["usage"].get("completion_tokens") or 0)
                delta = (event.get("choices") or [{}])[0].get("delta") or {}
                if (
                    delta.get("content")
                    or delta.get("tool_calls")
                    or delta.get("reasoning_content")
                ):
                    now = time.perf_counter()
                    if first is None:
                        first = now - started
                    else:
                        gaps.append(now - last)
                    last = now
                    chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as error:
        return RequestResult(error=f"{type(error).__name__}: {error}")
    if first is None:
        return RequestResult(error="the stream ended without tokens")
    tokens = usage_tokens if usage_tokens is not None else chunks
    return RequestResult(ttft_s=first, itl_s=tuple(gaps), output_tokens=tokens)


# ------------------------------------------------------------------------------------------------
# Levels and progress


class Progress:
    """One bar on stderr, redrawn in place on a terminal; elsewhere one line per level."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()

    def draw(self, level: LevelResult, elapsed: float, duration: float, final: bool) -> None:
        if not self.live and not final:
            return
        filled = BAR_WIDTH if final else int(BAR_WIDTH * min(elapsed / duration, 1))
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        text = (
            f"concurrency {level.concurrency:>3} [{bar}] {elapsed:5.1f}/{duration:.0f} s  "
            f"{len(level.completed)} requests, {len(level.errors)} errors"
        )
        self.stream.write(("\r" if self.live else "") + text + ("\n" if final else ""))
        self.stream.flush()


async def run_level(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    load: Load,
    concurrency: int,
    progress: Progress,
) -> LevelResult:
    level = LevelResult(concurrency)
    started = time.perf_counter()
    deadline = started + load.duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            result = await one_request(client, endpoint, load.payload)
            if result.error is None:
                level.completed.append(result)
            else:
                level.errors.append(result.error)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    while not all(task.done() for task in workers):
        progress.draw(level, time.perf_counter() - started, load.duration_s, final=False)
        await asyncio.wait(workers, timeout=0.2)
    await asyncio.gather(*workers)
    level.elapsed_s = time.perf_counter() - started
    progress.draw(level, level.elapsed_s, load.duration_s, final=True)
    return level


async def preflight(client: httpx.AsyncClient, endpoint: Endpoint) -> None:
    """Fail fast, with the likely cause, before any load."""
    try:
        response = await client.get(
            f"{endpoint.base_url}/models", extensions=endpoint.request_extensions()
        )
    except httpx.HTTPError as error:
        raise EndpointError(explain_connection_error(error, endpoint)) from None
    if response.status_code == HTTPStatus.UNAUTHORIZED:
        raise EndpointError("401: the API key was refused")
    if response.status_code != HTTPStatus.OK:
        raise EndpointError(f"/v1/models answered {response.status_code}")
    served = [m.get("id") for m in response.json().get("data", [])]
    if endpoint.model not in served:
        raise EndpointError(f"model {endpoint.model!r} is not served (served: {served})")


async def run_bench(
    endpoint: Endpoint, load: Load, levels: Sequence[int], progress: Progress
) -> list[LevelResult]:
    async with httpx.AsyncClient(
        verify=endpoint.ssl_context(),
        headers={**endpoint.headers(), "Authorization": f"Bearer {endpoint.api_key}"},
        timeout=httpx.Timeout(load.timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels)),
    ) as client:
        await preflight(client, endpoint)
        return [await run_level(client, endpoint, load, level, progress) for level in levels]


def table(results: Sequence[LevelResult]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    header = (
        f"{'concurrency':>11} {'requests':>8} {'errors':>6} {'req/s':>7} {'out tok/s':>9} "
        f"{'TTFT p50 ms':>11} {'TTFT p95 ms':>11} {'ITL p50 ms':>10} {'ITL p95 ms':>10}"
    )
    rows = [header]
    for level in results:
        f = level.figures()
        rows.append(
            f"{f['concurrency']:>11} {f['requests']:>8} {f['errors']:>6} "
            f"{f['requests_per_s']:>7.2f} {f['output_tokens_per_s']:>9.1f} "
            f"{cell(f['ttft_ms']['p50']):>11} {cell(f['ttft_ms']['p95']):>11} "
            f"{cell(f['itl_ms']['p50']):>10} {cell(f['itl_ms']['p95']):>10}"
        )
    return "\n".join(rows)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list such as 1,4,16") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels are positive integers, e.g. 1,4,16")
    return levels


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The options, each with its default in the help (argparse fills in %(default)s)."""
    parser = argparse.ArgumentParser(prog=prog, description=(__doc__ or "").split("\n", 1)[0])
    add_endpoint_arguments(parser)
    load = parser.add_argument_group("load")
    # A string default goes through `type` as if given on the command line, so the help shows
    # it as it is typed.
    load.add_argument(
        "--concurrency",
        type=_levels,
        default="1,4,16",
        metavar="N,N,...",
        help="clients at each level, one level after another (default: %(default)s)",
    )
    load.add_argument(
        "--duration",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long each level sends requests (default: %(default)g)",
    )
    load.add_argument(
        "--max-tokens",
        type=int,
        default=256,
        metavar="N",
        help="output tokens per request, every reply runs to it (default: %(default)s)",
    )
    load.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help="the user message (default: %(default)r)"
    )
    load.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="for each wait on an answer's next bytes; connecting has 10 s (default: %(default)g)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser


def main(
    argv: list[str] | None = None,
    progress_stream: TextIO | None = None,
    prog: str = "vllm-gcp bench",
) -> int:
    args = build_parser(prog).parse_args(argv)
    progress = Progress(progress_stream or sys.stderr)
    try:
        with resolve_endpoint(args) as endpoint:
            for warning in endpoint.warnings:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            print(
                f"Benchmark of {endpoint.base_url}, model {endpoint.model}: "
                f"{args.duration:g} s per level, max_tokens {args.max_tokens}"
            )
            load = Load(
                payload=chat_payload(endpoint.model, args.prompt, args.max_tokens),
                duration_s=args.duration,
                timeout_s=args.timeout,
            )
            results = asyncio.run(run_bench(endpoint, load, args.concurrency, progress))
    except EndpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(results))
    for level in results:
        if level.errors:
            print(f"concurrency {level.concurrency}: first error: {level.errors[0]}")
    if args.json is not None:
        document = {
            "endpoint": endpoint.base_url,
            "model": endpoint.model,
            "duration_s": args.duration,
            "max_tokens": args.max_tokens,
            "levels": [level.figures() for level in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 1 if any(level.errors for level in results) else 0


if __name__ == "__main__":
    sys.exit(main())
