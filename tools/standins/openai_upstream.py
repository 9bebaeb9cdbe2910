"""A stand-in for vLLM's OpenAI-compatible server, on 127.0.0.1 at a free port.

Serves GET /v1/models, POST /v1/chat/completions (plain, tool calls, and SSE streaming with
usage in the last chunk when `stream_options.include_usage`), POST /v1/completions and
POST /v1/embeddings. Every other path answers 200 too, as vLLM's unguarded routes (/metrics,
/tokenize, /pause, ...) do, so a proxy that leaks them is caught. What reaches it is recorded
twice: `arrivals` as soon as a request's header is read (whatever becomes of its body), and
`requests` once its body is complete and it is answered; a body that ends early (the proxy closed
the connection mid-body) is recorded in `aborted` and never answered, as uvicorn drops it.

HTTP/1.1 with keep-alive, like uvicorn: responses carry Content-Length, streams are chunked.
Generation speed: `stream_delay_s` before each streamed token; a non-streamed reply waits for
all its tokens (`tokens_per_reply * stream_delay_s`) before answering.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["OpenAIUpstream", "RecordedArrival", "RecordedRequest"]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # as received, with any query string
    headers: dict[str, str]  # lower-case names
    body: bytes
    client_port: int = 0  # the proxy's side of the connection: shows keep-alive reuse


@dataclass(frozen=True)
class RecordedArrival:
    """A request's header, recorded before its body is read."""

    method: str
    path: str  # as received, with any query string
    headers: dict[str, str]  # lower-case names
    client_port: int = 0


