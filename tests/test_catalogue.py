"""The catalogue's facts: model families and their vLLM flags, tool-call parsers, advisories."""

from __future__ import annotations

import pytest

from components import catalogue
from components.config import ModelConfig
from components.vllm_server import container_spec

MISTRAL_FORMAT = (
    "--tokenizer-mode",
    "mistral",
    "--config-format",
    "mistral",
    "--load-format",
    "mistral",
)


@pytest.mark.parametrize(
    ("model_id", "family", "parser", "flags"),
    [
        ("mistralai/Mistral-Small-3.2-24B-Instruct-2506", "mistral", "mistral", MISTRAL_FORMAT),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral", None, ()),
        ("mistralai/Mixtral-8x22B-Instruct-v0.1", "mixtral", None, ()),
        ("Qwen/Qwen3-Coder-30B-A3B-Instruct", "qwen3_coder", "qwen3_xml", ()),
        ("Qwen/Qwen3-Coder-480B-A35B-Instruct", "qwen3_coder", "qwen3_xml", ()),
        ("Qwen/Qwen3-8B", "hermes", "hermes", ()),
        ("Qwen/Qwen3-235B-A22B-Instruct-2507", "hermes", "hermes", ()),
        ("Qwen/Qwen2.5-7B-Instruct", "hermes", "hermes", ()),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama3", "llama3_json", ()),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct", "llama3", "llama3_json", ()),
        ("meta-llama/Llama-3.2-3B-Instruct", "llama3", "llama3_json", ()),
        ("meta-llama/Llama-3.3-70B-Instruct", "llama3", "llama3_json", ()),
    ],
)
def test_each_family_gets_the_parser_and_flags_vllm_documents(
    model_id: str, family: str, parser: str | None, flags: tuple[str, ...]
) -> None:
    found = catalogue.family_of(model_id)
    assert found is not None
    assert (found.name, found.tool_call_parser, found.vllm_flags) == (family, parser, flags)


@pytest.mark.parametrize(
    "model_id", ["meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-70B-Instruct"]
)
def test_llama_3_0_is_no_tool_calling_family(model_id: str) -> None:
    assert catalogue.family_of(model_id) is None


def test_the_hermes_family_does_not_take_qwen3_coder_whatever_the_order() -> None:
    hermes = next(f for f in catalogue.MODEL_FAMILIES if f.name == "hermes")
    assert hermes.id_pattern.search("Qwen/Qwen3-Coder-30B-A3B-Instruct") is None
    assert hermes.id_pattern.search("Qwen/Qwen3-30B-A3B-Instruct-2507") is not None


def test_every_family_parser_is_one_vllm_registers() -> None:
    parsers = {f.tool_call_parser for f in catalogue.MODEL_FAMILIES} - {None}
    assert parsers == {"mistral", "llama3_json", "qwen3_xml", "hermes", "openai", "gemma4"}
    assert parsers <= catalogue.TOOL_CALL_PARSERS
    # Both names are registered, for the same parser class.
    assert {"qwen3_coder", "qwen3_xml"} <= catalogue.TOOL_CALL_PARSERS


def _family_and_tool_arguments(model: ModelConfig) -> list[str]:
    """What the unit passes after --gpu-memory-utilization: the family's and tool-call flags."""
    arguments = list(container_spec(model, 2, catalogue.DEFAULT_VLLM_IMAGE).arguments)
    index = arguments.index("--gpu-memory-utilization")
    return arguments[index + 2 :]


TOOLS = ["--enable-auto-tool-choice", "--tool-call-parser"]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            ModelConfig(id="mistralai/Mistral-Small-3.2-24B-Instruct-2506"),
            [*MISTRAL_FORMAT, *TOOLS, "mistral"],
        ),
        (ModelConfig(id="mistralai/Mixtral-8x7B-Instruct-v0.1"), []),
        (
            ModelConfig(id="mistralai/Mixtral-8x22B-Instruct-v0.1", tool_call_parser="mistral"),
            [*TOOLS, "mistral"],
        ),
        (ModelConfig(id="Qwen/Qwen3-Coder-30B-A3B-Instruct"), [*TOOLS, "qwen3_xml"]),
        (ModelConfig(id="Qwen/Qwen3-32B"), [*TOOLS, "hermes"]),
        (ModelConfig(id="meta-llama/Meta-Llama-3-8B-Instruct"), []),
        (ModelConfig(id="meta-llama/Llama-3.1-8B-Instruct"), [*TOOLS, "llama3_json"]),
        (ModelConfig(id="meta-llama/Llama-3.3-70B-Instruct"), [*TOOLS, "llama3_json"]),
    ],
    ids=lambda value: value.id if isinstance(value, ModelConfig) else None,
)
def test_the_command_line_carries_exactly_the_family_flags(
    model: ModelConfig, expected: list[str]
) -> None:
    assert _family_and_tool_arguments(model) == expected


