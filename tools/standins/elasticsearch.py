"""A stand-in Elasticsearch on 127.0.0.1 that enforces the inference API's rules for the `openai`
service as Elastic's API specification and the inference plugin state them.

Sources: elastic/elasticsearch-specification specification/inference/ (put_openai, get, delete,
update, chat_completion_unified: paths, bodies, privileges) and x-pack/plugin/inference in
elastic/elasticsearch (the messages and shapes below are the plugin's):
- `Authorization: ApiKey <key>` (401 `security_exception` otherwise); per key the cluster
  privilege `manage_inference` (everything), `monitor_inference` (GET and `_stream`) or none
  (403 naming the action, as the security layer does);
- paths `/_inference/{task_type}/{id}` (PUT, GET, DELETE), `/_inference/{id}` (GET, DELETE),
  `.../_update` (PUT), `/_inference/chat_completion/{id}/_stream` (POST, chat_completion only);
  ids as MlStrings.isValidId allows; task types the openai service offers;
- the openai service's settings for chat_completion (OpenAiChatCompletionServiceSettings):
  `model_id` required, `api_key` required, `url`, `organization_id`, `max_input_tokens`,
  `rate_limit.requests_per_minute`; task settings `user`, `headers`; any other key is refused
  ("Configuration contains settings [...] unknown to the [openai] service");
- create validates the endpoint by streaming "how big" to the model
  (SimpleChatCompletionServiceIntegrationValidator): a model that cannot be reached fails the
  create with 400 "Could not complete inference endpoint creation as validation call to service
  threw an exception.";
- an id in use: 400 `resource_already_exists_exception` "Inference endpoint [id] already exists";
  an unknown id: 404 `resource_not_found_exception` "Inference endpoint not found [id]";
- `_update` takes only `task_type`, `service_settings` and `task_settings` (else 400 "Request
  contained fields which cannot be updated ..."); of the service settings only the secret
  `api_key` and organization_id, max_input_tokens, rate_limit change (the plugin keeps model_id
  and url; this stand-in refuses them so a caller relying on changing them is caught);
- `_stream` calls the model's URL with `Authorization: Bearer <api_key>`, `stream: true`, and
  answers server-sent events as ServerSentEventsRestActionListener writes them (a byte-order
  mark, `event: message`, `data: <chunk>`, finally `data: [DONE]`; a failure is `event: error`
  with the status of the exception).

Trust: the model's certificate is checked against `upstream_ca` where given (a CA added to the
JVM trust store), else the system's CAs. Over time: `revoke(key)`, `unavailable = True` (503),
`stall_seconds`, `stop()`/`start()` on the same port.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import httpx

from tools.standins.elastic_server import ElasticStandIn, Recorded

__all__ = ["StandInElasticsearch"]

OPENAI_TASK_TYPES = ("chat_completion", "completion", "text_embedding", "embedding")
ALL_TASK_TYPES = (*OPENAI_TASK_TYPES, "sparse_embedding", "rerank")
_ID = re.compile(r"^[a-z0-9](?:[a-z0-9_\-.]*[a-z0-9])?$")
_PATH = re.compile(
    r"^/_inference(?:/(?P<first>[^/?]+))?(?:/(?P<second>[^/?]+))?(?:/(?P<op>_update|_stream))?"
    r"(?:\?.*)?$"
)
_COMPLETION_SETTINGS = {
    "api_key": str,
    "model_id": str,
    "url": str,
    "organization_id": str,
    "max_input_tokens": int,
    "rate_limit": dict,
}
_UPDATABLE_SETTINGS = ("api_key", "organization_id", "max_input_tokens", "rate_limit")
_TASK_SETTINGS = {"user": str, "headers": dict}
_STREAM_FIELDS = {
    "messages",
    "model",
    "max_completion_tokens",
    "stop",
    "temperature",
    "tool_choice",
    "tools",
    "top_p",
}
DEFAULT_RATE_LIMIT = {"requests_per_minute": 500}  # OpenAiChatCompletionServiceSettings
PRIVILEGES = ("manage_inference", "monitor_inference", "none")


@dataclass
class _Answer:
    status: int
    payload: Any = None  # JSON
    events: list[tuple[str, Any]] | None = None  # server-sent events instead


@dataclass
class StandInElasticsearch(ElasticStandIn):
    """Start with `with StandInElasticsearch(keys={...}) as es:`; `es.url` is its base URL.
    Keys map to one of PRIVILEGES."""

    PRODUCT: ClassVar[str] = "Elasticsearch"
    upstream_ca: str | None = None  # PEM the JVM trust store holds besides the system CAs
    upstream_timeout: float = 5.0
    unavailable: bool = False
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    upstream_requests: list[dict[str, Any]] = field(default_factory=list)

    def handler_type(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    def endpoint(self, inference_id: str) -> dict[str, Any] | None:
        return self.endpoints.get(inference_id)

    # The API ------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Mapping[str, str], raw: bytes) -> _Answer:  # noqa: PLR0911, PLR0912 (one early answer per case the API tells apart)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(400, "parse_exception", "request body is required to be JSON")
        self.requests.append(Recorded(method, path, dict(headers), body))
        self.stall()
        if self.unavailable:
            return _error(503, "master_not_discovered_exception", "no master node")
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme != "ApiKey" or key not in self.keys:
            return _error(
                401,
                "security_exception",
                "unable to authenticate with provided credentials and anonymous access is not "
                "allowed for this request",
            )
        match = _PATH.match(path)
        if match is None:
            return _error(400, "illegal_argument_exception", f"no handler found for uri [{path}]")
        first, second, op = match["first"], match["second"], match["op"]
        task_type, inference_id = (first, second) if second is not None else (None, first)
        if inference_id is None:
            return _error(405, "illegal_argument_exception", "method not allowed")
        if task_type is not None and task_type not in ALL_TASK_TYPES:
            return _error(400, "status_exception", f"Unknown task_type [{task_type}]")
        action = _action(method, op)
        if action is None:
            return _error(405, "illegal_argument_exception", f"method [{method}] not allowed")
        privilege = self.keys[key]
        if privilege == "none" or (privilege == "monitor_inference" and "admin" in action):
            return _error(
                403,
                "security_exception",
                f"action [{action}] is unauthorized for API key id [{key[:6]}] of user "
                "[vllm-gcp], this action is granted by the cluster privileges "
                "[manage_inference,manage,all]",
            )
        if op == "_stream":
            return self._stream(task_type, inference_id, body)
        if op == "_update":
            return self._update(task_type, inference_id, body)
        if method == "PUT":
            return self._put(task_type, inference_id, body)
        if method == "GET":
            return self._get(task_type, inference_id)
        return self._delete(task_type, inference_id)

    def _put(self, task_type: str | None, inference_id: str, body: Any) -> _Answer:  # noqa: PLR0911 (one early answer per case the API tells apart)
        if not _ID.match(inference_id):
            return _error(
                400,
                "action_request_validation_exception",
                f"Validation Failed: 1: Invalid inference_id; '{inference_id}' can contain "
                "lowercase alphanumeric (a-z and 0-9), hyphens or underscores; must start and end "
                "with alphanumeric;",
            )
        if not isinstance(body, dict):
            return _error(400, "parse_exception", "request body is required")
        task_type = task_type or body.get("task_type")
        if task_type is None:
            return _error(400, "status_exception", "Task type must be specified")
        unknown = set(body) - {"service", "service_settings", "task_settings", "chunking_settings"}
        if unknown:
            return _unknown_settings(dict.fromkeys(unknown), "openai")
        if body.get("service") != "openai":
            return _error(400, "status_exception", f"Unknown service [{body.get('service')}]")
        if task_type not in OPENAI_TASK_TYPES:
            return _error(
                400,
                "status_exception",
                f"The [openai] service does not support task type [{task_type}]",
            )
        if inference_id in self.endpoints:
            return _error(
                400,
                "resource_already_exists_exception",
                f"Inference endpoint [{inference_id}] already exists",
            )
        problem = _settings_problem(body.get("service_settings"), body.get("task_settings"))
        if problem is not None:
            return problem
        settings = dict(body["service_settings"])
        stored = {
            "inference_id": inference_id,
            "task_type": task_type,
            "service": "openai",
            "service_settings": settings,
            "task_settings": dict(body.get("task_settings") or {}),
        }
        failure = self._validate(stored)
        if failure is not None:
            return failure
        self.endpoints[inference_id] = stored
        return _Answer(200, _public(stored))

    def _get(self, task_type: str | None, inference_id: str) -> _Answer:
        stored = self.endpoints.get(inference_id)
        if stored is None:
            return _not_found(inference_id)
        if task_type is not None and task_type != stored["task_type"]:
            return _error(
                400,
                "status_exception",
                f"Requested task type [{task_type}] does not match the inference endpoint's task "
                f"type [{stored['task_type']}]",
            )
        return _Answer(200, {"endpoints": [_public(stored)]})

    def _delete(self, task_type: str | None, inference_id: str) -> _Answer:
        stored = self.endpoints.get(inference_id)
        if stored is None:
            return _not_found(inference_id)
        if task_type is not None and task_type != stored["task_type"]:
            return _error(400, "status_exception", "task type does not match the endpoint's")
        del self.endpoints[inference_id]
        return _Answer(200, {"acknowledged": True, "pipelines": [], "semantic_text_indices": []})

    def _update(self, task_type: str | None, inference_id: str, body: Any) -> _Answer:  # noqa: PLR0911 (one early answer per case the API tells apart)
        if not isinstance(body, dict) or not body:
            return _error(400, "status_exception", "Request body is empty")
        unknown = {
            k: v
            for k, v in body.items()
            if k not in ("task_type", "service_settings", "task_settings")
        }
        if unknown:
            return _error(
                400,
                "status_exception",
                "Request contained fields which cannot be updated, remove these fields and try "
                f"again [{_java_map(unknown)}]",
            )
        stored = self.endpoints.get(inference_id)
        if stored is None:
            return _not_found(inference_id)
        if (task_type or body.get("task_type") or stored["task_type"]) != stored["task_type"]:
            return _error(
                400,
                "status_exception",
                "Task type must match the task type of the existing endpoint",
            )
        new_settings = body.get("service_settings") or {}
        fixed = {k: v for k, v in new_settings.items() if k not in _UPDATABLE_SETTINGS}
        if fixed:
            return _unknown_settings(fixed, "openai")
        merged = {**stored["service_settings"], **new_settings}
        new_task = {**stored["task_settings"], **(body.get("task_settings") or {})}
        problem = _settings_problem(merged, new_task)
        if problem is not None:
            return problem
        candidate = {**stored, "service_settings": merged, "task_settings": new_task}
        failure = self._validate(candidate)
        if failure is not None:
            return failure
        self.endpoints[inference_id] = candidate
        return _Answer(200, _public(candidate))

    def _stream(self, task_type: str | None, inference_id: str, body: Any) -> _Answer:
        if task_type != "chat_completion":
            # The completion task's _stream takes {"input"}; only chat completion is simulated.
            return _error(400, "status_exception", "only chat_completion _stream is simulated")
        if not isinstance(body, dict):
            return _error(400, "parse_exception", "request body is required")
        unknown = sorted(set(body) - _STREAM_FIELDS)
        if unknown:
            return _error(
                400,
                "x_content_parse_exception",
                f"[chat_completion_request] unknown field [{unknown[0]}]",
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(
                400,
                "action_request_validation_exception",
                "Field [messages] cannot be an empty array",
            )
        stored = self.endpoints.get(inference_id)
        if stored is None:
            return _not_found(inference_id)
        request = {key: value for key, value in body.items() if key != "max_completion_tokens"}
        if "max_completion_tokens" in body:
            request["max_completion_tokens"] = body["max_completion_tokens"]
        status, events = self._call_model(stored, request)
        return _Answer(status, events=events)

    # Calling the model --------------------------------------------------------------------------

    def _validate(self, stored: Mapping[str, Any]) -> _Answer | None:
        """What creating or updating does first: one streamed "how big" through the model."""
        status, events = self._call_model(
            stored, {"messages": [{"role": "user", "content": "how big"}]}
        )
        if status == 200 and events and events[0][0] == "message":  # noqa: PLR2004 (HTTP status)
            return None
        cause = events[0][1]["error"] if events else {"type": "exception", "reason": "no answer"}
        return _Answer(
            400,
            {
                "error": {
                    "root_cause": [cause],
                    "type": "status_exception",
                    "reason": "Could not complete inference endpoint creation as validation call "
                    "to service threw an exception.",
                    "caused_by": cause,
                },
                "status": 400,
            },
        )

    def _call_model(
        self, stored: Mapping[str, Any], request: Mapping[str, Any]
    ) -> tuple[int, list[tuple[str, Any]]]:
        settings = stored["service_settings"]
        inference_id = stored["inference_id"]
        url = settings.get("url") or "https://api.openai.com/v1/chat/completions"
        payload = {**request, "model": request.get("model") or settings["model_id"], "stream": True}
        payload["stream_options"] = {"include_usage": True}
        headers = {
            "Authorization": f"Bearer {settings['api_key']}",
            **stored["task_settings"].get("headers", {}),
        }
        self.upstream_requests.append({"url": url, "body": payload, "headers": headers})
        verify: ssl.SSLContext = ssl.create_default_context()
        if self.upstream_ca is not None:
            verify.load_verify_locations(cadata=self.upstream_ca)
        failed = f"Http client failed to send request from inference entity id [{inference_id}]"
        try:
            with (
                httpx.Client(timeout=self.upstream_timeout, verify=verify) as client,
                client.stream("POST", url, json=payload, headers=headers) as response,
            ):
                if response.status_code >= 400:  # noqa: PLR2004 (HTTP status)
                    response.read()
                    return _model_status_error(inference_id, response)
                events = [("message", chunk) for chunk in _chunks(response)]
        except httpx.ConnectError as error:
            text = str(error)
            if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
                return _stream_error(
                    500,
                    failed,
                    "s_s_l_handshake_exception",
                    "PKIX path building failed: sun.security.provider.certpath."
                    "SunCertPathBuilderException: unable to find valid certification path to "
                    "requested target",
                )
            return _stream_error(500, failed, "connect_exception", "Connection refused")
        except httpx.TimeoutException:
            return _stream_error(500, failed, "socket_timeout_exception", "Read timed out")
        except httpx.HTTPError as error:
            return _stream_error(500, failed, "i_o_exception", str(error))
        return 200, events


def _chunks(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The model's SSE chunks, as Elasticsearch's unified chat completion re-emits them."""
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        yield {
            key: chunk[key]
            for key in ("id", "choices", "model", "object", "usage")
            if key in chunk and chunk[key] is not None
        }


