"""Hostile configuration never reaches the host: each input below is refused by its key path, all
in one pass, before the program registers any resource."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components.config import (
    ConfigError,
    HostConfig,
    ModelConfig,
    NetworkConfig,
    TlsConfig,
    rules,
    validate,
)
from components.config.schema import ZONE_NAME
from tests.harness import RecordingMocks, merged, run_program, stack_config

ELASTIC = {"kibanaUrl": "https://kb.example.com"}
KIBANA_KEY = {"vllm-gcp:kibanaApiKey": "kibana-key"}
LETSENCRYPT = {"mode": "letsencrypt", "domain": "llm.example.com", "email": "ops@example.com"}
SECRET_TOKEN = "hf_secret0123456789"

# (name, overrides, the key path it is refused at, a fragment of the message)
HOSTILE: list[tuple[str, dict[str, Any], str, str]] = [
    # --- control characters, in every string rendered into a host file (item 7) ---
    (
        "CR in servedName",
        {"vllm-gcp:model": {"servedName": "mistral\r"}},
        "vllm-gcp:model.servedName",
        "U+000D CARRIAGE RETURN",
    ),
    (
        "NUL in servedName",
        {"vllm-gcp:model": {"servedName": "mis\x00tral"}},
        "vllm-gcp:model.servedName",
        "U+0000 NUL) at position 3",
    ),
    (
        "a newline and a flag in one extra argument",
        {"vllm-gcp:model": {"extraArgs": ["--max-num-seqs", "64\n--port=9000"]}},
        "vllm-gcp:model.extraArgs[1]",
        "U+000A LINE FEED",
    ),
    (
        "ESC in an extra argument",
        {"vllm-gcp:model": {"extraArgs": ["--max-num-seqs", "\x1b[2J64"]}},
        "vllm-gcp:model.extraArgs[1]",
        "U+001B",
    ),
    (
        "a C1 control in gcsUri",
        {"vllm-gcp:model": {"source": "gcs", "gcsUri": "gs://weights/a\x85b"}},
        "vllm-gcp:model.gcsUri",
        "U+0085",
    ),
    (
        "SOH in gcsUri (not whitespace to its pattern)",
        {"vllm-gcp:model": {"source": "gcs", "gcsUri": "gs://weights/a\x01b"}},
        "vllm-gcp:model.gcsUri",
        "U+0001",
    ),
    (
        "a newline in revision",
        {"vllm-gcp:model": {"revision": "main\n"}},
        "vllm-gcp:model.revision",
        "LINE FEED",
    ),
    (
        "a newline after model.id",
        {"vllm-gcp:model": {"id": "mistralai/Mistral-Small-3.2-24B-Instruct-2506\n"}},
        "vllm-gcp:model.id",
        "LINE FEED",
    ),
    (
        "a newline after model.image",
        {"vllm-gcp:model": {"image": "vllm/vllm-openai:v0.27.0\n"}},
        "vllm-gcp:model.image",
        "LINE FEED",
    ),
    (
        "CR in toolCallParser",
        {"vllm-gcp:model": {"toolCallParser": "mistral\r"}},
        "vllm-gcp:model.toolCallParser",
        "CARRIAGE RETURN",
    ),
    (
        "a newline after tls.domain",
        {"vllm-gcp:tls": {**LETSENCRYPT, "domain": "llm.example.com\n"}},
        "vllm-gcp:tls.domain",
        "LINE FEED",
    ),
    (
        "CRLF after tls.email",
        {"vllm-gcp:tls": {**LETSENCRYPT, "email": "ops@example.com\r\n"}},
        "vllm-gcp:tls.email",
        "CARRIAGE RETURN",
    ),
    (
        "a terminal escape in connectorName",
        {"vllm-gcp:elastic": {**ELASTIC, "connectorName": "vLLM \x1b[31mprod"}, **KIBANA_KEY},
        "vllm-gcp:elastic.connectorName",
        "U+001B",
    ),
    (
        "a newline after kibanaUrl",
        {"vllm-gcp:elastic": {"kibanaUrl": "https://kb.example.com\n"}, **KIBANA_KEY},
        "vllm-gcp:elastic.kibanaUrl",
        "LINE FEED",
    ),
    (
        "a newline after the Kibana space",
        {"vllm-gcp:elastic": {**ELASTIC, "space": "default\n"}, **KIBANA_KEY},
        "vllm-gcp:elastic.space",
        "LINE FEED",
    ),
    (
        "a newline after sshUser",
        {"vllm-gcp:host": {"sshUser": "vllm\n"}},
        "vllm-gcp:host.sshUser",
        "LINE FEED",
    ),
    (
        "a newline after sshJumpHost",
        {"vllm-gcp:network": {"sshJumpHost": "ops@10.0.0.5\n"}},
        "vllm-gcp:network.sshJumpHost",
        "LINE FEED",
    ),
    (
        "a newline in an API range",
        {"vllm-gcp:access": {"apiCidrs": ["10.0.0.0/8\n"]}},
        "vllm-gcp:access.apiCidrs[0]",
        "LINE FEED",
    ),
    (
        "a second line in the Hugging Face token (the env file's next variable)",
        {"vllm-gcp:huggingFaceToken": f"{SECRET_TOKEN}\nVLLM_API_KEY=chosen"},
        "vllm-gcp:huggingFaceToken",
        "LINE FEED) at position 19",
    ),
    (
        "a newline after gcp:project",
        {"gcp:project": "my-project\n"},
        "gcp:project",
        "LINE FEED",
    ),
    (
        "a newline after gcp:zone",
        {"gcp:zone": "us-central1-a\n"},
        "gcp:zone",
        "LINE FEED",
    ),
    # --- reserved vLLM flags, in every spelling vLLM's parser takes (item 8) ---
    (
        "--api_key (underscores are dashes to vLLM)",
        {"vllm-gcp:model": {"extraArgs": ["--api_key", "chosen"]}},
        "vllm-gcp:model.extraArgs[0]",
        "--api_key is read by vLLM as --api-key",
    ),
    (
        "--api-key=value",
        {"vllm-gcp:model": {"extraArgs": ["--api-key=chosen"]}},
        "vllm-gcp:model.extraArgs[0]",
        "--api-key is set by the stack",
    ),
    (
        "--hos=, an abbreviation of --host",
        {"vllm-gcp:model": {"extraArgs": ["--max-num-seqs", "64", "--hos=0.0.0.0"]}},
        "vllm-gcp:model.extraArgs[2]",
        "--hos is read by vLLM as --host",
    ),
    (
        "--por, an abbreviation of --port",
        {"vllm-gcp:model": {"extraArgs": ["--por", "9000"]}},
        "vllm-gcp:model.extraArgs[0]",
        "read by vLLM as --port",
    ),
    (
        "--port.x, a JSON argument of --port",
        {"vllm-gcp:model": {"extraArgs": ["--port.x", "9000"]}},
        "vllm-gcp:model.extraArgs[0]",
        "read by vLLM as --port",
    ),
    (
        "--uds",
        {"vllm-gcp:model": {"extraArgs": ["--uds", "/run/vllm.sock"]}},
        "vllm-gcp:model.extraArgs[0]",
        "--uds is set by the stack",
    ),
    (
        "--config, which reads flags from a file",
        {"vllm-gcp:model": {"extraArgs": ["--config", "/root/.cache/vllm/x.yaml"]}},
        "vllm-gcp:model.extraArgs[0]",
        "--config would read more flags from a file",
    ),
    (
        "--conf=, an abbreviation of --config",
        {"vllm-gcp:model": {"extraArgs": ["--conf=x.yaml"]}},
        "vllm-gcp:model.extraArgs[0]",
        "read by vLLM as --config",
    ),
    (
        "--served-model-name, which the outputs and Elastic's connector name",
        {"vllm-gcp:model": {"extraArgs": ["--served-model-name", "chosen"]}},
        "vllm-gcp:model.extraArgs[0]",
        "--served-model-name is set by the stack (set model.servedName instead); remove it",
    ),
    (
        "--model=, the model id",
        {"vllm-gcp:model": {"extraArgs": ["--model=chosen"]}},
        "vllm-gcp:model.extraArgs[0]",
        "--model is set by the stack (set model.id instead); remove it",
    ),
    (
        "--ssl-certfile, a TLS listener behind Nginx",
        {"vllm-gcp:model": {"extraArgs": ["--ssl_certfile", "chosen"]}},
        "vllm-gcp:model.extraArgs[0]",
        "--ssl_certfile is read by vLLM as --ssl-certfile, which is set by the stack (Nginx "
        "terminates TLS; vLLM speaks plain HTTP on loopback); remove it",
    ),
    # --- keys in a namespace the program does not read (item 10) ---
    (
        "vllm:host, a typo for vllm-gcp:host",
        {"vllm:host": {"machineType": "g2-standard-8"}},
        "vllm:host",
        "did you mean `vllm-gcp:host`?",
    ),
    (
        "vllm_gcp:model",
        {"vllm_gcp:model": {"maxModelLen": 4096}},
        "vllm_gcp:model",
        "did you mean `vllm-gcp:model`?",
    ),
    (
        "gpc:zone, a typo for gcp:zone",
        {"gpc:zone": "us-central1-c"},
        "gpc:zone",
        "did you mean `gcp:zone`?",
    ),
    (
        "a provider this program does not use",
        {"aws:region": "us-east-1"},
        "aws:region",
        "unknown namespace 'aws'",
    ),
    (
        "a key without a namespace",
        {"model": {"id": "Qwen/Qwen2.5-7B-Instruct"}},
        "model",
        "did you mean `vllm-gcp:model`?",
    ),
]


def _engine_view(raw: dict[str, Any]) -> dict[str, str]:
    """As the engine passes config: objects as JSON text, strings as they are."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_input_is_refused_by_key(
    overrides: dict[str, Any], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        validate(_engine_view(stack_config("prod", overrides)), "prod")
    matching = [p for p in caught.value.problems if p.key == key]
    assert len(matching) == 1, str(caught.value)
    assert fragment in matching[0].message, str(caught.value)
    assert SECRET_TOKEN not in str(caught.value)
    assert "chosen" not in str(caught.value)  # values of reserved flags are never echoed


