"""The one HTTP client the Elastic resources share: Kibana's Connectors API and Elasticsearch's
inference API go through it, with one error classification, one redaction and one retry rule.

Both dynamic providers (components/kibana_connector.py, components/inference_endpoint.py) are
pickled by reference to their modules and import this one in the provider process, so it imports
only the standard library and httpx.

What a failure says:
- the connection (timeout, TLS, refused, name not found): which product, which URL key, the
  cause, and, for TLS, that this machine does not trust the product's certificate;
- the answer (401, 403, 400, 404, other): the product's own message, and what to change (the
  stack config key holding the API key, the privilege the key lacks, the URL or space);
- a run of the model through the product (Kibana's `_execute`, Elasticsearch's `_stream`): the
  product's words, sorted by `classify` into certificate trust, the model's key, the network.
Every text that leaves here has every credential the client knows replaced by "[redacted]".
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import httpx

REQUEST_TIMEOUT_SECONDS = 30.0
REDACTED = "[redacted]"

# Words in a product's report of a failed call to the model, upper-cased. Kibana (Node.js) reports
# `UNABLE_TO_VERIFY_LEAF_SIGNATURE`, `ECONNREFUSED`, `Status code: 401`; Elasticsearch (Java)
# reports `PKIX path building failed ... unable to find valid certification path`,
# `Connection refused`, `Received an authentication error status code ... status [401]`
# (x-pack/plugin/inference BaseResponseHandler.AUTHENTICATION).
TLS_SIGNS = (
    "CERT",
    "SSL",
    "TLS",
    "SELF_SIGNED",
    "UNABLE_TO_VERIFY",
    "HOSTNAME",
    "ALTNAME",
    "PKIX",
    "HANDSHAKE",
)
AUTH_SIGNS = (
    "STATUS CODE: 401",
    "UNAUTHORIZED",
    "STATUS CODE: 403",
    "STATUS [401]",
    "STATUS [403]",
    "AUTHENTICATION ERROR",
)
NETWORK_SIGNS = (
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ECONNABORTED",
    "ENOTFOUND",
    "EAI_AGAIN",
    "EHOSTUNREACH",
    "ENETUNREACH",
    "SOCKET HANG UP",
    "TIMEOUT",
    "TIMED OUT",
    "CONNECTION REFUSED",
    "CONNECTION RESET",
    "NO ROUTE TO HOST",
    "UNKNOWNHOST",
    "STATUS CODE: 502",
    "STATUS CODE: 503",
    "STATUS CODE: 504",
    "STATUS [502]",
    "STATUS [503]",
    "STATUS [504]",
)
# Quick failures worth another try (vLLM restarting behind Nginx); a timeout is not retried.
RETRY_SIGNS = (
    "ECONNREFUSED",
    "ECONNRESET",
    "SOCKET HANG UP",
    "CONNECTION REFUSED",
    "CONNECTION RESET",
    "STATUS CODE: 502",
    "STATUS CODE: 503",
    "STATUS CODE: 504",
    "STATUS [502]",
    "STATUS [503]",
    "STATUS [504]",
)

Cause = Literal["tls", "auth", "network", "other"]


class ElasticApiError(Exception):
    """A failed call to Kibana or Elasticsearch: the message names the cause, no credential."""


def verify_or_delete(
    verify: Callable[[], None],
    delete: Callable[[], None],
    what: str,
    error_type: type[ElasticApiError],
) -> None:
    """A create is all or nothing: when the verification of what it made fails, that goes again
    (the next `pulumi up` creates and verifies anew), and the failure is raised."""
    try:
        verify()
    except ElasticApiError as failure:
        try:
            delete()
        except ElasticApiError as cleanup:
            raise error_type(
                f"{failure}\n(Deleting the unverified {what} failed too: {cleanup})"
            ) from None
        raise


def refresh_kept_message(subject: str, product: str, failure: ElasticApiError) -> str:
    """The warning of a refresh that could not read its resource: unreachable, refusing the key,
    answering 5xx says nothing about the resource, so the refresh keeps what the state knows
    rather than failing `pulumi up` over a resource it may not even change."""
    return (
        f"{subject}: refresh could not read it from {product}, so its state is kept unchanged "
        f"(the next refresh checks again). Cause: {failure}"
    )


def classify(report: str) -> Cause:
    """What a product's report of a failed call to the model points at, trust first."""
    upper = report.upper()
    if any(sign in upper for sign in TLS_SIGNS):
        return "tls"
    if any(sign in upper for sign in AUTH_SIGNS):
        return "auth"
    if any(sign in upper for sign in NETWORK_SIGNS):
        return "network"
    return "other"


