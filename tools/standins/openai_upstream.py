"""A stand-in for vLLM's OpenAI-compatible server, on 127.0.0.1 at a free port.

Serves GET /v1/models, POST /v1/chat/completions (plain, tool calls, and SSE streaming with
usage in the last chunk when `stream_options.include_usage`), POST /v1/completions and
POST /v1/embeddings. Every other path answers 200 too, as vLLM's unguarded routes (/metrics,
/tokenize, /pause, ...) do, so a proxy that leaks them is caught. What reaches it is recorded
twice: `arrivals` as soon as a request's header is read (whatever becomes of its body), and
`requests` once its body is complete and it is answered; a body that ends early (the proxy closed
the connection mid-body) is recorded in `aborted` and never answered, as uvicorn drops it.

Strict where vLLM is (vLLM 0.32.0's request validation, cited where each check is made): a model
other than the served one is a 404, `stream_options` without `stream`, an empty `tools`, a
`tool_choice` without tools or naming no offered tool, and "auto" tool choice on a server started
without `--enable-auto-tool-choice` (`auto_tool_choice=False`) are 400s, each with vLLM's message.

HTTP/1.1 with keep-alive, like uvicorn: responses carry Content-Length, streams are chunked.
Generation speed: `stream_delay_s` before each streamed token; a non-streamed reply waits for
all its tokens (`tokens_per_reply * stream_delay_s`) before answering.
"""

from __future__ import annotations

import json
import socket
import sys
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone before its reply was written (it timed out, or dropped a stream) is
        no error, as uvicorn logs none; anything else is printed as socketserver does."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


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
        refusal = upstream.refusal(route, request) if self.command == "POST" else None
        if refusal is not None:
            self._json(*refusal)
        elif route == "/v1/models" and self.command == "GET":
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
        auto_tool_choice: bool = True,
    ) -> None:
        self.model = model
        # Whether the model calls an offered tool; False: it answers in text.
        self.tool_calls = tool_calls
        # As `--enable-auto-tool-choice --tool-call-parser ...`: without them vLLM refuses
        # tool_choice "auto" (and a request with tools but no tool_choice, which means "auto").
        self.auto_tool_choice = auto_tool_choice
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

    # --- what vLLM refuses --------------------------------------------------------------------

    def refusal(self, route: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """vLLM's status and error body for a POST it refuses; None for one it serves."""
        if route not in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            return None
        model = request.get("model")
        if model and model != self.model:
            # serve/engine/serving.py, _check_model: the 404 names the served aliases.
            return _error(
                404,
                f"The model `{model}` does not exist. Valid aliases: {self.model}.",
                "NotFoundError",
                "model",
            )
        if route != "/v1/chat/completions":
            return None
        problem = _chat_request_problem(request)
        if problem is not None:
            # A model validator's error, as serve/exception_handling/handlers/validation.py
            # renders pydantic's: "1 validation error:" and the error, type "Bad Request".
            text, param = problem
            message = (
                f"1 validation error:\n  {{'type': 'value_error', 'loc': ('body',), "
                f"'msg': 'Value error, {text}'}}"
            )
            return _error(400, message, "Bad Request", param)
        if request.get("tools") and _tool_choice(request) == "auto" and not self.auto_tool_choice:
            # renderers/online_renderer.py: a tokenizer's tool parsing needs both flags.
            return _error(
                400,
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser '
                "to be set",
                "BadRequestError",
                None,
            )
        return None

    # --- replies, shaped as vLLM's ------------------------------------------------------------

    def _wants_tool_call(self, request: dict[str, Any]) -> bool:
        return self.tool_calls and bool(request.get("tools")) and _tool_choice(request) != "none"

    @staticmethod
    def _tool(request: dict[str, Any]) -> dict[str, Any]:
        """The tool a named tool_choice names, else the first offered."""
        choice = _tool_choice(request)
        for tool in request["tools"]:
            if not isinstance(choice, dict) or tool["function"]["name"] == _named(choice):
                return tool["function"]
        raise ValueError("the request was validated: tool_choice names an offered tool")

    @classmethod
    def _tool_name(cls, request: dict[str, Any]) -> str:
        return str(cls._tool(request)["name"])

    @classmethod
    def _tool_arguments(cls, request: dict[str, Any]) -> str:
        """Arguments for the tool: a stand-in string for each required parameter."""
        parameters = cls._tool(request).get("parameters") or {}
        return json.dumps({name: "stand-in" for name in parameters.get("required", [])})

    @staticmethod
    def _tool_call_finish_reason(request: dict[str, Any]) -> str:
        # chat_completion/serving.py: "tool_calls" for "auto" or "required" tool calls, "stop"
        # for a named tool choice.
        return "stop" if isinstance(_tool_choice(request), dict) else "tool_calls"

    def chat_reply(self, request: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any]
        if self._wants_tool_call(request):
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": _tool_call_id(),
                        "type": "function",
                        "function": {
                            "name": self._tool_name(request),
                            "arguments": self._tool_arguments(request),
                        },
                    }
                ],
            }
            finish_reason = self._tool_call_finish_reason(request)
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
            # As a vLLM tool parser streams a call through the serving layer (hermes_tool_parser
            # `extract_tool_calls_streaming`; chat_completion/serving.py dumps each chunk with
            # exclude_unset): the first delta carries index, id, type and the function's name and
            # no arguments; later ones the index and a piece of the arguments; the piece parsed
            # from the last token rides in the chunk that carries the finish_reason.
            time.sleep(self.stream_delay_s)
            arguments = self._tool_arguments(request)
            first = {
                "id": _tool_call_id(),
                "type": "function",
                "index": 0,
                "function": {"name": self._tool_name(request)},
            }
            self._count_tokens(self.tokens_per_reply)
            yield chunk({"tool_calls": [first]})
            third = len(arguments) // 3
            for piece in (arguments[:third], arguments[third : 2 * third]):
                time.sleep(self.stream_delay_s)
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            last = {"index": 0, "function": {"arguments": arguments[2 * third :]}}
            yield chunk({"tool_calls": [last]}, self._tool_call_finish_reason(request))
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