def _names(version: tuple[int, int, int]) -> list[str]:
    return [advisory.name for advisory in catalogue.advisories_for(version)]


def _just_below(version: tuple[int, int, int]) -> tuple[int, int, int]:
    major, minor, patch = version
    return (major, minor, patch - 1) if patch else (major, minor - 1, 99)


@pytest.mark.parametrize("advisory", catalogue.VLLM_ADVISORIES, ids=lambda a: a.name)
def test_each_advisory_names_the_releases_below_its_fix(advisory: catalogue.Advisory) -> None:
    assert advisory.name in _names(_just_below(advisory.fixed_in))
    assert advisory.name in _names(advisory.introduced)
    assert advisory.name not in _names(advisory.fixed_in)


def test_cve_2026_73556_is_fixed_in_0_26_0() -> None:
    (advisory,) = [a for a in catalogue.VLLM_ADVISORIES if a.name == "CVE-2026-73556"]
    assert advisory.fixed_in == (0, 26, 0)
    assert "lm-format-enforcer" in advisory.summary
    assert "CVE-2026-73556" in _names((0, 25, 0))
    assert "CVE-2026-73556" not in _names((0, 26, 0))


def test_cve_2026_25960_affects_only_0_15_1_to_0_16() -> None:
    assert "CVE-2026-25960" not in _names((0, 15, 0))
    assert "CVE-2026-25960" in _names((0, 15, 1))
    assert "CVE-2026-25960" in _names((0, 16, 0))
    assert "CVE-2026-25960" not in _names((0, 17, 0))


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ((0, 27, 0), []),
        ((0, 26, 0), ["CVE-2026-73558"]),
        (
            (0, 25, 0),
            [
                "CVE-2026-71486",
                "CVE-2026-73555",
                "CVE-2026-73556",
                "CVE-2026-73559",
                "CVE-2026-73560",
                "CVE-2026-73558",
            ],
        ),
        (
            (0, 18, 0),
            [
                "CVE-2026-34753",
                "CVE-2026-44223",
                "CVE-2026-41523",
                "CVE-2026-48746",
                "CVE-2026-54234",
                "CVE-2026-55514",
                "CVE-2026-55574",
                "CVE-2026-71486",
                "CVE-2026-73555",
                "CVE-2026-73556",
                "CVE-2026-73560",
                "CVE-2026-73558",
            ],
        ),
        (
            # The guide's release: older than the code paths several advisories concern.
            (0, 9, 1),
            [
                "CVE-2026-22778",
                "CVE-2026-24779",
                "CVE-2026-41523",
                "CVE-2026-48746",
                "CVE-2026-55574",
                "CVE-2026-71486",
                "CVE-2026-73555",
                "CVE-2026-73556",
                "CVE-2026-73560",
                "CVE-2026-73558",
            ],
        ),
    ],
)
def test_the_advisories_of_a_release(version: tuple[int, int, int], expected: list[str]) -> None:
    assert _names(version) == expected


def test_the_default_image_is_past_every_advisory_and_fits_the_default_driver() -> None:
    version = catalogue.vllm_version(catalogue.DEFAULT_VLLM_IMAGE)
    assert version is not None
    assert version == (0, 32, 0)
    assert all(version >= advisory.fixed_in for advisory in catalogue.VLLM_ADVISORIES)
    assert catalogue.advisories_for(version) == []
    # A CUDA 13 build, which the default host image's driver carries.
    assert version >= catalogue.FIRST_CUDA13_VLLM
    assert catalogue.image_driver_major(catalogue.DEFAULT_HOST_IMAGE) == 580
    assert catalogue.MIN_DRIVER_FOR_CUDA13 == 580


def test_the_advisories_are_listed_in_order_of_their_fix() -> None:
    fixes = [advisory.fixed_in for advisory in catalogue.VLLM_ADVISORIES]
    assert fixes == sorted(fixes)
    assert all(a.introduced < a.fixed_in for a in catalogue.VLLM_ADVISORIES)
    assert len({a.name for a in catalogue.VLLM_ADVISORIES}) == len(catalogue.VLLM_ADVISORIES)
