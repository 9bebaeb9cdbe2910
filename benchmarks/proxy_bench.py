"""What the Nginx proxy costs: the same requests through the proxy and straight to the upstream.

Not a test: a measurement to run by hand and record (README, "The TLS proxy").

    venv/bin/python -m benchmarks.proxy_bench [--seconds 2] [--samples 200]

The upstream is the OpenAI stand-in (tools/standins) in its own process; the proxy is the real
Nginx with the site the host gets (TLS, token check, keep-alive to the upstream). The client is a
minimal HTTP/1.1 one on raw sockets, so its own cost stays small next to what it measures.

- time to first streamed event: a streamed chat completion, from sending the request to the
  first token's SSE event; the median over `--samples` sequential requests;
- requests per second: non-streamed chat completions over keep-alive connections, at
  concurrency 1, 4 and 16, each for `--seconds`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import multiprocessing.connection
import socket
import ssl
import statistics
import sys
import threading
import time
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from tools.standins.nginx import NginxProxy
from tools.standins.openai_upstream import OpenAIUpstream

API_KEY = "bench-key-0123456789abcdefghijklmnopqrstuvwxyz01"
CONCURRENCY_LEVELS = (1, 4, 16)
FIRST_TOKEN_MARKER = b'"content": "tok'
TOKENS_PER_REPLY = 16
# Upstream generation time per reply: 0 shows the proxy's whole cost per request; 20 ms is still
# far quicker than a real model (hundreds of ms), so the second run bounds the real-world cost.
REPLY_MS = (0.0, 20.0)
# Fields of the site's access log line, split on spaces (nginx_own_time_ms).
LOG_STATUS, LOG_REQUEST_TIME, LOG_UPSTREAM_TIME = 6, 9, 10


def _request(path: str, body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


MESSAGES = [{"role": "user", "content": "Summarise the open alerts."}]
CHAT = _request("/v1/chat/completions", {"model": "bench-model", "messages": MESSAGES})
STREAMED_CHAT = _request(
    "/v1/chat/completions", {"model": "bench-model", "messages": MESSAGES, "stream": True}
)


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    tls: ssl.SSLContext | None


class ConnectionClosedError(ConnectionError):
    """The server closed a keep-alive connection (Nginx does after keepalive_requests)."""


class Connection:
    """One keep-alive HTTP/1.1 connection: send a request, read its whole response."""

    def __init__(self, target: Target) -> None:
        raw = socket.create_connection(("127.0.0.1", target.port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = (
            target.tls.wrap_socket(raw, server_hostname="localhost") if target.tls else raw
        )
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def exchange(self, request: bytes) -> float:
        """Send the request; return the seconds until the first token event (or the response)."""
        start = time.perf_counter()
        self.sock.sendall(request)
        status = self.reader.readline()
        if not status:
            raise ConnectionClosedError
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected response: {status!r}")
        headers: dict[bytes, bytes] = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            self.reader.read(int(headers[b"content-length"]))
            return time.perf_counter() - start
        first_token: float | None = None
        while size := int(self.reader.readline().split(b";")[0], 16):
            chunk = self.reader.read(size)
            self.reader.readline()
            if first_token is None and FIRST_TOKEN_MARKER in chunk:
                first_token = time.perf_counter() - start
        self.reader.readline()
        if first_token is None:
            raise RuntimeError("the stream carried no token")
        return first_token


@dataclass(frozen=True)
class Median:
    seconds: float
    margin_s: float  # half the width of its 95% confidence interval


def median_with_margin(values: Sequence[float]) -> Median:
    """The median and its 95% confidence margin, from the order statistics at n/2 +- 1.96*sqrt(n)/2
    (distribution-free: first-event times have a long tail, so no normal approximation)."""
    ordered = sorted(values)
    count = len(ordered)
    spread = 1.96 * math.sqrt(count) / 2
    low = ordered[max(0, math.floor(count / 2 - spread))]
    high = ordered[min(count - 1, math.ceil(count / 2 + spread))]
    median = statistics.median(ordered)
    return Median(median, max(median - low, high - median))


def added_time(direct: Median, proxy: Median) -> str:
    """What the proxy adds to the median time, or that it is lost in the noise. Never a negative
    time: where the proxy adds next to nothing, the difference of two noisy medians can come out
    below zero, which would read as a proxy that makes requests faster."""
    added = proxy.seconds - direct.seconds
    noise = math.hypot(direct.margin_s, proxy.margin_s)
    if added <= noise:
        return f"no added time above the noise (+-{noise * 1000:.2f} ms)"
    return f"+{added * 1000:.2f} ms (+-{noise * 1000:.2f} ms)"


def time_to_first_event(target: Target, samples: int) -> Median:
    connection = Connection(target)
    try:
        for _ in range(10):
            connection.exchange(STREAMED_CHAT)
        return median_with_margin([connection.exchange(STREAMED_CHAT) for _ in range(samples)])
    finally:
        connection.close()


def requests_per_second(target: Target, concurrency: int, seconds: float) -> float:
    counts = [0] * concurrency
    connections = [Connection(target) for _ in range(concurrency)]
    for connection in connections:
        connection.exchange(CHAT)
    start_line = threading.Barrier(concurrency + 1)
    deadline = 0.0

    def worker(index: int) -> None:
        start_line.wait()
        while time.perf_counter() < deadline:
            try:
                connections[index].exchange(CHAT)
            except ConnectionClosedError:
                connections[index].close()
                connections[index] = Connection(target)
                continue
            counts[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    start_line.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return sum(counts) / elapsed


def _serve_upstream(ready: multiprocessing.connection.Connection, reply_ms: float) -> None:
    delay = reply_ms / 1000 / TOKENS_PER_REPLY
    with OpenAIUpstream(
        model="bench-model",
        api_key=API_KEY,
        tokens_per_reply=TOKENS_PER_REPLY,
        stream_delay_s=delay,
    ) as upstream:
        ready.send(upstream.port)
        ready.recv()  # until the parent is done


@contextmanager
def upstream_process(reply_ms: float) -> Generator[int]:
    """The stand-in in a process of its own, so it does not share the client's interpreter."""
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=_serve_upstream, args=(child, reply_ms), daemon=True)
    process.start()
    try:
        yield int(parent.recv())
    finally:
        parent.send("stop")
        process.join(timeout=10)


