"""The models Elastic's 2026 Security LLM matrix rates: their vLLM flags, and where they fit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from components import catalogue
from components.config import ConfigError, ModelConfig, validate
from components.vllm_server import container_spec
from tests.harness import stack_config

TOOLS = ["--enable-auto-tool-choice", "--tool-call-parser"]
GEMMA_TEMPLATE = "/vllm-workspace/examples/tool_chat_template_gemma4.jinja"


def _family_and_tool_arguments(model: ModelConfig) -> list[str]:
    arguments = list(container_spec(model, 2, catalogue.DEFAULT_VLLM_IMAGE).arguments)
    index = arguments.index("--gpu-memory-utilization")
    return arguments[index + 2 :]


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [
        ("openai/gpt-oss-120b", [*TOOLS, "openai"]),
        ("openai/gpt-oss-20b", [*TOOLS, "openai"]),
        ("google/gemma-4-31B-it", ["--chat-template", GEMMA_TEMPLATE, *TOOLS, "gemma4"]),
    ],
)
def test_the_rated_models_get_the_flags_vllm_documents(model_id: str, expected: list[str]) -> None:
    assert _family_and_tool_arguments(ModelConfig(id=model_id)) == expected
    family = catalogue.family_of(model_id)
    assert family is not None
    assert family.tool_call_parser in catalogue.TOOL_CALL_PARSERS


def _fit_problems(model_id: str, machine: str, **host: Any) -> list[str]:
    raw = stack_config(
        "prod",
        {"vllm-gcp:model": {"id": model_id}, "vllm-gcp:host": {"machineType": machine, **host}},
    )
    try:
        validate({k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, "prod")
    except ConfigError as error:
        return [p.message for p in error.problems if p.key == "vllm-gcp:model.id"]
    return []


@pytest.mark.parametrize(
    ("model_id", "fits", "does_not_fit"),
    [
        # MXFP4 weights (about 65 GB): two A100 80GB, not one (the recipe's vram_minimum_gb 96).
        ("openai/gpt-oss-120b", ["a2-ultragpu-2g", "a2-highgpu-4g"], ["a2-ultragpu-1g"]),
        # 31B in bf16 (62 GB): one A100 80GB, not one A100 40GB.
        ("google/gemma-4-31B-it", ["a2-ultragpu-1g", "a2-ultragpu-2g"], ["a2-highgpu-1g"]),
        # 1.6T parameters: no catalogue machine.
        ("deepseek-ai/DeepSeek-V4-Pro", [], ["a2-ultragpu-8g", "a2-megagpu-16g"]),
    ],
)
def test_the_fit_check_knows_their_size(
    model_id: str, fits: list[str], does_not_fit: list[str]
) -> None:
    for machine in fits:
        assert _fit_problems(model_id, machine) == [], machine
    for machine in does_not_fit:
        [problem] = _fit_problems(model_id, machine)
        assert f"{model_id} needs about" in problem


def test_gpt_oss_weights_are_not_counted_as_bf16() -> None:
    assert catalogue.weights_gb("openai/gpt-oss-120b") == 65.0
    assert catalogue.weights_gb("google/gemma-4-31B-it") == 62.0
