"""One Kibana connector as a Pulumi resource: a dynamic provider over Kibana's Connectors API.

Create, read, update and delete go through `/api/actions/connector` (headers `kbn-xsrf` and
`Authorization: ApiKey <key>`; spaces under `/s/<space>`); after create and update the provider
can run the connector once through Kibana (`_execute` with the `test` sub-action) so that a Kibana
that cannot reach or trust the endpoint fails `pulumi up` with Kibana's own message and a hint.

The provider is pickled into the stack state by reference to this module (`dill` stores the module
path and class name, not the code), so this module imports only the standard library, pulumi and
components.elastic_api (the HTTP client, error classification, redaction and retries it shares
with the inference endpoint's provider), and `components.kibana_connector.KibanaConnectorProvider`
must keep that path and name: every existing stack's state names it.

The Kibana API key is a credential of the deployer, not a property of the connector: it is not an
input, output or state of the resource. The provider reads it from the stack configuration in
`configure()`, and rotating it plans no change to the connector. Which configuration: the one the
program registers its default provider with in `pulumi up` and `preview` (the current one), and
in a refresh or destroy that runs no program, the one saved in the state by the last `pulumi up`
(the engine configures the providers of the previous snapshot then: pulumi
pkg/resource/deploy/deployment.go and providers/registry.go). So after a rotation, one
`pulumi up` (or `destroy --run-program`) makes the new key the one every command uses. The
connector's own key (`api_key`, the endpoint's bearer token) is a secret input and output. No
message raised or logged here contains either.

A Kibana that cannot be reached during a refresh does not block `pulumi up`: `read` warns and
keeps the state; create, update and delete still fail with the cause.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pulumi
import pulumi.dynamic
from pulumi.runtime import rpc

from components.elastic_api import REQUEST_TIMEOUT_SECONDS as REQUEST_TIMEOUT
from components.elastic_api import (
    ApiClient,
    ElasticApiError,
    Product,
    classify,
    is_transient,
    refresh_kept_message,
    verify_or_delete,
    with_retries,
)

# Config keys the stack manages; a key set to False equals a key left out (Kibana's default), so
# a connector created without `enableNativeFunctionCalling` does not drift from one with False.
MANAGED_CONFIG_KEYS = ("apiProvider", "apiUrl", "defaultModel", "enableNativeFunctionCalling")
SECRET_PROPERTIES = ("api_key",)
# A change to any of these means another connector (another Kibana, space, id or type): replace.
REPLACE_PROPERTIES = ("kibana_url", "space", "connector_id", "connector_type_id")
UPDATE_PROPERTIES = ("name", "config", "api_key", "verify")
# State written by versions before the key moved to the stack configuration holds the Kibana API
# key here. It is read only as a fallback (a CLI that passes no config), never diffed, and kept
# secret while it is still in a state (hence in additional_secret_outputs).
LEGACY_KIBANA_KEY_PROPERTY = "kibana_api_key"
# The stack config key, namespaced: for dynamic providers the engine passes the full stack
# configuration with namespaces kept, decrypted (pulumi pkg/resource/deploy/target.go
# `GetPackageConfig`, pulumi/pulumi#17673, CLI 3.139.0); a refresh or destroy without the program
# passes the configuration saved by the last `pulumi up`. Older CLIs pass an empty config.
KIBANA_API_KEY_CONFIG = "vllm-gcp:kibanaApiKey"
MIN_CLI_FOR_CONFIG = "3.139.0"

REQUEST_TIMEOUT_SECONDS = REQUEST_TIMEOUT
# Kibana's OpenAI connector waits up to 120 s for the model (DEFAULT_TIMEOUT_MS in Kibana's
# stack_connectors/common/openai/constants.ts) or xpack.actions.responseTimeout, if longer.
VERIFY_TIMEOUT_SECONDS = 330.0
VERIFY_ATTEMPTS = 3
VERIFY_RETRY_DELAY_SECONDS = 10.0
VERIFY_PROMPT = "Reply with the single word OK."
VERIFY_MAX_TOKENS = 16

PRIVILEGE = (
    '"Actions and Connectors: All" (Kibana feature privilege; in an API key\'s role descriptor: '
    'application "kibana-.kibana", privilege "feature_actions.all")'
)
KIBANA = Product(
    name="Kibana",
    url_key="elastic.kibanaUrl",
    key_config=KIBANA_API_KEY_CONFIG,
    privilege=PRIVILEGE,
)


class KibanaApiError(ElasticApiError):
    """A failed Kibana call; the message names the cause and holds no credential."""


class _Conflict(KibanaApiError):
    """The connector id is taken (409)."""


class MissingKibanaApiKey(KibanaApiError):
    """Neither the stack configuration nor an older state holds a Kibana API key."""


@dataclass(frozen=True)
class KibanaClient(ApiClient):
    """The Connectors API of one Kibana space, authenticated with an API key. The HTTP, the error
    classification and the redaction are components.elastic_api's, shared with Elasticsearch."""

    product: ClassVar[Product] = KIBANA
    error: ClassVar[type[ElasticApiError]] = KibanaApiError
    headers: ClassVar[Mapping[str, str]] = {"kbn-xsrf": "true", "Accept": "application/json"}

    base_url: str
    space: str
    api_key: str = field(repr=False)
    timeout: float = REQUEST_TIMEOUT_SECONDS
    redact: tuple[str, ...] = field(default=(), repr=False)

    def connector_path(self, connector_id: str = "") -> str:
        prefix = "" if self.space == "default" else f"/s/{self.space}"
        suffix = f"/{connector_id}" if connector_id else ""
        return f"{prefix}/api/actions/connector{suffix}"

    def get(self, connector_id: str) -> dict[str, Any] | None:
        """The connector, or None when Kibana has no connector with this id."""
        action = "reading the connector"
        response = self.send("GET", self.connector_path(connector_id), action)
        if response.status_code == 404:  # noqa: PLR2004 (HTTP status)
            return None
        return self.json_of(self.checked(response, action))

    def create(self, connector_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        action = "creating the connector"
        response = self.send("POST", self.connector_path(connector_id), action, body)
        if response.status_code == 409:  # noqa: PLR2004 (HTTP status)
            raise _Conflict(f"connector id {connector_id} already exists in space {self.space!r}")
        return self.json_of(self.checked(response, action))

    def update(self, connector_id: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The updated connector, or None when Kibana has no connector with this id."""
        action = "updating the connector"
        response = self.send("PUT", self.connector_path(connector_id), action, body)
        if response.status_code == 404:  # noqa: PLR2004 (HTTP status)
            return None
        return self.json_of(self.checked(response, action))

    def delete(self, connector_id: str) -> None:
        """Delete the connector; one already gone counts as deleted."""
        action = "deleting the connector"
        response = self.send("DELETE", self.connector_path(connector_id), action)
        if response.status_code != 404:  # noqa: PLR2004 (HTTP status)
            self.checked(response, action)

    def execute(
        self, connector_id: str, params: Mapping[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Kibana's run result: {"status": "ok", ...} or {"status": "error", "message", ...}."""
        action = "running the connector"
        path = f"{self.connector_path(connector_id)}/_execute"
        response = self.send("POST", path, action, {"params": dict(params)}, timeout)
        return self.json_of(self.checked(response, action))

    def privilege_scope(self) -> str:
        return f" in space {self.space!r}"

    def not_found_hint(self) -> str:
        return f"Check elastic.kibanaUrl and that space {self.space!r} exists"


def normalised_config(config: Any) -> Any:
    """The managed part of a connector config, with `enableNativeFunctionCalling: false` dropped."""
    if not isinstance(config, Mapping):
        return config
    return {
        key: config[key]
        for key in MANAGED_CONFIG_KEYS
        if key in config and not (key == "enableNativeFunctionCalling" and config[key] is False)
    }


def verification_hint(kibana_message: str) -> str:
    """What to check when Kibana could not run the connector, from Kibana's own words."""
    cause = classify(kibana_message)
    if cause == "tls":
        return (
            "Kibana does not trust the endpoint's certificate. In self-signed mode add the stack "
            "output `kibanaSettings` to kibana.yml (Elastic Cloud: the deployment's Kibana user "
            "settings) so xpack.actions.customHostSettings carries the CA, restart Kibana, then "
            "run `pulumi up` again."
        )
    if cause == "auth":
        return (
            "The endpoint refused the connector's API key: the key must be the stack output "
            "`apiKey` (Nginx checks `Authorization: Bearer <apiKey>`)."
        )
    if cause == "network":
        return (
            "Kibana cannot reach the endpoint in time. Admit Kibana's egress addresses in "
            "vllm-gcp:access.apiCidrs (Elastic Cloud deployments in GCP have no static egress "
            "IPs), check that the endpoint's name resolves, and that vLLM has finished loading "
            "the model (its container log on the host)."
        )
    return (
        "Check that Kibana trusts the endpoint's certificate (stack output `kibanaSettings`), "
        "that vllm-gcp:access.apiCidrs admits Kibana, and that the connector's API key is the "
        "stack output `apiKey`."
    )


def _plain(value: Any) -> Any:
    """A property value without the engine's secret wrapper, should one arrive wrapped."""
    return rpc.unwrap_rpc_secret(value)


class KibanaConnectorProvider(pulumi.dynamic.ResourceProvider):
    """Manages one Kibana connector; properties are those of `KibanaConnector`.

    Keep this class at `components.kibana_connector.KibanaConnectorProvider`: the state of every
    stack holds a pickle naming it. Instances pickled by earlier versions are restored without
    running `__init__` (pickle restores `__dict__`), so every attribute added since the first
    version needs a class-level default.
    """

    # Set by `configure()` in the provider process; never set where the provider is pickled (the
    # program registers the resource, the dynamic provider process configures it).
    _kibana_api_key: str | None = None

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
        """Take the Kibana API key from the current stack configuration.

        The SDK's `pulumi/dynamic/__main__.py` `get_provider` unpickles the provider from
        `props["__provider"]` and calls this once per provider process with the config the
        `Configure` RPC stored (secrets unwrapped). The key is looked up with its namespace: the
        engine keeps namespaces, and the SDK's `Config` would otherwise prefix the provider
        process's project name, which is not reliably `vllm-gcp` there.
        """
        value = _plain(req.config.get(KIBANA_API_KEY_CONFIG))
        self._kibana_api_key = str(value) if value else None

    def diff(
        self, _id: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        # A `kibana_api_key` in olds (state from an earlier version) is not compared: it is a
        # credential, not a property, and rotating it must plan no update.
        replaces = [key for key in REPLACE_PROPERTIES if _plain(olds.get(key)) != news.get(key)]
        updates = [key for key in UPDATE_PROPERTIES if self._differs(key, olds, news)]
        return pulumi.dynamic.DiffResult(
            changes=bool(replaces or updates), replaces=replaces, delete_before_replace=False
        )

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        client = self._client(props)
        connector_id = props["connector_id"]
        body = {"connector_type_id": props["connector_type_id"], **self._body(props)}
        try:
            client.create(connector_id, body)
        except _Conflict:
            # Ours from an earlier run whose state was lost: the id derives from this stack.
            self._adopt(client, props)
        if props.get("verify"):
            verify_or_delete(
                lambda: self._verify(client, props),
                lambda: client.delete(connector_id),
                "connector",
                KibanaApiError,
            )
        return pulumi.dynamic.CreateResult(connector_id, self._outputs(props))

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        # `props` is the old state (the SDK's Read passes the checkpoint's outputs).
        client = self._client(props)
        try:
            live = client.get(id_)
        except KibanaApiError as failure:
            # In the provider process pulumi.log.warn has no engine and prints "warning: ..." to
            # stderr, which the engine shows as a diagnostic (pulumi
            # sdk/go/common/resource/plugin/plugin.go). The message is KibanaClient's, which holds
            # no credential; redacted again all the same.
            pulumi.log.warn(
                client.redacted(refresh_kept_message(f"Kibana connector {id_}", "Kibana", failure))
            )
            return pulumi.dynamic.ReadResult(id_, self._kept(props))
        if live is None:
            return pulumi.dynamic.ReadResult("", {})
        outputs = self._outputs(props)  # without the Kibana API key an older state carries
        legacy = props.get(LEGACY_KIBANA_KEY_PROPERTY)
        if self._kibana_api_key is None and legacy:
            # No key in the config (a CLI before 3.139): keep the older state's copy, the only
            # key a later destroy could use.
            outputs[LEGACY_KIBANA_KEY_PROPERTY] = _plain(legacy)
        outputs["name"] = live.get("name", outputs.get("name"))
        outputs["connector_type_id"] = live.get("connector_type_id", props["connector_type_id"])
        outputs["config"] = normalised_config(live.get("config") or {})
        if live.get("is_missing_secrets"):
            # Kibana lost the key (e.g. a new encryption key): the next update sends it again.
            outputs["api_key"] = ""
        return pulumi.dynamic.ReadResult(id_, outputs)

    def update(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.UpdateResult:
        client = self._client(news, olds)
        if client.update(id_, self._body(news)) is None:
            # Deleted outside Pulumi since the last refresh: put it back under the same id.
            client.create(id_, {"connector_type_id": news["connector_type_id"], **self._body(news)})
        if news.get("verify"):
            self._verify(client, news)
        return pulumi.dynamic.UpdateResult(self._outputs(news))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        self._client(props).delete(id_)

    # Helpers ----------------------------------------------------------------------------------

    def _client(self, props: Mapping[str, Any], *older: Mapping[str, Any]) -> KibanaClient:
        states = (props, *older)
        legacy_keys = tuple(str(_plain(s.get(LEGACY_KIBANA_KEY_PROPERTY) or "")) for s in states)
        return KibanaClient(
            base_url=str(props["kibana_url"]).rstrip("/"),
            space=str(props["space"]),
            api_key=self._kibana_key(states),
            timeout=self.request_timeout,
            redact=(str(_plain(props.get("api_key") or "")), *legacy_keys),
        )

    def _kibana_key(self, states: tuple[Mapping[str, Any], ...]) -> str:
        """The configured key; failing that, the one an older state holds."""
        if self._kibana_api_key:
            return self._kibana_api_key
        for state in states:
            legacy = _plain(state.get(LEGACY_KIBANA_KEY_PROPERTY))
            if legacy:
                return str(legacy)
        raise MissingKibanaApiKey(
            f"No Kibana API key: set {KIBANA_API_KEY_CONFIG} with `pulumi config set --secret "
            f"{KIBANA_API_KEY_CONFIG} <encoded key>`. The Kibana connector's provider reads "
            f"{KIBANA_API_KEY_CONFIG} from the stack configuration, which the Pulumi CLI hands "
            f"to dynamic providers from version {MIN_CLI_FOR_CONFIG}: upgrade an older CLI"
        )

    @staticmethod
    def _kept(props: Mapping[str, Any]) -> dict[str, Any]:
        """The old state as it is (the SDK's Read adds `__provider` back itself)."""
        return {key: value for key, value in props.items() if key != "__provider"}

    @staticmethod
    def _body(props: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": props["name"],
            "config": dict(props["config"]),
            "secrets": {"apiKey": _plain(props["api_key"])},
        }

    @staticmethod
    def _outputs(props: Mapping[str, Any]) -> dict[str, Any]:
        outputs = {key: _plain(value) for key, value in props.items() if key != "__provider"}
        # Never write the Kibana API key into a new state, whatever the props hold.
        outputs.pop(LEGACY_KIBANA_KEY_PROPERTY, None)
        outputs["config"] = normalised_config(outputs.get("config") or {})
        return outputs

    @staticmethod
    def _differs(key: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> bool:
        old, new = _plain(olds.get(key)), _plain(news.get(key))
        if key == "config":
            return normalised_config(old) != normalised_config(new)
        return old != new

    def _adopt(self, client: KibanaClient, props: Mapping[str, Any]) -> None:
        connector_id = props["connector_id"]
        existing = client.get(connector_id)
        if existing is None or existing.get("connector_type_id") != props["connector_type_id"]:
            raise KibanaApiError(
                f"Connector id {connector_id} is taken in space {client.space!r} by a connector "
                f"of another type; delete it in Kibana (Stack Management > Connectors) and run "
                "`pulumi up` again"
            )
        client.update(connector_id, self._body(props))

    def _verify(self, client: KibanaClient, props: Mapping[str, Any]) -> None:
        """Run the connector once through Kibana; raise with Kibana's message and a hint."""
        config = props["config"]
        request = {
            "model": config.get("defaultModel"),
            "messages": [{"role": "user", "content": VERIFY_PROMPT}],
            "max_tokens": VERIFY_MAX_TOKENS,
        }
        params = {"subAction": "test", "subActionParams": {"body": json.dumps(request)}}

        def attempt() -> tuple[bool, str]:
            result = client.execute(props["connector_id"], params, self.verify_timeout)
            if result.get("status") == "ok":
                return True, ""
            parts = [str(result.get(k)) for k in ("message", "service_message") if result.get(k)]
            return False, client.redacted(": ".join(parts) or json.dumps(result)[:500])

        succeeded, failure = with_retries(
            attempt, self.verify_attempts, self.verify_retry_delay, is_transient
        )
        if succeeded:
            return
        raise KibanaApiError(
            f"Kibana could not run connector {props['name']!r} against {config.get('apiUrl')}: "
            f"{failure}\nHint: {verification_hint(failure)}\n"
            "(Set vllm-gcp:elastic.verify to false to skip this check.)"
        )


@dataclass(frozen=True)
class KibanaConnectorArgs:
    kibana_url: str  # base URL, no trailing slash
    space: str
    connector_id: str  # a UUID: Kibana before 9.4 refuses other custom ids for connectors
    connector_type_id: str
    name: str
    config: pulumi.Input[Mapping[str, Any]]  # non-secret connector config
    api_key: pulumi.Input[str]  # secret: the connector's secrets.apiKey
    verify: bool
    # No Kibana API key here: the provider reads vllm-gcp:kibanaApiKey from the stack config.


class KibanaConnector(pulumi.dynamic.Resource):
    """A Kibana connector managed through the Connectors API (dynamic provider)."""

    connector_id: pulumi.Output[str]
    name: pulumi.Output[str]
    config: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        resource_name: str,
        args: KibanaConnectorArgs,
        opts: pulumi.ResourceOptions | None = None,
        provider: KibanaConnectorProvider | None = None,
    ) -> None:
        props: dict[str, Any] = {
            "kibana_url": args.kibana_url,
            "space": args.space,
            "connector_id": args.connector_id,
            "connector_type_id": args.connector_type_id,
            "name": args.name,
            "config": args.config,
            "api_key": pulumi.Output.secret(args.api_key),
            "verify": args.verify,
        }
        # The legacy key stays listed so that an older state's copy is kept secret until a
        # refresh or an update drops it.
        secret_outputs = pulumi.ResourceOptions(
            additional_secret_outputs=[*SECRET_PROPERTIES, LEGACY_KIBANA_KEY_PROPERTY]
        )
        super().__init__(
            provider or KibanaConnectorProvider(),
            resource_name,
            props,
            pulumi.ResourceOptions.merge(opts, secret_outputs),
        )