def nginx_own_time(access_log: str) -> str:
    """Mean of $request_time - $upstream_response_time over the proxied requests.

    Fields of the site's log format: ... status bytes request_length request_time upstream_time.
    Nginx logs both times in seconds with millisecond resolution (ngx_http_log_module's
    $request_time, ngx_http_upstream_module's $upstream_response_time), rounded apart, so the
    difference of one request can be -0.001: a mean at or below zero is below that resolution,
    never a negative time.
    """
    own = [
        float(fields[LOG_REQUEST_TIME]) - float(fields[LOG_UPSTREAM_TIME])
        for fields in (line.split() for line in access_log.splitlines())
        if len(fields) > LOG_UPSTREAM_TIME
        and fields[LOG_STATUS] == "200"
        and fields[LOG_UPSTREAM_TIME] != "-"
    ]
    if not own:
        return "no proxied requests in the access log"
    mean_ms = statistics.mean(own) * 1000
    if mean_ms <= 0:
        return f"below the log's 1 ms resolution (mean of {len(own)} requests)"
    return f"{mean_ms:.3f} ms (mean of {len(own)} requests)"


def run(reply_ms: float, seconds: float, samples: int) -> None:
    with upstream_process(reply_ms) as port, NginxProxy(port, api_key=API_KEY) as proxy:
        direct = Target("direct", port, None)
        proxied = Target("proxy", proxy.https_port, proxy.ssl_context())
        print(f"\n## upstream reply time {reply_ms:g} ms ({TOKENS_PER_REPLY} tokens)")
        first = {t.name: time_to_first_event(t, samples) for t in (direct, proxied)}
        ratio = first["proxy"].seconds / first["direct"].seconds
        print(
            f"time to first streamed event, median of {samples}: "
            f"direct {first['direct'].seconds * 1000:.2f} ms, "
            f"proxy {first['proxy'].seconds * 1000:.2f} ms "
            f"({added_time(first['direct'], first['proxy'])}, proxy/direct {ratio:.2f})"
        )
        print("requests/s, non-streamed chat completions over keep-alive connections:")
        print(f"{'concurrency':>11} {'direct':>9} {'proxy':>9} {'proxy/direct':>13}")
        for concurrency in CONCURRENCY_LEVELS:
            rates = {
                t.name: requests_per_second(t, concurrency, seconds) for t in (direct, proxied)
            }
            ratio = rates["proxy"] / rates["direct"]
            print(
                f"{concurrency:>11} {rates['direct']:>9.0f} {rates['proxy']:>9.0f} {ratio:>13.2f}"
            )
        own = nginx_own_time(proxy.access_log())
        print(f"Nginx's own time per request (request - upstream time, access log): {own}")
        if "limiting requests" in proxy.error_log():
            print("warning: the proxy rate-limited some requests", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="per throughput measurement (default: %(default)g)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=200,
        help="streamed requests for the median (default: %(default)s)",
    )
    options = parser.parse_args(argv)
    print(f"# proxy_bench {time.strftime('%Y-%m-%d')}, {multiprocessing.cpu_count()} CPUs")
    for reply_ms in REPLY_MS:
        run(reply_ms, options.seconds, options.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