def _model_status_error(
    inference_id: str, response: httpx.Response
) -> tuple[int, list[tuple[str, Any]]]:
    status = response.status_code
    detail = response.text.strip()[:300]
    if status in (401, 403):
        message = (
            f"Received an authentication error status code for request from inference entity id "
            f"[{inference_id}] status [{status}]. Error message: [{detail}]"
        )
        code = "unauthorized"
    elif status >= 500:  # noqa: PLR2004 (HTTP status)
        message = (
            f"Received a server error status code for request from inference entity id "
            f"[{inference_id}] status [{status}]. Error message: [{detail}]"
        )
        code = "server_error"
    else:
        message = (
            f"Received an unsuccessful status code for request from inference entity id "
            f"[{inference_id}] status [{status}]. Error message: [{detail}]"
        )
        code = "bad_request"
    # The unified API formats a model's error as OpenAI does (UnifiedChatCompletionException).
    return status, [
        ("error", {"error": {"code": code, "message": message, "type": "openai_error"}})
    ]


def _stream_error(
    status: int, reason: str, cause_type: str, cause: str
) -> tuple[int, list[tuple[str, Any]]]:
    error = {
        "root_cause": [{"type": cause_type, "reason": cause}],
        "type": "exception",
        "reason": reason,
        "caused_by": {"type": cause_type, "reason": cause},
    }
    return status, [("error", {"error": error, "status": status})]


