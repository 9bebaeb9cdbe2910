"""A stand-in for vLLM's OpenAI-compatible server, on 127.0.0.1 at a free port.

Serves GET /v1/models, POST /v1/chat/completions (plain, tool calls, and SSE streaming with
usage in the last chunk when `stream_options.include_usage`), POST /v1/completions and
POST /v1/embeddings. Every other path answers 200 too, as vLLM's unguarded routes (/metrics,
/tokenize, /pause, ...) do, so a proxy that leaks them is caught; every request is recorded.

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

__all__ = ["OpenAIUpstream", "RecordedRequest"]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # as received, with any query string
    headers: dict[str, str]  # lower-case names
    body: bytes
    client_port: int = 0  # the proxy's side of the connection: shows keep-alive reuse


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
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        server = self.server
        if not isinstance(server, _Server):
            raise TypeError(f"served by {type(server).__name__}, not the stand-in's server")
        upstream = server.upstream
        body = self._read_body()
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

    def __init__(
        self,
        model: str = "test-model",
        tool_calls: bool = True,
        stream_delay_s: float = 0.0,
        tokens_per_reply: int = 16,
        api_key: str | None = None,
    ) -> None:
        self.model = model
        self.tool_calls = tool_calls
        self.stream_delay_s = stream_delay_s
        self.tokens_per_reply = tokens_per_reply
        self.api_key = api_key  # where set, /v1/* wants this bearer token, as vLLM's --api-key
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._tokens_sent = 0
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="openai-upstream", daemon=True
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
    def tokens_sent(self) -> int:
        """Completion tokens emitted so far (streamed and not)."""
        with self._lock:
            return self._tokens_sent

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._tokens_sent = 0

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
                        "function": {"name": self._tool_name(request), "arguments": "{}"},
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
        if self._wants_tool_call(request):
            time.sleep(self.stream_delay_s)
            call = {
                "index": 0,
                "id": f"chatcmpl-tool-{uuid.uuid4().hex[:16]}",
                "type": "function",
                "function": {"name": self._tool_name(request), "arguments": "{}"},
            }
            self._count_tokens(self.tokens_per_reply)
            yield chunk({"tool_calls": [call]})
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