def is_transient(report: str) -> bool:
    """A quick failure another try may get past (not a timeout, not trust, not the key)."""
    upper = report.upper()
    return any(sign in upper for sign in RETRY_SIGNS) and classify(report) not in ("tls", "auth")


_T = TypeVar("_T")


def with_retries(
    attempt: Callable[[], tuple[bool, _T]],
    attempts: int,
    delay: float,
    transient: Callable[[_T], bool],
) -> tuple[bool, _T]:
    """Run `attempt` (-> (succeeded, result)) up to `attempts` times while it fails transiently."""
    succeeded, result = attempt()
    for _ in range(1, attempts):
        if succeeded or not transient(result):
            break
        time.sleep(delay)
        succeeded, result = attempt()
    return succeeded, result


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def is_tls_failure(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return any(sign in str(error).upper() for sign in ("SSL", "CERTIFICATE"))


def error_text(payload: Any) -> str:
    """The message of a Kibana (`{"message"}`) or Elasticsearch error body (`{"error": {"type",
    "reason", "caused_by"}}`, or the OpenAI-shaped `{"error": {"code", "message", "type"}}` of the
    unified chat completion API), with the chain of causes; "" when there is none."""
    if not isinstance(payload, Mapping):
        return ""
    if isinstance(payload.get("message"), str) and payload["message"]:
        return str(payload["message"])
    error = payload.get("error")
    if isinstance(error, str):
        return error
    parts: list[str] = []
    seen = 0
    while isinstance(error, Mapping) and seen < 8:  # noqa: PLR2004 (a bound on nested causes)
        reason = error.get("reason") or error.get("message")
        kind = error.get("type")
        if reason:
            parts.append(f"{kind}: {reason}" if kind else str(reason))
        error = error.get("caused_by")
        seen += 1
    return " (caused by: ".join(parts) + ")" * max(len(parts) - 1, 0)


@dataclass(frozen=True)
class Product:
    """What the messages of one API name: the product, its URL key, its API-key config key."""

    name: str  # "Kibana", "Elasticsearch"
    url_key: str  # "elastic.kibanaUrl"
    key_config: str  # "vllm-gcp:kibanaApiKey"
    privilege: str  # what a key's role needs, in words


class ApiClient:
    """HTTP with an `Authorization: ApiKey` header, errors classified, credentials redacted.

    Subclasses are frozen dataclasses with the fields `base_url`, `api_key`, `timeout` and
    `redact`, and name their `product`; they may add headers and refine the 403 and 404 hints.
    """

    product: ClassVar[Product]
    error: ClassVar[type[ElasticApiError]] = ElasticApiError
    headers: ClassVar[Mapping[str, str]] = {}
    base_url: str
    api_key: str
    timeout: float
    redact: tuple[str, ...]

    # Requests -----------------------------------------------------------------------------------

    def send(
        self,
        method: str,
        path: str,
        action: str,
        body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """One request; a transport failure raises `error` with the cause and what to check."""
        wait = self.timeout if timeout is None else timeout
        headers, content = self._prepared(body)
        try:
            with httpx.Client(timeout=wait) as http:
                return http.request(method, self.base_url + path, headers=headers, content=content)
        except httpx.HTTPError as error:
            raise self.transport_error(error, action, wait) from None

    def _prepared(self, body: Mapping[str, Any] | None) -> tuple[dict[str, str], bytes | None]:
        headers = {"Authorization": f"ApiKey {self.api_key}", **self.headers}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return headers, None if body is None else json.dumps(body).encode()

    def stream(
        self,
        method: str,
        path: str,
        action: str,
        body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> _Streamed:
        """A request whose body is read as it arrives (server-sent events)."""
        wait = self.timeout if timeout is None else timeout
        headers, content = self._prepared(body)
        return _Streamed(self, method, self.base_url + path, headers, content, wait, action)

    def transport_error(self, error: httpx.HTTPError, action: str, wait: float) -> ElasticApiError:
        name, url = self.product.name, self.base_url
        if isinstance(error, httpx.TimeoutException):
            return self.error(
                f"{name} at {url} did not answer within {wait:g} s while {action}; check "
                f"{self.product.url_key} and that {name} is up and reachable from here"
            )
        if isinstance(error, httpx.ConnectError):
            if is_tls_failure(error):
                return self.error(
                    f"TLS with {name} at {url} failed while {action}: "
                    f"{self.redacted(str(error))}. This machine does not trust {name}'s "
                    "certificate; point SSL_CERT_FILE at a bundle holding its CA"
                )
            return self.error(
                f"Cannot connect to {name} at {url} while {action}: "
                f"{self.redacted(str(error))}; check {self.product.url_key}"
            )
        return self.error(
            f"Request to {name} at {url} failed while {action}: "
            f"{type(error).__name__}: {self.redacted(str(error))}"
        )

    # Answers ------------------------------------------------------------------------------------

    def checked(self, response: httpx.Response, action: str) -> httpx.Response:
        """The response if it succeeded; else `error` with the product's message and a hint."""
        status = response.status_code
        if status < 400:  # noqa: PLR2004 (HTTP status)
            return response
        message = self.message(response)
        name = self.product.name
        if status == 401:  # noqa: PLR2004 (HTTP status)
            raise self.error(
                f"{name} refused the API key (401) while {action}: {message}. Set "
                f"{self.product.key_config} to an active API key (its `encoded` value) of the "
                f"deployment at {self.base_url}. A refresh or destroy that runs no program uses "
                "the key saved by the last `pulumi up`: after a rotation run `pulumi up` once, "
                "or `pulumi destroy --run-program`"
            )
        if status == 403:  # noqa: PLR2004 (HTTP status)
            raise self.error(
                f"The {name} API key lacks a privilege (403) while {action}: {message}. Give the "
                f"key's role {self.product.privilege}{self.privilege_scope()}"
            )
        if status == 400:  # noqa: PLR2004 (HTTP status)
            raise self.error(f"{name} rejected the request (400) while {action}: {message}")
        if status == 404:  # noqa: PLR2004 (HTTP status)
            raise self.error(
                f"{name} answered 404 while {action}: {message}. {self.not_found_hint()}"
            )
        raise self.error(f"{name} answered {status} while {action}: {message}")

    def privilege_scope(self) -> str:
        return ""

    def not_found_hint(self) -> str:
        return f"Check {self.product.url_key}"

    def message(self, response: httpx.Response) -> str:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        text = error_text(payload) or response.text.strip()[:500] or response.reason_phrase
        return self.redacted(text)

    def json_of(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code == 204 or not response.content:  # noqa: PLR2004 (HTTP status)
            return {}
        try:
            payload = response.json()
        except ValueError:
            raise self.error(
                f"{self.product.name} at {self.base_url} answered {response.status_code} with "
                f"something other than JSON; is {self.product.url_key} the "
                f"{self.product.name} endpoint?"
            ) from None
        return payload if isinstance(payload, dict) else {"value": payload}

    def redacted(self, text: str) -> str:
        """The text with every credential this client knows replaced."""
        return redact(text, (self.api_key, *self.redact))


class _Streamed:
    """`with client.stream(...) as response:` one request, its transport errors classified."""

    def __init__(  # noqa: PLR0913, PLR0917 (one request's parts)
        self,
        client: ApiClient,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
        wait: float,
        action: str,
    ) -> None:
        self._client = client
        self._request = (method, url, headers, content)
        self._wait = wait
        self._action = action
        self._http: httpx.Client | None = None
        self._context: Any = None

    def __enter__(self) -> httpx.Response:
        method, url, headers, content = self._request
        self._http = httpx.Client(timeout=self._wait)
        try:
            self._context = self._http.stream(method, url, headers=headers, content=content)
            return self._context.__enter__()
        except httpx.HTTPError as error:
            self._http.close()
            raise self._client.transport_error(error, self._action, self._wait) from None

    def __exit__(self, *exc: object) -> None:
        try:
            if self._context is not None:
                self._context.__exit__(*exc)
        finally:
            if self._http is not None:
                self._http.close()


def read_events(
    response: httpx.Response, client: ApiClient, action: str
) -> Iterator[tuple[str, str]]:
    """Server-sent events as (event, data), as Elasticsearch writes them: an optional byte-order
    mark, `event: <type>`, `data: <json or [DONE]>`, a blank line (x-pack/plugin/inference
    ServerSentEventsRestActionListener). A transport failure mid-stream raises `client.error`."""
    event, data = "message", []
    try:
        for raw in response.iter_lines():
            line = raw.lstrip("\ufeff")
            if not line:
                if data:
                    yield event, "\n".join(data)
                event, data = "message", []
            elif line.startswith("event:"):
                event = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].strip())
    except httpx.HTTPError as error:
        raise client.transport_error(error, action, client.timeout) from None
    if data:
        yield event, "\n".join(data)