def _error(status: int, message: str, kind: str, param: str | None) -> tuple[int, dict[str, Any]]:
    """vLLM's ErrorResponse (serve/engine/protocol.py): message, type, param and code."""
    return status, {"error": {"message": message, "type": kind, "param": param, "code": status}}


def _tool_call_id() -> str:
    # renderers/chat_utils.py, make_tool_call_id: "chatcmpl-tool-" and a random uuid's hex.
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def _tool_choice(request: dict[str, Any]) -> Any:
    """The request's tool_choice; with tools and none given, "auto" (check_tool_usage)."""
    if "tool_choice" not in request and request.get("tools"):
        return "auto"
    return request.get("tool_choice")


def _named(choice: dict[str, Any]) -> Any:
    function = choice.get("function")
    return function.get("name") if isinstance(function, dict) else None


# One return per check, in the order vLLM's validators make them.
def _chat_request_problem(request: dict[str, Any]) -> tuple[str, str] | None:  # noqa: PLR0911
    """What chat_completion/protocol.py's model validators refuse (validate_stream_options,
    check_tool_usage), with the parameter they name; None for a request they accept."""
    if request.get("stream_options") and not request.get("stream"):
        return "Stream options can only be defined when `stream=True`.", "stream_options"
    tools = request.get("tools")
    if tools == []:
        return (
            "`tools` must not be an empty array. Either provide at least one tool or omit the "
            "field entirely.",
            "tools",
        )
    choice = _tool_choice(request)
    if choice is None or choice == "none":
        return None
    if tools is None:
        return "When using `tool_choice`, `tools` must be set.", "tool_choice"
    if choice not in ("auto", "required") and not isinstance(choice, dict):
        return (
            f'Invalid value for `tool_choice`: {choice}! Only named tools, "none", "auto" or '
            '"required" are supported.',
            "tool_choice",
        )
    if isinstance(choice, dict):
        name = _named(choice)
        if not isinstance(name, str) or not name:
            return f"Invalid `name` in `function` in `tool_choice`: {name!r}", "tool_choice"
        if name not in {tool["function"]["name"] for tool in tools}:
            return (
                "The tool specified in `tool_choice` does not match any of the specified `tools`",
                "tool_choice",
            )
    return None