def _leaves(value: Any, path: str = "") -> set[str]:
    if isinstance(value, dict):
        return {leaf for k, v in value.items() for leaf in _leaves(v, f"{path}.{k}")}
    return {path}


def test_every_hostile_input_is_refused_at_once_before_any_resource() -> None:
    # As many as fit in one stack without setting a value twice: one error, every key path.
    combined: dict[str, Any] = {}
    expected: set[str] = set()
    for _, overrides, key, _ in HOSTILE:
        if key.startswith("vllm-gcp:model.extraArgs") or _leaves(overrides) & _leaves(combined):
            continue
        combined = merged(combined, overrides)
        expected.add(key)
    assert len(expected) >= 15
    combined = merged(
        combined, {"vllm-gcp:model": {"extraArgs": ["--api_key", "x", "--hos", "\r"]}}
    )
    expected |= {f"vllm-gcp:model.extraArgs[{i}]" for i in (0, 2, 3)}
    mocks = RecordingMocks()
    with pytest.raises(ConfigError) as caught:
        run_program(stack_config("prod", combined), stack="prod", mocks=mocks)
    assert {p.key for p in caught.value.problems} >= expected
    assert mocks.resources == []


@pytest.mark.parametrize(
    "raw",
    [
        {"pulumi:disable-default-providers": ["random"]},
        {"pulumi:tags": {"team": "security"}},
        {"gcp:region": "us-central1", "gcp:defaultLabels": {"team": "security"}},
        {"tls:proxy": {"fromEnv": True}},
        {"command:anything": "x"},
        {"random:anything": "x"},
    ],
)
def test_the_engines_and_the_providers_namespaces_are_read(raw: dict[str, Any]) -> None:
    config, _ = validate(_engine_view(stack_config("prod", raw)), "prod")
    assert config.model.id == "mistralai/Mistral-Small-3.2-24B-Instruct-2506"


