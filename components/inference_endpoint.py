"""One Elasticsearch inference endpoint as a Pulumi resource: a dynamic provider over the inference
API (`_inference/chat_completion/<id>`, service `openai`), the path Kibana 9.4+ offers beside
connectors (model management).

The API, as Elastic's specification states it (elastic/elasticsearch-specification,
specification/inference/): `PUT _inference/chat_completion/<id>` with `service: openai` and
`service_settings: {api_key, model_id, url}` creates it (cluster privilege `manage_inference`);
`GET` reads it without the key (`monitor_inference`, which `manage_inference` includes:
ClusterPrivilegeResolver's MANAGE_INFERENCE_PATTERN holds `cluster:monitor/xpack/inference*`);
`PUT .../_update` changes only the secrets and a few settings (OpenAiChatCompletionServiceSettings
`updateServiceSettings` keeps model_id and url), so another model or URL replaces the endpoint;
`DELETE` removes it; `POST .../_stream` runs a chat completion, the only way chat_completion runs,
answering server-sent events. Elasticsearch validates a new endpoint by running the model once
(SimpleChatCompletionServiceIntegrationValidator), so a create already fails when Elasticsearch
cannot reach or trust the model; after create and update the provider runs `_stream` itself too.

Like the Kibana connector's provider: this module is pickled by reference (dill stores
`components.inference_endpoint.InferenceEndpointProvider`, which is therefore permanent), imports
only the standard library, pulumi and components.elastic_api, and takes the Elasticsearch API
key from the stack configuration in `configure()` (`vllm-gcp:elasticsearchApiKey`), never from an
input or the state: a rotation plans no change, and a refresh or destroy that runs no program uses
the configuration the last `pulumi up` saved. A refresh during an outage warns and keeps the
state; create, update and delete fail with the cause. No message contains either key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, ClassVar

import httpx
import pulumi
import pulumi.dynamic
from pulumi.runtime import rpc

from components.elastic_api import (
    REQUEST_TIMEOUT_SECONDS,
    ApiClient,
    ElasticApiError,
    Product,
    classify,
    error_text,
    is_transient,
    read_events,
    refresh_kept_message,
    verify_or_delete,
    with_retries,
)

ELASTICSEARCH_API_KEY_CONFIG = "vllm-gcp:elasticsearchApiKey"
MIN_CLI_FOR_CONFIG = "3.139.0"
TASK_TYPE = "chat_completion"
SERVICE = "openai"
SECRET_PROPERTIES = ("api_key",)
# Another cluster, id, task or service is another endpoint; the model and URL cannot be changed by
# `_update` (OpenAiChatCompletionServiceSettings.updateServiceSettings keeps both): replace.
REPLACE_PROPERTIES = (
    "elasticsearch_url",
    "inference_id",
    "task_type",
    "service",
    "model_id",
    "url",
)
UPDATE_PROPERTIES = ("api_key", "verify")

# Elasticsearch waits up to 120 s for a chat completion (`timeout`, server default, of
# inference.chat_completion_unified and of `_update` for chat_completion from 9.5).
VERIFY_TIMEOUT_SECONDS = 330.0
VERIFY_ATTEMPTS = 3
VERIFY_RETRY_DELAY_SECONDS = 10.0
VERIFY_PROMPT = "Reply with the single word OK."
VERIFY_MAX_TOKENS = 16

PRIVILEGE = (
    'the cluster privilege "manage_inference" (it includes "monitor_inference", which `_stream` '
    "needs)"
)
ELASTICSEARCH = Product(
    name="Elasticsearch",
    url_key="elastic.elasticsearchUrl",
    key_config=ELASTICSEARCH_API_KEY_CONFIG,
    privilege=PRIVILEGE,
)
_VALIDATION_FAILED = "validation call to service"


class ElasticsearchApiError(ElasticApiError):
    """A failed Elasticsearch call; the message names the cause and holds no credential."""


class MissingElasticsearchApiKey(ElasticsearchApiError):
    """The stack configuration the provider was configured with holds no Elasticsearch API key."""


class _AlreadyExists(ElasticsearchApiError):
    """The inference id is taken (resource_already_exists_exception)."""


def _error_type(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return ""
    error = payload.get("error") if isinstance(payload, dict) else None
    return str(error.get("type", "")) if isinstance(error, dict) else ""


@dataclass(frozen=True)
class ElasticsearchClient(ApiClient):
    """The inference API of one Elasticsearch cluster, authenticated with an API key."""

    product: ClassVar[Product] = ELASTICSEARCH
    error: ClassVar[type[ElasticApiError]] = ElasticsearchApiError
    headers: ClassVar[Mapping[str, str]] = {"Accept": "application/json"}

    base_url: str
    api_key: str = field(repr=False)
    timeout: float = REQUEST_TIMEOUT_SECONDS
    redact: tuple[str, ...] = field(default=(), repr=False)

    @staticmethod
    def path(inference_id: str, suffix: str = "") -> str:
        return f"/_inference/{TASK_TYPE}/{inference_id}{suffix}"

    def get(self, inference_id: str) -> dict[str, Any] | None:
        """The endpoint, or None when Elasticsearch says it has none with this id."""
        action = "reading the inference endpoint"
        response = self.send("GET", self.path(inference_id), action)
        if (
            response.status_code == HTTPStatus.NOT_FOUND
            and _error_type(response) == "resource_not_found_exception"
        ):
            return None
        endpoints = self.json_of(self.checked(response, action)).get("endpoints") or [{}]
        return dict(endpoints[0])

    def create(self, inference_id: str, body: Mapping[str, Any], timeout: float) -> None:
        action = "creating the inference endpoint"
        response = self.send("PUT", self.path(inference_id), action, body, timeout)
        if (
            response.status_code == HTTPStatus.BAD_REQUEST
            and _error_type(response) == "resource_already_exists_exception"
        ):
            raise _AlreadyExists(f"inference endpoint {inference_id} already exists")
        self._checked_validation(response, action)

    def update(self, inference_id: str, body: Mapping[str, Any], timeout: float) -> bool:
        """Update in place; False when Elasticsearch has no endpoint with this id."""
        action = "updating the inference endpoint"
        response = self.send("PUT", self.path(inference_id, "/_update"), action, body, timeout)
        if (
            response.status_code == HTTPStatus.NOT_FOUND
            and _error_type(response) == "resource_not_found_exception"
        ):
            return False
        self._checked_validation(response, action)
        return True

    def delete(self, inference_id: str) -> None:
        """Delete the endpoint; one already gone counts as deleted."""
        action = "deleting the inference endpoint"
        response = self.send("DELETE", self.path(inference_id), action)
        if (
            response.status_code == HTTPStatus.NOT_FOUND
            and _error_type(response) == "resource_not_found_exception"
        ):
            return
        self.checked(response, action)

    def chat(self, inference_id: str, body: Mapping[str, Any], timeout: float) -> str:
        """Run one streamed chat completion; "" when it delivered an answer, else the failure in
        Elasticsearch's words. An Elasticsearch that refuses the request itself (JSON, not
        events: the key, a privilege, a missing endpoint) raises instead."""
        action = "running the inference endpoint"
        with self.stream("POST", self.path(inference_id, "/_stream"), action, body, timeout) as r:
            if not r.headers.get("content-type", "").startswith("text/event-stream"):
                r.read()
                self.checked(r, action)
                return self.redacted(f"Elasticsearch answered {r.status_code} without events")
            answered = False
            for event, data in read_events(r, self, action):
                if data == "[DONE]":
                    break
                try:
                    payload = json.loads(data)
                except ValueError:
                    payload = data
                if event == "error":
                    text = error_text(payload) or str(payload)[:500]
                    return self.redacted(f"{text} (HTTP {r.status_code})")
                answered = answered or bool(isinstance(payload, dict) and payload.get("choices"))
            return "" if answered else "the stream ended without a completion"

    def _checked_validation(self, response: httpx.Response, action: str) -> None:
        if response.status_code == HTTPStatus.BAD_REQUEST and _VALIDATION_FAILED in self.message(
            response
        ):
            failure = self.message(response)
            raise ElasticsearchApiError(
                f"Elasticsearch could not run the model while {action}: {failure}\n"
                f"Hint: {verification_hint(failure)}"
            )
        self.checked(response, action)


def verification_hint(report: str) -> str:
    """What to check when Elasticsearch could not run the model, from its own words."""
    cause = classify(report)
    if cause == "tls":
        return (
            "Elasticsearch does not trust the endpoint's certificate. It calls the model with "
            "its JVM's default trust store (the inference API has no TLS settings for the openai "
            "service): on a self-managed cluster add the stack output `caCertificate` to the "
            "trust store of every node as `kibanaSettings` describes and restart them; Elastic "
            "Cloud cannot be given a private CA, so use tls.mode letsencrypt or provided there."
        )
    if cause == "auth":
        return (
            "The endpoint refused the inference endpoint's API key: it must be the stack output "
            "`apiKey` (Nginx checks `Authorization: Bearer <apiKey>`)."
        )
    if cause == "network":
        return (
            "Elasticsearch cannot reach the endpoint in time. Admit Elasticsearch's egress "
            "addresses in vllm-gcp:access.apiCidrs (Elastic Cloud deployments in GCP have no "
            "static egress IPs), check that the endpoint's name resolves from Elasticsearch, and "
            "that vLLM has finished loading the model (its container log on the host)."
        )
    return (
        "Check that Elasticsearch trusts the endpoint's certificate, that "
        "vllm-gcp:access.apiCidrs admits Elasticsearch, and that the endpoint's API key is the "
        "stack output `apiKey`."
    )


def _plain(value: Any) -> Any:
    return rpc.unwrap_rpc_secret(value)


class InferenceEndpointProvider(pulumi.dynamic.ResourceProvider):
    """Manages one chat_completion inference endpoint; properties are those of
    `InferenceEndpoint`. Keep this class at
    `components.inference_endpoint.InferenceEndpointProvider` (every stack's state names it);
    attributes added later need class-level defaults (an older pickle is restored without
    `__init__`)."""

    _elasticsearch_api_key: str | None = None  # set by configure() in the provider process
    request_timeout: float = REQUEST_TIMEOUT_SECONDS
    verify_timeout: float = VERIFY_TIMEOUT_SECONDS
    verify_attempts: int = VERIFY_ATTEMPTS
    verify_retry_delay: float = VERIFY_RETRY_DELAY_SECONDS

    def __init__(
        self,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        verify_timeout: float = VERIFY_TIMEOUT_SECONDS,
        verify_attempts: int = VERIFY_ATTEMPTS,
        verify_retry_delay: float = VERIFY_RETRY_DELAY_SECONDS,
    ) -> None:
        super().__init__()
        self.request_timeout = request_timeout
        self.verify_timeout = verify_timeout
        self.verify_attempts = verify_attempts
        self.verify_retry_delay = verify_retry_delay

    # Pulumi's provider interface ----------------------------------------------------------------

    def configure(self, req: pulumi.dynamic.ConfigureRequest) -> None:
        """Take the Elasticsearch API key from the stack configuration, namespaced as the engine
        passes it to dynamic providers (pulumi pkg/resource/deploy/target.go GetPackageConfig)."""
        value = _plain(req.config.get(ELASTICSEARCH_API_KEY_CONFIG))
        self._elasticsearch_api_key = str(value) if value else None

    def diff(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        replaces = [key for key in REPLACE_PROPERTIES if _plain(olds.get(key)) != news.get(key)]
        updates = [
            key for key in UPDATE_PROPERTIES if _plain(olds.get(key)) != _plain(news.get(key))
        ]
        # The id is Elasticsearch's key: the old endpoint must go before its successor is made.
        return pulumi.dynamic.DiffResult(
            changes=bool(replaces or updates), replaces=replaces, delete_before_replace=True
        )

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        client = self._client(props)
        inference_id = str(props["inference_id"])
        try:
            client.create(inference_id, self._body(props), self.verify_timeout)
        except _AlreadyExists:
            self._adopt(client, props)
        if props.get("verify"):
            verify_or_delete(
                lambda: self._verify(client, props),
                lambda: client.delete(inference_id),
                "endpoint",
                ElasticsearchApiError,
            )
        return pulumi.dynamic.CreateResult(inference_id, self._outputs(props))

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        # `props` is the old state (the SDK's Read passes the checkpoint's outputs).
        client = self._client(props)
        try:
            live = client.get(id_)
        except ElasticApiError as failure:
            # pulumi.log.warn prints "warning: ..." in the provider process (kibana_connector.py).
            subject = f"Inference endpoint {id_}"
            pulumi.log.warn(
                client.redacted(refresh_kept_message(subject, "Elasticsearch", failure))
            )
            return pulumi.dynamic.ReadResult(id_, self._kept(props))
        if live is None:
            return pulumi.dynamic.ReadResult("", {})
        outputs = self._outputs(props)
        settings = live.get("service_settings") or {}
        outputs["service"] = live.get("service", outputs.get("service"))
        outputs["task_type"] = live.get("task_type", outputs.get("task_type"))
        outputs["model_id"] = settings.get("model_id", outputs.get("model_id"))
        outputs["url"] = settings.get("url", outputs.get("url"))
        return pulumi.dynamic.ReadResult(id_, outputs)

    def update(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.UpdateResult:
        client = self._client(news, olds)
        update = {"service_settings": {"api_key": _plain(news["api_key"])}}
        if not client.update(id_, update, self.verify_timeout):
            # Deleted outside Pulumi since the last refresh: put it back under the same id.
            client.create(id_, self._body(news), self.verify_timeout)
        if news.get("verify"):
            self._verify(client, news)
        return pulumi.dynamic.UpdateResult(self._outputs(news))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        self._client(props).delete(id_)

    # Helpers ------------------------------------------------------------------------------------

    def _client(self, props: Mapping[str, Any], *older: Mapping[str, Any]) -> ElasticsearchClient:
        key = self._elasticsearch_api_key
        if not key:
            raise MissingElasticsearchApiKey(
                f"No Elasticsearch API key: set {ELASTICSEARCH_API_KEY_CONFIG} with `pulumi "
                f"config set --secret {ELASTICSEARCH_API_KEY_CONFIG} <encoded key>`. The "
                f"inference endpoint's provider reads it from the stack configuration, which the "
                f"Pulumi CLI hands to dynamic providers from version {MIN_CLI_FOR_CONFIG}: "
                "upgrade an older CLI"
            )
        endpoint_keys = tuple(str(_plain(state.get("api_key") or "")) for state in (props, *older))
        return ElasticsearchClient(
            base_url=str(props["elasticsearch_url"]).rstrip("/"),
            api_key=key,
            timeout=self.request_timeout,
            redact=endpoint_keys,
        )

    @staticmethod
    def _body(props: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "service": props["service"],
            "service_settings": {
                "api_key": _plain(props["api_key"]),
                "model_id": props["model_id"],
                "url": props["url"],
            },
        }

    @staticmethod
    def _kept(props: Mapping[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in props.items() if key != "__provider"}

    @staticmethod
    def _outputs(props: Mapping[str, Any]) -> dict[str, Any]:
        return {key: _plain(value) for key, value in props.items() if key != "__provider"}

    def _adopt(self, client: ElasticsearchClient, props: Mapping[str, Any]) -> None:
        """The id is taken: ours from a run whose state was lost (same service, task and URL)
        is brought up to date; anything else is someone else's endpoint and is left alone."""
        inference_id = str(props["inference_id"])
        existing = client.get(inference_id) or {}
        settings = existing.get("service_settings") or {}
        ours = (
            existing.get("service") == props["service"]
            and existing.get("task_type") == props["task_type"]
            and settings.get("url") == props["url"]
        )
        if not ours:
            raise ElasticsearchApiError(
                f"Inference id {inference_id} is taken in Elasticsearch at {client.base_url} by "
                f"an endpoint this stack did not make (service {existing.get('service')!r}, URL "
                f"{settings.get('url')!r}); set vllm-gcp:elastic.inferenceId to another id, or "
                f"delete it (DELETE _inference/{inference_id}) and run `pulumi up` again"
            )
        if settings.get("model_id") != props["model_id"]:
            # The model cannot be changed in place: make the endpoint again.
            client.delete(inference_id)
            client.create(inference_id, self._body(props), self.verify_timeout)
            return
        update = {"service_settings": {"api_key": _plain(props["api_key"])}}
        client.update(inference_id, update, self.verify_timeout)

    def _verify(self, client: ElasticsearchClient, props: Mapping[str, Any]) -> None:
        """Run the endpoint once through `_stream`; raise with Elasticsearch's words and a hint."""
        request = {
            "messages": [{"role": "user", "content": VERIFY_PROMPT}],
            "max_completion_tokens": VERIFY_MAX_TOKENS,
        }
        inference_id = str(props["inference_id"])

        def attempt() -> tuple[bool, str]:
            failure = client.chat(inference_id, request, self.verify_timeout)
            return not failure, failure

        succeeded, failure = with_retries(
            attempt, self.verify_attempts, self.verify_retry_delay, is_transient
        )
        if succeeded:
            return
        raise ElasticsearchApiError(
            f"Elasticsearch could not run inference endpoint {inference_id} against "
            f"{props['url']}: {failure}\nHint: {verification_hint(failure)}\n"
            "(Set vllm-gcp:elastic.verify to false to skip this check.)"
        )


@dataclass(frozen=True)
class InferenceEndpointArgs:
    elasticsearch_url: str  # base URL, no trailing slash
    inference_id: str
    model_id: str  # the served model name
    url: pulumi.Input[str]  # the endpoint's /v1/chat/completions URL
    api_key: pulumi.Input[str]  # secret: the endpoint's bearer token
    verify: bool
    # No Elasticsearch API key here: the provider reads vllm-gcp:elasticsearchApiKey itself.


class InferenceEndpoint(pulumi.dynamic.Resource):
    """A chat_completion inference endpoint of service openai (dynamic provider)."""

    inference_id: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        args: InferenceEndpointArgs,
        opts: pulumi.ResourceOptions | None = None,
        provider: InferenceEndpointProvider | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "elasticsearch_url": args.elasticsearch_url,
            "inference_id": args.inference_id,
            "task_type": TASK_TYPE,
            "service": SERVICE,
            "model_id": args.model_id,
            "url": args.url,
            "api_key": pulumi.Output.secret(args.api_key),
            "verify": args.verify,
        }
        super().__init__(
            provider or InferenceEndpointProvider(),
            resource_name,
            props,
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=list(SECRET_PROPERTIES))
            ),
        )
