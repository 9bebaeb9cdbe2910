"""A stand-in Kibana on 127.0.0.1 that enforces the Connectors API's rules as Kibana documents them.

What it checks, and answers in Kibana's shapes (`{"statusCode", "error", "message"}`):
- `kbn-xsrf` on every POST, PUT and DELETE (400 without);
- `Authorization: ApiKey <key>` (401 for an unknown key), and per key the feature privilege
  "Actions and Connectors": `all`, `read` (GET only) or `none` (403);
- spaces under `/s/<space>` (404 for an unknown space), ids unique per space (404, 409);
- custom ids must be UUID v1/v4, as for saved objects with encrypted attributes before 9.4;
- the `.gen-ai` schema (Kibana's stack_connectors/common/openai/schema.ts): per apiProvider the
  allowed and required config keys, unknown keys refused; secrets `{apiKey}`;
- `_execute` with the `test`/`run` sub-action POSTs the body to the connector's apiUrl with
  `Authorization: Bearer <apiKey>` and answers `{"status": "ok"|"error", ...}` with HTTP 200.

And what an operator meets over time: `revoke(key)` invalidates an API key (401 from then on),
`unavailable = True` answers every request 503 as a Kibana that is not ready yet does, and
`stop()`/`start()` close and reopen its port (the same port, so the URL stays valid).
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import httpx

from tools.standins.elastic_server import ElasticStandIn, Recorded

GEN_AI = ".gen-ai"
_UUID_V1_V4 = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[14][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)
_PATH = re.compile(
    r"^(?:/s/(?P<space>[a-z0-9_-]+))?/api/actions/connector(?:/(?P<id>[^/]+))?(?P<execute>/_execute)?$"
)
_COMMON_OPTIONAL = {
    "headers": dict,
    "contextWindowLength": (int, float),
    "temperature": (int, float),
}
# apiProvider -> (required keys, optional keys with their types)
_GEN_AI_CONFIG: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "Azure OpenAI": ({"apiUrl": str}, dict(_COMMON_OPTIONAL)),
    "OpenAI": (
        {"apiUrl": str},
        {"organizationId": str, "projectId": str, "defaultModel": str, **_COMMON_OPTIONAL},
    ),
    "Other": (
        {"apiUrl": str, "defaultModel": str},
        {
            "verificationMode": str,
            "enableNativeFunctionCalling": bool,
            **_COMMON_OPTIONAL,
        },
    ),
}
_SUB_ACTIONS = {"run", "test", "stream", "invokeAI", "invokeStream", "invokeAsyncIterator"}


@dataclass
class StandInKibana(ElasticStandIn):
    """Start with `with StandInKibana(keys={...}) as kibana:`; `kibana.url` is its base URL.
    Keys map to "all" | "read" | "none"."""

    PRODUCT: ClassVar[str] = "Kibana"
    spaces: tuple[str, ...] = ("default",)
    native_function_calling: bool = True  # False: a Kibana before 9.2
    upstream_ca: str | None = None  # PEM Kibana trusts for apiUrl (customHostSettings)
    execute_timeout: float = 5.0
    unavailable: bool = False  # answer every request 503 (Kibana starting, or its ES down)
    connectors: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def handler_type(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    def connector(self, connector_id: str, space: str = "default") -> dict[str, Any] | None:
        return self.connectors.get((space, connector_id))

    # The API ------------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[int, Any]:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(400, "Bad Request", "Invalid JSON in request body")
        self.requests.append(Recorded(method, path, dict(headers), body))
        self.stall()
        if self.unavailable:
            return _error(503, "Service Unavailable", "Kibana server is not ready yet")
        match = _PATH.match(path)
        if match is None:
            return _error(404, "Not Found", "Not Found")
        if method != "GET" and "kbn-xsrf" not in headers:
            return _error(400, "Bad Request", "Request must contain a kbn-xsrf header.")
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme != "ApiKey" or key not in self.keys:
            return _error(
                401,
                "Unauthorized",
                "[security_exception]: unable to authenticate with provided credentials and "
                "anonymous access is not allowed for this request",
            )
        space = match["space"] or "default"
        if space not in self.spaces:
            return _error(404, "Not Found", "Not Found")
        privilege = self.keys[key]
        connector_id = match["id"]
        if match["execute"]:
            if method != "POST" or connector_id is None:
                return _error(404, "Not Found", "Not Found")
            return self._execute(privilege, space, connector_id, body)
        if connector_id is None:
            return _error(404, "Not Found", "Not Found")
        if method == "GET":
            return self._get(privilege, space, connector_id)
        if method == "POST":
            return self._create(privilege, space, connector_id, body)
        if method == "PUT":
            return self._update(privilege, space, connector_id, body)
        if method == "DELETE":
            return self._delete(privilege, space, connector_id)
        return _error(404, "Not Found", "Not Found")

    def _get(self, privilege: str, space: str, connector_id: str) -> tuple[int, Any]:
        if privilege == "none":
            return _error(403, "Forbidden", "Unauthorized to get actions")
        stored = self.connector(connector_id, space)
        if stored is None:
            return _not_found(connector_id)
        return 200, _public(stored)

    def _create(self, privilege: str, space: str, connector_id: str, body: Any) -> tuple[int, Any]:
        problem = _body_problem(body, {"name", "connector_type_id", "config", "secrets"})
        if problem:
            return _error(400, "Bad Request", problem)
        if not _UUID_V1_V4.match(connector_id):
            return _error(
                400,
                "Bad Request",
                "Predefined IDs are not allowed for saved objects with encrypted attributes "
                "unless the ID is a UUID.",
            )
        type_id = body.get("connector_type_id")
        if type_id != GEN_AI:
            return _error(400, "Bad Request", f'Action type "{type_id}" is not registered.')
        if privilege != "all":
            return _error(403, "Forbidden", f'Unauthorized to create a "{type_id}" action')
        problem = self._gen_ai_problem(body.get("config", {}), body.get("secrets", {}))
        if problem:
            return _error(400, "Bad Request", problem)
        if (space, connector_id) in self.connectors:
            return _error(409, "Conflict", f"Saved object [action/{connector_id}] conflict")
        stored = {
            "id": connector_id,
            "name": body["name"],
            "connector_type_id": type_id,
            "config": _with_defaults(body["config"]),
            "secrets": body["secrets"],
        }
        self.connectors[(space, connector_id)] = stored
        return 200, _public(stored)

    def _update(self, privilege: str, space: str, connector_id: str, body: Any) -> tuple[int, Any]:
        problem = _body_problem(body, {"name", "config", "secrets"})
        if problem:
            return _error(400, "Bad Request", problem)
        if privilege != "all":
            return _error(403, "Forbidden", "Unauthorized to update actions")
        stored = self.connector(connector_id, space)
        if stored is None:
            return _not_found(connector_id)
        problem = self._gen_ai_problem(body.get("config", {}), body.get("secrets", {}))
        if problem:
            return _error(400, "Bad Request", problem)
        stored.update(
            name=body["name"], config=_with_defaults(body["config"]), secrets=body["secrets"]
        )
        return 200, _public(stored)

    def _delete(self, privilege: str, space: str, connector_id: str) -> tuple[int, Any]:
        if privilege != "all":
            return _error(403, "Forbidden", "Unauthorized to delete actions")
        if self.connectors.pop((space, connector_id), None) is None:
            return _not_found(connector_id)
        return 204, None

    def _gen_ai_problem(self, config: Any, secrets: Any) -> str:
        prefix = "error validating connector type config: "
        if not isinstance(config, dict):
            return f"{prefix}expected value of type [object]"
        provider = config.get("apiProvider")
        if provider not in _GEN_AI_CONFIG:
            return f"{prefix}[apiProvider]: expected one of {sorted(_GEN_AI_CONFIG)}"
        required, optional = _GEN_AI_CONFIG[provider]
        if not self.native_function_calling:
            optional = {k: v for k, v in optional.items() if k != "enableNativeFunctionCalling"}
        for key, kind in required.items():
            if not isinstance(config.get(key), kind):
                return f"{prefix}[{key}]: expected value of type [string] but got [undefined]"
        for key, value in config.items():
            if key == "apiProvider" or key in required:
                continue
            if key not in optional:
                return f"{prefix}[{key}]: definition for this key is missing"
            if not isinstance(value, optional[key]):
                return f"{prefix}[{key}]: invalid value"
        if config.get("verificationMode", "full") not in ("full", "certificate", "none"):
            return f"{prefix}[verificationMode]: expected one of full, certificate, none"
        secrets_prefix = "error validating connector type secrets: "
        if not isinstance(secrets, dict) or not isinstance(secrets.get("apiKey"), str):
            return f"{secrets_prefix}[apiKey]: expected value of type [string]"
        unknown = set(secrets) - {"apiKey"}
        if unknown:
            extra = sorted(unknown)[0]
            return f"{secrets_prefix}[{extra}]: definition for this key is missing"
        return ""

    def _execute(self, privilege: str, space: str, connector_id: str, body: Any) -> tuple[int, Any]:
        problem = _body_problem(body, {"params"}, required=("params",))
        if problem:
            return _error(400, "Bad Request", problem)
        if privilege != "all":
            return _error(403, "Forbidden", f'Unauthorized to execute a "{GEN_AI}" action')
        stored = self.connector(connector_id, space)
        if stored is None:
            return _not_found(connector_id)
        params = body["params"]
        sub_action = params.get("subAction")
        sub_params = params.get("subActionParams")
        if sub_action not in _SUB_ACTIONS:
            return 200, _run_error(connector_id, f"invalid subAction: {sub_action}", user=True)
        if sub_action not in ("run", "test"):
            return 200, _run_error(connector_id, "only run and test are simulated", user=True)
        if not isinstance(sub_params, dict) or not isinstance(sub_params.get("body"), str):
            return 200, _run_error(
                connector_id,
                "error validating action params: [subActionParams.body]: expected value of "
                "type [string]",
                user=True,
            )
        return 200, self._call_upstream(stored, sub_params["body"])

    def _call_upstream(self, stored: Mapping[str, Any], body_text: str) -> dict[str, Any]:
        connector_id = stored["id"]
        config = stored["config"]
        try:
            request = json.loads(body_text)
        except ValueError:
            return _run_error(connector_id, "Unexpected token in JSON", user=True)
        request.setdefault("model", config.get("defaultModel"))
        verify: ssl.SSLContext | bool = True
        if self.upstream_ca is not None:
            verify = ssl.create_default_context(cadata=self.upstream_ca)
        try:
            response = httpx.post(
                config["apiUrl"],
                json=request,
                headers={"Authorization": f"Bearer {stored['secrets']['apiKey']}"},
                timeout=self.execute_timeout,
                verify=verify,
            )
        except httpx.TimeoutException:
            millis = int(self.execute_timeout * 1000)
            return _service_error(connector_id, f"ECONNABORTED - timeout of {millis}ms exceeded")
        except httpx.ConnectError as error:
            text = str(error)
            if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text:
                return _service_error(
                    connector_id,
                    "UNABLE_TO_VERIFY_LEAF_SIGNATURE - unable to verify the first certificate",
                )
            host = httpx.URL(config["apiUrl"])
            return _service_error(
                connector_id, f"ECONNREFUSED - connect ECONNREFUSED {host.host}:{host.port}"
            )
        if response.status_code >= HTTPStatus.BAD_REQUEST:
            detail = (
                "Unauthorized API Error"
                if response.status_code == HTTPStatus.UNAUTHORIZED
                else f"API Error: {response.reason_phrase}"
            )
            return {
                "status": "error",
                "connector_id": connector_id,
                "message": "an error occurred while running the action",
                "retry": response.status_code >= HTTPStatus.INTERNAL_SERVER_ERROR,
                "service_message": f"Status code: {response.status_code}. Message: {detail}",
            }
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or "choices" not in data or "usage" not in data:
            return _run_error(
                connector_id,
                "Response validation failed (Error: [choices]: expected value of type [array] "
                "but got [undefined])",
            )
        return {"status": "ok", "connector_id": connector_id, "data": data}


class _Handler(BaseHTTPRequestHandler):
    stand_in: StandInKibana

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload = self.stand_in.handle(self.command, self.path, headers, raw)
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            if data:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client gave up (a timeout test)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return


def _error(status: int, error: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"statusCode": status, "error": error, "message": message}


def _not_found(connector_id: str) -> tuple[int, dict[str, Any]]:
    return _error(404, "Not Found", f"Saved object [action/{connector_id}] not found")


def _body_problem(body: Any, allowed: set[str], required: tuple[str, ...] = ("name",)) -> str:
    if not isinstance(body, dict):
        return "[request body]: expected a plain object value, but found [null] instead."
    for key in body:
        if key not in allowed:
            return f"[request body.{key}]: definition for this key is missing"
    for key in required:
        if not body.get(key):
            return f"[request body.{key}]: expected value of type [string] but got [undefined]"
    return ""


def _with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """Stored config, with the schema default Kibana may fill in (so reads show extra keys)."""
    stored = dict(config)
    if stored.get("apiProvider") == "Other":
        stored.setdefault("verificationMode", "full")
    return stored


def _public(stored: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": stored["id"],
        "name": stored["name"],
        "connector_type_id": stored["connector_type_id"],
        "config": stored["config"],
        "is_preconfigured": False,
        "is_deprecated": False,
        "is_missing_secrets": stored.get("is_missing_secrets", False),
        "is_system_action": False,
    }


def _run_error(connector_id: str, message: str, user: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {
        "status": "error",
        "connector_id": connector_id,
        "message": message,
        "retry": False,
    }
    if user:
        result["errorSource"] = "user"
    return result


def _service_error(connector_id: str, detail: str) -> dict[str, Any]:
    return {
        "status": "error",
        "connector_id": connector_id,
        "message": "an error occurred while running the action",
        "retry": True,
        "service_message": f"Status code: undefined. Message: Unexpected API Error: {detail}",
    }