def test_a_pem_secret_keeps_its_line_breaks() -> None:
    # Certificates and keys are multi-line by nature; their own parser checks them.
    raw = stack_config("prod", {"vllm-gcp:tls": {"mode": "provided", "domain": "llm.example.com"}})
    raw["vllm-gcp:tlsCertificate"] = (
        "-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n"
    )
    raw["vllm-gcp:tlsPrivateKey"] = (
        "-----BEGIN PRIVATE KEY-----\nnot one\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(ConfigError) as caught:
        validate(_engine_view(raw), "prod")
    assert [p.key for p in caught.value.problems] == ["vllm-gcp:tlsCertificate"]
    assert "control character" not in str(caught.value)


# --- patterns match whole values (item 9): the validators on their own, without the check for
# control characters that also catches a trailing newline ---


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        (ModelConfig, "id", "mistralai/Mistral-Small-3.2-24B-Instruct-2506\n"),
        (ModelConfig, "id", "mistralai/Mistr\u0430l-Small"),  # a Cyrillic a: another repository
        (ModelConfig, "image", "vllm/vllm-openai:v0.27.0\n"),
        (ModelConfig, "gcs_uri", "gs://weights/mistral\n"),
        (TlsConfig, "domain", "llm.example.com\n"),
        (TlsConfig, "email", "ops@example.com\n"),
        (HostConfig, "ssh_user", "vllm\n"),
        (NetworkConfig, "ssh_jump_host", "ops@10.0.0.5\n"),
    ],
)
def test_patterns_match_whole_values(model: type[Any], field: str, value: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        model(**{field: value})
    assert model(**{field: value.rstrip("\n").replace("\u0430", "a")}) is not None


def test_a_zone_with_a_trailing_newline_is_no_zone() -> None:
    assert ZONE_NAME.match("us-central1-a\n") is None
    # The machine rule takes the zone as it is named only when it is one.
    assert rules.check_machine(HostConfig(), "europe-west1-b\n") == []
    assert rules.check_machine(HostConfig(), "europe-west1-b") != []


def test_the_reference_extra_arguments_stay_valid() -> None:
    config, _ = validate(
        _engine_view(
            stack_config(
                "prod",
                {
                    "vllm-gcp:model": {
                        "extraArgs": [
                            "--max-num-seqs",
                            "64",
                            "--enable-prefix-caching",
                            "--api-server-count=2",
                            "--config-format",
                            "mistral",
                            "--compilation-config.level",
                            "3",
                            "-O3",
                            "--hf-token-path",
                            "x",
                            # Flags that start like reserved ones, and are not them.
                            "--model-impl",
                            "transformers",
                            "--ssl-ca-certs",
                            "x",
                            "--max-model-len",
                            "8192",
                        ]
                    }
                },
            )
        ),
        "prod",
    )
    assert config.model.extra_args[0] == "--max-num-seqs"