def _action(method: str, op: str | None) -> str | None:
    if op == "_stream":
        return "cluster:monitor/xpack/inference/post" if method == "POST" else None
    if op == "_update":
        return "cluster:admin/xpack/inference/update" if method == "PUT" else None
    return {
        "PUT": "cluster:admin/xpack/inference/put",
        "GET": "cluster:monitor/xpack/inference/get",
        "DELETE": "cluster:admin/xpack/inference/delete",
    }.get(method)


def _settings_problem(service_settings: Any, task_settings: Any) -> _Answer | None:  # noqa: PLR0911 (one early answer per case the API tells apart)
    if not isinstance(service_settings, dict):
        return _error(
            400,
            "status_exception",
            "[service_settings] does not contain the required setting [model_id]",
        )
    unknown = {k: v for k, v in service_settings.items() if k not in _COMPLETION_SETTINGS}
    if unknown:
        return _unknown_settings(unknown, "openai")
    for required in ("model_id", "api_key"):
        if not isinstance(service_settings.get(required), str) or not service_settings[required]:
            return _error(
                400,
                "action_request_validation_exception",
                f"Validation Failed: 1: [service_settings] does not contain the required setting "
                f"[{required}];",
            )
    for key, kind in _COMPLETION_SETTINGS.items():
        if key in service_settings and not isinstance(service_settings[key], kind):
            return _error(
                400, "action_request_validation_exception", f"[service_settings] invalid [{key}]"
            )
    url = service_settings.get("url")
    if url is not None and not re.match(r"^https?://[^\s/]+", url):
        return _error(
            400,
            "action_request_validation_exception",
            f"Validation Failed: 1: [service_settings] Invalid url [{url}] received for field "
            "[url];",
        )
    limit = service_settings.get("rate_limit")
    if limit is not None and (set(limit) - {"requests_per_minute"}):
        return _unknown_settings(
            {k: limit[k] for k in set(limit) - {"requests_per_minute"}}, "openai"
        )
    tasks = task_settings or {}
    if not isinstance(tasks, dict):
        return _error(400, "status_exception", "[task_settings] must be an object")
    unknown_tasks = {k: v for k, v in tasks.items() if k not in _TASK_SETTINGS}
    if unknown_tasks:
        return _unknown_settings(unknown_tasks, "openai")
    return None


def _public(stored: Mapping[str, Any]) -> dict[str, Any]:
    settings = {k: v for k, v in stored["service_settings"].items() if k != "api_key"}
    settings.setdefault("rate_limit", dict(DEFAULT_RATE_LIMIT))
    return {
        "inference_id": stored["inference_id"],
        "task_type": stored["task_type"],
        "service": stored["service"],
        "service_settings": settings,
        "task_settings": dict(stored["task_settings"]),
    }


def _java_map(values: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in values.items()) + "}"


def _unknown_settings(values: Mapping[str, Any], service: str) -> _Answer:
    return _error(
        400,
        "status_exception",
        f"Configuration contains settings [{_java_map(values)}] unknown to the [{service}] service",
    )


def _not_found(inference_id: str) -> _Answer:
    return _error(
        404, "resource_not_found_exception", f"Inference endpoint not found [{inference_id}]"
    )


def _error(status: int, kind: str, reason: str) -> _Answer:
    cause = {"type": kind, "reason": reason}
    return _Answer(status, {"error": {"root_cause": [cause], **cause}, "status": status})


class _Handler(BaseHTTPRequestHandler):
    stand_in: StandInElasticsearch
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.stand_in.handle(self.command, self.path, headers, raw)
        try:
            if answer.events is not None:
                self._events(answer)
            else:
                self._json(answer)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _json(self, answer: _Answer) -> None:
        data = b"" if answer.payload is None else json.dumps(answer.payload).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if answer.status == 401:  # noqa: PLR2004 (HTTP status)
            self.send_header("WWW-Authenticate", 'ApiKey realm="security"')
        self.end_headers()
        self.wfile.write(data)

    def _events(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = list(answer.events or [])
        for event, data in events:
            self._chunk(f"\ufeffevent: {event}\ndata: {json.dumps(data)}\n\n".encode())
        if not events or events[-1][0] != "error":
            self._chunk(b"\xef\xbb\xbfevent: message\ndata: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return