class _IncompleteBodyError(Exception):
    """The connection ended before the body did."""

    def __init__(self, received: int) -> None:
        super().__init__(f"the body ended after {received} bytes")
        self.received = received


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    upstream: OpenAIUpstream


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # As uvicorn (asyncio) does: without it, Nagle's algorithm holds a reply's body back
        # until the proxy acknowledges its headers, adding ~40 ms to keep-alive requests.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read `requests` instead."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _read_body(self) -> bytes:
        """The whole body, or _IncompleteBodyError where the connection ends first."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            received = 0
            while True:
                line = self.rfile.readline()
                if not line.endswith(b"\n"):
                    raise _IncompleteBodyError(received)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (trailer := self.rfile.readline()) not in (b"\r\n", b"\n"):
                        if not trailer:
                            raise _IncompleteBodyError(received)
                    return b"".join(parts)
                part = self.rfile.read(size)
                received += len(part)
                if len(part) < size or not self.rfile.readline().endswith(b"\n"):
                    raise _IncompleteBodyError(received)
                parts.append(part)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            raise _IncompleteBodyError(len(body))
        return body

    def _handle(self) -> None:
        server = self.server
        if not isinstance(server, _Server):
            raise TypeError(f"served by {type(server).__name__}, not the stand-in's server")
        upstream = server.upstream
        arrival = RecordedArrival(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            client_port=int(self.client_address[1]),
        )
        upstream.arrive(arrival)
        try:
            body = self._read_body()
        except _IncompleteBodyError as error:
            upstream.abort(arrival, error.received)
            self.close_connection = True
            return
        upstream.record(
            RecordedRequest(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                client_port=int(self.client_address[1]),
            )
        )
        route = self.path.split("?", 1)[0]
        authorised = self.headers.get("Authorization") == f"Bearer {upstream.api_key}"
        if upstream.api_key is not None and route.startswith("/v1/") and not authorised:
            self._json(401, {"error": {"message": "Unauthorized", "code": 401}})
            return
        try:
            request = json.loads(body) if body else {}
        except json.JSONDecodeError:
            request = {}
        if route == "/v1/models" and self.command == "GET":
            self._json(200, upstream.models_reply())
        elif route == "/v1/chat/completions" and self.command == "POST":
            if request.get("stream"):
                self._stream_chat(upstream, request)
            else:
                upstream.generate_delay()
                self._json(200, upstream.chat_reply(request))
        elif route == "/v1/completions" and self.command == "POST":
            upstream.generate_delay()
            self._json(200, upstream.completion_reply())
        elif route == "/v1/embeddings" and self.command == "POST":
            self._json(200, upstream.embeddings_reply())
        else:
            # vLLM answers these without the API key: a leak through the proxy shows as a 200.
            self._json(200, {"stand_in_route": route})

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream_chat(self, upstream: OpenAIUpstream, request: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in upstream.chat_stream_events(request):
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")


class OpenAIUpstream:
    """Context manager: the stand-in server running in a background thread."""

    def __init__(  # noqa: PLR0913, PLR0917 (each a knob of the stand-in)
        self,
        model: str = "test-model",
        tool_calls: bool = True,
        stream_delay_s: float = 0.0,
        tokens_per_reply: int = 16,
        api_key: str | None = None,
        tool_call_stream: str = "deltas",
    ) -> None:
        self.model = model
        self.tool_calls = tool_calls
        # How a streamed tool call arrives: "deltas" as vLLM's tool parsers stream it (the first
        # delta with id, type and name, then the arguments in pieces), "text" as a parser that
        # fails to stream it passes the raw `[TOOL_CALLS]name{...}` on as content (vllm#20028).
        if tool_call_stream not in ("deltas", "text"):
            raise ValueError(f"tool_call_stream must be deltas or text, not {tool_call_stream!r}")
        self.tool_call_stream = tool_call_stream
        self.stream_delay_s = stream_delay_s
        self.tokens_per_reply = tokens_per_reply
        self.api_key = api_key  # where set, /v1/* wants this bearer token, as vLLM's --api-key
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._arrivals: list[RecordedArrival] = []
        self._aborted: list[tuple[RecordedArrival, int]] = []
        self._tokens_sent = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll: shutdown() waits for it (the default, 0.5 s, on every stop).
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-upstream",
            daemon=True,
        )

    def __enter__(self) -> OpenAIUpstream:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def arrivals(self) -> list[RecordedArrival]:
        """A copy of every request header received so far, oldest first, answered or not."""
        with self._lock:
            return list(self._arrivals)

    @property
    def aborted(self) -> list[tuple[RecordedArrival, int]]:
        """Requests whose body ended early, with the body bytes received; never answered."""
        with self._lock:
            return list(self._aborted)

    @property
    def tokens_sent(self) -> int:
        """Completion tokens emitted so far (streamed and not)."""
        with self._lock:
            return self._tokens_sent

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._arrivals.clear()
            self._aborted.clear()
            self._tokens_sent = 0

    def arrive(self, arrival: RecordedArrival) -> None:
        with self._lock:
            self._arrivals.append(arrival)

    def abort(self, arrival: RecordedArrival, received: int) -> None:
        with self._lock:
            self._aborted.append((arrival, received))

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _count_tokens(self, count: int) -> None:
        with self._lock:
            self._tokens_sent += count

    def generate_delay(self) -> None:
        if self.stream_delay_s:
            time.sleep(self.stream_delay_s * self.tokens_per_reply)

    # --- replies, shaped as vLLM's ------------------------------------------------------------

    def models_reply(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "vllm", "root": ""}
            ],
        }

    def _usage(self, request: dict[str, Any]) -> dict[str, int]:
        prompt = len(json.dumps(request.get("messages", request.get("prompt", ""))).split())
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.tokens_per_reply,
            "total_tokens": prompt + self.tokens_per_reply,
        }

    def _tokens(self) -> list[str]:
        return [f"tok{i} " for i in range(self.tokens_per_reply)]

    def _wants_tool_call(self, request: dict[str, Any]) -> bool:
        return (
            self.tool_calls and bool(request.get("tools")) and request.get("tool_choice") != "none"
        )

    @staticmethod
    def _tool_name(request: dict[str, Any]) -> str:
        return str(request["tools"][0]["function"]["name"])

    @staticmethod
    def _tool_arguments(request: dict[str, Any]) -> str:
        """Arguments for the first tool: a stand-in string for each required parameter."""
        parameters = request["tools"][0]["function"].get("parameters") or {}
        return json.dumps({name: "stand-in" for name in parameters.get("required", [])})

    def chat_reply(self, request: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any]
        if self._wants_tool_call(request):
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"chatcmpl-tool-{uuid.uuid4().hex[:16]}",
                        "type": "function",
                        "function": {
                            "name": self._tool_name(request),
                            "arguments": self._tool_arguments(request),
                        },
                    }
                ],
            }
            finish_reason = "tool_calls"
        else:
            message = {"role": "assistant", "content": "".join(self._tokens())}
            finish_reason = "stop"
        self._count_tokens(self.tokens_per_reply)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": self._usage(request),
        }

    def chat_stream_events(self, request: dict[str, Any]) -> Any:
        """The SSE events of a streamed chat completion (without the final [DONE])."""
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        yield chunk({"role": "assistant", "content": ""})
        if self._wants_tool_call(request) and self.tool_call_stream == "text":
            arguments = self._tool_arguments(request)
            self._count_tokens(self.tokens_per_reply)
            yield chunk({"content": f"[TOOL_CALLS]{self._tool_name(request)}{arguments}"})
            yield chunk({}, "stop")
        elif self._wants_tool_call(request):
            # As vLLM's serving layer streams a parser's DeltaToolCall (exclude_unset): the first
            # delta names the call, the later ones carry only index and argument text.
            time.sleep(self.stream_delay_s)
            arguments = self._tool_arguments(request)
            first = {
                "index": 0,
                "id": f"chatcmpl-tool-{uuid.uuid4().hex[:16]}",
                "type": "function",
                "function": {"name": self._tool_name(request), "arguments": ""},
            }
            self._count_tokens(self.tokens_per_reply)
            yield chunk({"tool_calls": [first]})
            middle = len(arguments) // 2
            for piece in (arguments[:middle], arguments[middle:]):
                time.sleep(self.stream_delay_s)
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            yield chunk({}, "tool_calls")
        else:
            for token in self._tokens():
                time.sleep(self.stream_delay_s)
                self._count_tokens(1)
                yield chunk({"content": token})
            yield chunk({}, "stop")
        if (request.get("stream_options") or {}).get("include_usage"):
            yield {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": [],
                "usage": self._usage(request),
            }

    def completion_reply(self) -> dict[str, Any]:
        self._count_tokens(self.tokens_per_reply)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "text": "".join(self._tokens()), "finish_reason": "length"}],
            "usage": self._usage({}),
        }

    def embeddings_reply(self) -> dict[str, Any]:
        return {
            "object": "list",
            "model": self.model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.5, 1.0]}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }
