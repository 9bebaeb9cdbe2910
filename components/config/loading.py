"""Reading the stack: the engine's config, each section parsed with every problem by key path.

`load()` reads every key of the `vllm-gcp` namespace (plus `gcp:project` and `gcp:zone`),
validates all of it at once and either returns a `StackConfig` or raises `ConfigError` listing
every problem by its key path, before the program registers any resource.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import pulumi
from pydantic import ValidationError

from components.config import raw_checks, rules
from components.config.problems import ConfigError, Problem, did_you_mean
from components.config.schema import (
    PROJECT,
    SECRET_KEYS,
    ZONE_NAME,
    AccessConfig,
    ElasticConfig,
    FleetConfig,
    HostConfig,
    MirrorConfig,
    ModelConfig,
    NetworkConfig,
    ObservabilityConfig,
    Section,
    StackConfig,
    StackSecrets,
    TlsConfig,
    project_id,
)

MISSING_PROJECT = Problem("gcp:project", "required: the GCP project to deploy into")
# The values the stack files leave to the user: the problem that reports each one missing, and
# the command that sets it.
_USER_VALUE_COMMANDS: dict[Problem, str] = {
    MISSING_PROJECT: "pulumi config set gcp:project <your-gcp-project-id>",
    rules.MISSING_SSH_CIDRS: (
        f"pulumi config set --path '{PROJECT}:access.sshCidrs[0]' <your-public-ip>/32"
    ),
}

_S = TypeVar("_S", bound=Section)


@dataclass(frozen=True)
class ParsedSections:
    """Each section as parsed: None where it could not be (its problems are reported)."""

    host: HostConfig | None
    model: ModelConfig | None
    access: AccessConfig | None
    network: NetworkConfig | None
    mirror: MirrorConfig | None
    tls: TlsConfig | None
    elastic: ElasticConfig | None  # also None when the stack sets no elastic section
    fleet: FleetConfig | None  # None when the stack sets no fleet section: one VM
    observability: ObservabilityConfig | None


# The namespace's top-level keys: the sections, in contract order, and the secrets.
KNOWN_KEYS = (*(f.name for f in fields(ParsedSections)), *SECRET_KEYS)


@dataclass(frozen=True)
class SecretTexts:
    """The secret values as plain text, for the checks; None where unset or empty."""

    tls_certificate: str | None
    tls_private_key: str | None
    hugging_face_token: str | None
    kibana_api_key: str | None
    elasticsearch_api_key: str | None


# ------------------------------------------------------------------------------------------------
# Reading the engine's config


def _configured_keys() -> dict[str, Any]:
    """Every key set in the stack, `namespace:key` to raw value (the engine's view of config)."""
    keys: dict[str, Any] = dict(pulumi.runtime.get_config_env())
    keys.update(pulumi.runtime.config.CONFIG.get())
    return keys


def _raw_value(raw: Any) -> Any:
    """Objects arrive as JSON text from the engine and as text or dicts from tests."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _own_keys(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The `vllm-gcp:` keys, without their namespace."""
    return {k.split(":", 1)[1]: v for k, v in raw.items() if k.startswith(f"{PROJECT}:")}


def _zone(raw: Mapping[str, Any]) -> str | None:
    zone = raw.get("gcp:zone")
    return str(zone) if zone else None


def _secret_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _secret_texts(raw: Mapping[str, Any]) -> SecretTexts:
    def text(name: str) -> str | None:
        return _secret_text(raw.get(f"{PROJECT}:{name}"))

    return SecretTexts(
        tls_certificate=text("tlsCertificate"),
        tls_private_key=text("tlsPrivateKey"),
        hugging_face_token=text("huggingFaceToken"),
        kibana_api_key=text("kibanaApiKey"),
        elasticsearch_api_key=text("elasticsearchApiKey"),
    )


# ------------------------------------------------------------------------------------------------
# Parsing the sections


def _aliases(model: type[Section]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _key_path(section: str, loc: tuple[int | str, ...]) -> str:
    path = f"{PROJECT}:{section}"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _describe(error: Mapping[str, Any], model: type[Section], key: str) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "list_type" and isinstance(error["input"], str):
        # `pulumi config set --path KEY VALUE` without an index stores one string.
        return (
            f"must be a list, not the single value {error['input']!r}: set its first item with "
            f"`pulumi config set --path '{key}[0]' {shlex.quote(error['input'])}`"
        )
    if kind == "extra_forbidden":
        known = _aliases(model) if len(loc) == 1 else []
        valid = f" (valid keys: {', '.join(known)})" if known else ""
        return f"unknown key{did_you_mean(str(loc[-1]), known)}{valid}"
    if kind == "literal_error":
        return f"{error['input']!r} is not one of {error['ctx']['expected']}"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    return f"{error['msg']} (got {error['input']!r})"


def _parse_section(name: str, model: type[_S], raw: object) -> tuple[_S | None, list[Problem]]:
    """The section and its problems; with problems, the section keeps its valid keys."""
    if not isinstance(raw, dict):
        problem = Problem(
            f"{PROJECT}:{name}", f"must be an object with keys {', '.join(_aliases(model))}"
        )
        return None, [problem]
    try:
        return model.model_validate(raw), []
    except ValidationError as error:
        failed = {item["loc"][0] for item in error.errors() if item["loc"]}
        problems = []
        for item in error.errors():
            key = _key_path(name, tuple(item["loc"]))
            problems.append(Problem(key, _describe(item, model, key)))
    # Keep checking the rest of the section: the valid keys, with defaults for the failed ones,
    # so one run reports every problem. The problems above already stop the program.
    try:
        return model.model_validate({k: v for k, v in raw.items() if k not in failed}), problems
    except ValidationError:
        return None, problems


def _parse_sections(own: Mapping[str, Any]) -> tuple[ParsedSections, list[Problem]]:
    """Every section, in contract order; an absent section takes its defaults (elastic: none)."""
    found: list[Problem] = []

    def parse(name: str, model: type[_S]) -> _S | None:
        value = _raw_value(own.get(name))
        section, problems = _parse_section(name, model, {} if value is None else value)
        found.extend(problems)
        return section

    has_elastic = _raw_value(own.get("elastic")) is not None
    has_fleet = _raw_value(own.get("fleet")) is not None
    sections = ParsedSections(
        host=parse("host", HostConfig),
        model=parse("model", ModelConfig),
        access=parse("access", AccessConfig),
        network=parse("network", NetworkConfig),
        mirror=parse("mirror", MirrorConfig),
        tls=parse("tls", TlsConfig),
        elastic=parse("elastic", ElasticConfig) if has_elastic else None,
        fleet=parse("fleet", FleetConfig) if has_fleet else None,
        observability=parse("observability", ObservabilityConfig),
    )
    return sections, found


# ------------------------------------------------------------------------------------------------
# The checks beyond one section


def _check_unknown_keys(own: Mapping[str, Any]) -> list[Problem]:
    return [Problem(f"{PROJECT}:{key}", _unknown_key(key)) for key in own if key not in KNOWN_KEYS]


def _unknown_key(key: str) -> str:
    # vllm-gcp:project for gcp:project: the program reads these settings from the provider's
    # namespace, where the provider reads them too.
    provider_key = f"gcp:{key}"
    if provider_key in raw_checks.READ_PROVIDER_KEYS:
        return (
            f"unknown key; did you mean `{provider_key}`? The {key} is the Google provider's "
            f"setting: pulumi config set {provider_key} <value>"
        )
    return f"unknown key{did_you_mean(key, KNOWN_KEYS)} (valid keys: {', '.join(KNOWN_KEYS)})"


def _check_provider_keys(raw: Mapping[str, Any]) -> list[Problem]:
    """gcp:project a project id; gcp:zone a zone name, in gcp:region where that is set too."""
    found: list[Problem] = []
    project = raw.get("gcp:project")
    if not project:
        found.append(MISSING_PROJECT)
    else:
        try:
            project_id(str(project))
        except ValueError as error:
            found.append(Problem("gcp:project", str(error)))
    zone = raw.get("gcp:zone")
    region = raw.get("gcp:region")
    if not zone:
        found.append(
            Problem("gcp:zone", "required: a zone that offers the GPU, e.g. us-central1-a")
        )
    elif not ZONE_NAME.fullmatch(str(zone)):
        found.append(Problem("gcp:zone", f"{zone!r} is not a zone name such as us-central1-a"))
    elif region and str(zone).rsplit("-", 1)[0] != region:
        found.append(Problem("gcp:region", f"{region} is not the region of zone {zone}"))
    return found


def _apply_rules(sections: ParsedSections, zone: str | None, secrets: SecretTexts) -> list[Problem]:
    """The cross-field rules, over the sections that parsed."""
    host, model, access, network, tls = (
        sections.host,
        sections.model,
        sections.access,
        sections.network,
        sections.tls,
    )
    found: list[Problem] = []
    if host is not None:
        # A fleet's gcp:zone names its region only: its own zones are checked below.
        found += rules.check_machine(host, zone if sections.fleet is None else None)
        if sections.fleet is not None:
            found += rules.check_fleet(
                sections.fleet, host, zone, tls, network, sections.observability
            )
    if model is not None:
        found += rules.check_model_flags(model)
        if host is not None:
            found += rules.check_model_fit(model, host)
    if access is not None:
        found += rules.check_ssh_sources(access)
    if network is not None:
        found += rules.check_network(network)
        found += rules.check_private_mode(network, access, tls, model, sections.mirror, host)
    if tls is not None:
        found += rules.check_letsencrypt(tls)
        found += rules.check_tls_secrets(tls, secrets.tls_certificate, secrets.tls_private_key)
    found += rules.check_elastic(
        sections.elastic, secrets.kibana_api_key, secrets.elasticsearch_api_key, tls
    )
    return found


def _missing_user_values_hint(problems: list[Problem]) -> str:
    """How to set the values the stack files leave to the user, where those are missing."""
    commands = [command for problem, command in _USER_VALUE_COMMANDS.items() if problem in problems]
    if not commands:
        return ""
    lines = ["Set the values this stack leaves to you, then run `pulumi preview` again:"]
    lines += [f"  {command}" for command in commands]
    return "\n".join(lines)


def _collect_warnings(sections: ParsedSections, secrets: SecretTexts) -> list[str]:
    model = sections.model
    about_model = (
        []
        if model is None
        else rules.vllm_advisory_warnings(model) + rules.unchecked_model_warnings(model)
    )
    return about_model + rules.unused_secret_warnings(
        sections.model,
        sections.elastic,
        secrets.hugging_face_token,
        secrets.kibana_api_key,
        secrets.elasticsearch_api_key,
    )


# ------------------------------------------------------------------------------------------------
# The validated stack


def _secret_output(value: str | None) -> pulumi.Output[str] | None:
    return None if value is None else pulumi.Output.secret(value)


def _stack_config(
    raw: Mapping[str, Any], stack: str, sections: ParsedSections, secrets: SecretTexts
) -> StackConfig:
    """The StackConfig of a configuration without problems."""
    host, model, access, network, mirror, tls = (
        sections.host,
        sections.model,
        sections.access,
        sections.network,
        sections.mirror,
        sections.tls,
    )
    if (
        host is None
        or model is None
        or access is None
        or network is None
        or mirror is None
        or tls is None
    ):
        # A section is None only where a problem was reported, and problems stop validate first.
        raise RuntimeError("a configuration section is missing although no problem was reported")
    return StackConfig(
        project=str(raw.get("gcp:project")),
        zone=str(raw.get("gcp:zone")),
        stack=stack,
        host=host,
        model=model,
        access=access,
        network=network,
        mirror=mirror,
        tls=tls,
        elastic=sections.elastic,
        fleet=sections.fleet,
        observability=sections.observability or ObservabilityConfig(),
        secrets=StackSecrets(
            tls_certificate=_secret_output(secrets.tls_certificate),
            tls_private_key=_secret_output(secrets.tls_private_key),
            hugging_face_token=_secret_output(secrets.hugging_face_token),
        ),
    )


def _field_path(key: str) -> str:
    """`vllm-gcp:access.sshCidrs` of `vllm-gcp:access.sshCidrs[0]`: the key below the section."""
    return ".".join(key.split("[", 1)[0].split(".")[:2])


def _without_judgements_of_defaults(
    rule_problems: list[Problem], section_problems: list[Problem]
) -> list[Problem]:
    """The rules' problems, less those that speak of a value the section refused.

    A refused key takes its default for the rules, so they can judge the rest of the section;
    what they then say of that key is about the default, not what the user gave (a malformed
    sshCidrs would also be "required, non-empty", with advice to set what was just set), and so
    is what they say of its section as a whole (elastic without a Kibana URL, when kibanaUrl was
    refused). The key's own problem says what is wrong.
    """
    refused = {_field_path(p.key) for p in section_problems}
    refused_sections = {path.split(".", 1)[0] for path in refused}
    return [
        p
        for p in rule_problems
        if _field_path(p.key) not in refused and p.key not in refused_sections
    ]


def validate(raw: Mapping[str, Any], stack: str) -> tuple[StackConfig, list[str]]:
    """Validate raw `namespace:key` values; return the config and warnings, or raise ConfigError."""
    own = _own_keys(raw)
    sections, section_problems = _parse_sections(own)
    secrets = _secret_texts(raw)
    rule_problems = _apply_rules(sections, _zone(raw), secrets)
    problems = [
        *_check_unknown_keys(own),
        *section_problems,
        *_check_provider_keys(raw),
        *_without_judgements_of_defaults(rule_problems, section_problems),
    ]
    problems = raw_checks.screened(raw, KNOWN_KEYS, problems)
    if problems:
        raise ConfigError(problems, _missing_user_values_hint(problems))
    return _stack_config(raw, stack, sections, secrets), _collect_warnings(sections, secrets)


def load() -> StackConfig:
    """Read and validate this stack's configuration; warnings go to the Pulumi log."""
    config, warnings = validate(_configured_keys(), pulumi.get_stack())
    for warning in warnings:
        pulumi.log.warn(warning)
    return config
