"""What the configuration is checked against: GCE GPU machines and the model families vLLM serves.

Facts only, no Pulumi: the configuration model and the components read these tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Canonical's GPU-ready Ubuntu 24.04 image with the NVIDIA 580 driver preinstalled (supported on
# A2, A3 and G2 machines), so the startup script installs no driver on the common path.
DEFAULT_HOST_IMAGE = (
    "projects/ubuntu-os-accelerator-images/global/images/family/"
    "ubuntu-accelerator-2404-amd64-with-nvidia-580"
)

# The Docker Hub image vLLM publishes (docs/getting_started/installation/gpu.cuda.inc.md, "vLLM
# offers an official Docker image ... vllm/vllm-openai", tags `vX.Y.Z`).
VLLM_IMAGE_REPOSITORY = "vllm/vllm-openai"
# v0.32.0 is the newest release found in public sources (vllm-project/vllm-omni v0.32.0 "aligns
# with vLLM 0.32.0"; gpustack/runner v0.1.31.post4 "vLLM 0.32.0 ... published on CUDA 13.0/12.9";
# both October 2026). PyPI has vllm 0.33.0 (November 2026), with no image tag found for it yet:
# the default moves once the tag, its advisories and `vllm-gcp check-vllm` say it can. No
# advisory below names 0.32.0 (test_catalogue).
DEFAULT_VLLM_IMAGE = f"{VLLM_IMAGE_REPOSITORY}:v0.32.0"
# "After v0.20.0, default wheel/docker nightly version is cu130" (vllm-project/vllm#42738, a
# maintainer); from then the plain tags are CUDA 13 and `-cu129` tags carry CUDA 12.9
# (NVIDIA/Model-Optimizer#2042: vllm/vllm-openai:v0.21.0 and v0.21.0-cu129). CUDA 13.0 needs
# the R580 driver (NVIDIA CUDA 13.0 release notes, "CUDA Driver"), which DEFAULT_HOST_IMAGE carries.
FIRST_CUDA13_VLLM = (0, 20, 0)
MIN_DRIVER_FOR_CUDA13 = 580


@dataclass(frozen=True)
class Advisory:
    fixed_in: tuple[int, int, int]
    name: str
    summary: str
    # The first affected release where the advisory names one; releases before it are not
    # affected (e.g. the SSRF bypass CVE-2026-25960 needs the 0.15.1 URL check it bypasses).
    introduced: tuple[int, int, int] = (0, 0, 0)


# vLLM security advisories of 2026 (a selection), with the affected range each names. Each entry
# cites its advisory, https://github.com/vllm-project/vllm/security/advisories/<GHSA id>, as
# mirrored by OSV (https://osv.dev/vulnerability/<GHSA id>) and the GitHub advisory database.
VLLM_ADVISORIES: tuple[Advisory, ...] = (
    # GHSA-mcmc-2m55-j8jj: >=0.10.2 <0.13.0.
    Advisory(
        (0, 13, 0),
        "CVE-2026-56340",
        "prompt-embeddings deserialization (denial of service, possible code execution)",
        introduced=(0, 10, 2),
    ),
    # GHSA-2pc9-4j83-qjmr: >=0.10.1 <0.14.0.
    Advisory(
        (0, 14, 0),
        "CVE-2026-22807",
        "remote code execution through auto_map",
        introduced=(0, 10, 1),
    ),
    # GHSA-4r2x-xpjr-7cvv: >=0.8.3 <0.14.1.
    Advisory(
        (0, 14, 1),
        "CVE-2026-22778",
        "remote code execution in video processing",
        introduced=(0, 8, 3),
    ),
    # GHSA-qh4c-xf7m-gxfc: <0.14.1.
    Advisory((0, 14, 1), "CVE-2026-24779", "server-side request forgery in media URLs"),
    # GHSA-v359-jj2v-j536 (published 2026-03-09, fix vllm-project/vllm#34743): >=0.15.1 <0.17.0.
    Advisory(
        (0, 17, 0),
        "CVE-2026-25960",
        "SSRF protection bypass through a URL-parser mismatch (urllib3 vs aiohttp/yarl)",
        introduced=(0, 15, 1),
    ),
    # GHSA-7972-pg2x-xr59: >=0.10.1 <0.18.0.
    Advisory(
        (0, 18, 0),
        "CVE-2026-27893",
        "trust_remote_code override",
        introduced=(0, 10, 1),
    ),
    # GHSA-pf3h-qjgv-vcpr: >=0.16.0 <0.19.0.
    Advisory(
        (0, 19, 0),
        "CVE-2026-34753",
        "server-side request forgery from batch input",
        introduced=(0, 16, 0),
    ),
    # GHSA-83vm-p52w-f9pw: >=0.18.0 <0.20.0.
    Advisory(
        (0, 20, 0),
        "CVE-2026-44223",
        "denial of service: penalty parameters crash extract_hidden_states speculative decoding",
        introduced=(0, 18, 0),
    ),
    # GHSA-q8gq-377p-jq3r: <0.22.0.
    Advisory((0, 22, 0), "CVE-2026-41523", "security check bypass leading to code execution"),
    # GHSA-94f4-hr76-p5j6: >=0.3.0 <0.22.0.
    Advisory(
        (0, 22, 0),
        "CVE-2026-48746",
        "API-key bypass through the Host header (mitigated here: Nginx checks the token)",
        introduced=(0, 3, 0),
    ),
    # GHSA-8wr5-jm2h-8r4f: >=0.17.1 <0.24.0.
    Advisory(
        (0, 24, 0),
        "CVE-2026-54234",
        "denial of service: invalid recovered token reinjection in speculative decoding",
        introduced=(0, 17, 1),
    ),
    # GHSA-33cg-gxv8-3p8g: >=0.12.0 <0.24.0.
    Advisory(
        (0, 24, 0),
        "CVE-2026-55514",
        "denial of service: prompt embeds on M-RoPE models",
        introduced=(0, 12, 0),
    ),
    # GHSA-rwxx-mrjm-wc2m: <0.24.0.
    Advisory(
        (0, 24, 0),
        "CVE-2026-55574",
        "regular-expression denial of service (structured_outputs.regex, xgrammar and outlines)",
    ),
    # GHSA-v82g-2437-67m2: >=0.22.0 <0.24.0.
    Advisory(
        (0, 24, 0),
        "CVE-2026-55646",
        "denial of service: speech-to-text upload read in full before its size limit",
        introduced=(0, 22, 0),
    ),
    # GHSA-8737-qx52-hjff (published 2026-08-17): prior to 0.26.0.
    Advisory(
        (0, 26, 0),
        "CVE-2026-71486",
        "uncontrolled resource consumption through the derender endpoints",
    ),
    # GHSA-hwrm-c4cx-rf4j (published 2026-08-13): prior to 0.26.0.
    Advisory(
        (0, 26, 0),
        "CVE-2026-73555",
        "internal path and user name disclosed in validation errors, without authentication",
    ),
    # GHSA-48jh-3gj7-fg8v (published 2026-08-13, fix vllm-project/vllm#47595): prior to 0.26.0.
    Advisory(
        (0, 26, 0),
        "CVE-2026-73556",
        "regular-expression denial of service (structured_outputs.regex, lm-format-enforcer)",
    ),
    # GHSA-87x5-vmc3-756j: >=0.19.0, fixed in 0.26.0 (the advisory's range also says <=0.26.0,
    # but it lists 0.26.0 as patched, and the fix is in the v0.26.0 tag).
    Advisory(
        (0, 26, 0),
        "CVE-2026-73559",
        "completion prompt lists fan out into unbounded engine requests",
        introduced=(0, 19, 0),
    ),
    # GHSA-4hhp-h66f-j5j7 (published 2026-08-17): prior to 0.26.0.
    Advisory(
        (0, 26, 0),
        "CVE-2026-73560",
        "server-side request forgery through the MiMo-V2-Omni processor",
    ),
    # GHSA-7m6h-x95x-82q5 (published 2026-08-13): prior to 0.27.0.
    Advisory(
        (0, 27, 0),
        "CVE-2026-73558",
        "cross-user data leak within a batch (integer overflow in an activation kernel)",
    ),
)


def advisories_for(version: tuple[int, int, int]) -> list[Advisory]:
    return [a for a in VLLM_ADVISORIES if a.introduced <= version < a.fixed_in]


@dataclass(frozen=True)
class GpuModel:
    accelerator: str  # GCE accelerator type name
    display_name: str
    memory_gb: int
    zones: frozenset[str]


@dataclass(frozen=True)
class MachineSpec:
    name: str
    gpu: GpuModel
    gpu_count: int
    local_ssd_count: int  # 375 GB partitions bundled with the machine type
    spot_only: bool = False  # offered only as Spot (or Flex-start), never on demand


# Zones per GPU model, as Google's "GPU regions and zones availability" page
# (compute/docs/gpus/gpu-regions-zones) is mirrored by SkyPilot's catalogue
# (skypilot-org/skypilot-catalog catalogs/v8/gcp/vms.csv, commit 8427bbf), read 2026-11-25.
# Zones change: `gcloud compute accelerator-types list` is the live list, and
# host.skipZoneCheck trusts a zone this snapshot lacks.
GPU_ZONES_AS_OF = "2026-11-25"

A100_80GB = GpuModel(
    accelerator="nvidia-a100-80gb",
    display_name="NVIDIA A100 80GB",
    memory_gb=80,
    zones=frozenset(
        {
            "us-central1-a",
            "us-central1-c",
            "us-east4-c",
            "us-east5-a",
            "us-east5-b",
            "europe-west4-a",
            "asia-southeast1-c",
        }
    ),
)
A100_40GB = GpuModel(
    accelerator="nvidia-tesla-a100",
    display_name="NVIDIA A100 40GB",
    memory_gb=40,
    zones=frozenset(
        {
            "us-central1-a",
            "us-central1-b",
            "us-central1-c",
            "us-central1-f",
            "us-east1-b",
            "us-west1-b",
            "us-west3-b",
            "us-west4-b",
            "europe-west4-a",
            "europe-west4-b",
            "me-west1-a",
            "me-west1-c",
            "asia-northeast1-a",
            "asia-northeast1-c",
            "asia-northeast3-a",
            "asia-northeast3-b",
            "asia-southeast1-b",
            "asia-southeast1-c",
        }
    ),
)
H100_80GB = GpuModel(
    accelerator="nvidia-h100-80gb",
    display_name="NVIDIA H100 80GB",
    memory_gb=80,
    zones=frozenset(
        {
            "asia-east1-c",
            "asia-northeast1-b",
            "asia-south1-c",
            "asia-south2-b",
            "asia-southeast1-b",
            "asia-southeast1-c",
            "australia-southeast1-c",
            "europe-north1-c",
            "europe-west1-b",
            "europe-west1-c",
            "europe-west3-c",
            "europe-west4-b",
            "europe-west4-c",
            "europe-west8-c",
            "europe-west9-c",
            "us-central1-a",
            "us-central1-b",
            "us-central1-c",
            "us-east4-a",
            "us-east4-b",
            "us-east4-c",
            "us-east5-a",
            "us-west1-a",
            "us-west1-b",
            "us-west4-a",
        }
    ),
)
L4 = GpuModel(
    accelerator="nvidia-l4",
    display_name="NVIDIA L4",
    memory_gb=24,
    zones=frozenset(
        {
            "asia-east1-a",
            "asia-east1-b",
            "asia-east1-c",
            "asia-northeast1-a",
            "asia-northeast1-b",
            "asia-northeast1-c",
            "asia-northeast3-a",
            "asia-northeast3-b",
            "asia-south1-a",
            "asia-south1-b",
            "asia-south1-c",
            "asia-southeast1-a",
            "asia-southeast1-b",
            "asia-southeast1-c",
            "europe-west1-b",
            "europe-west1-c",
            "europe-west2-a",
            "europe-west2-b",
            "europe-west3-a",
            "europe-west3-b",
            "europe-west4-a",
            "europe-west4-b",
            "europe-west4-c",
            "europe-west6-b",
            "europe-west6-c",
            "me-central2-a",
            "me-central2-c",
            "northamerica-northeast1-b",
            "northamerica-northeast2-a",
            "northamerica-northeast2-b",
            "us-central1-a",
            "us-central1-b",
            "us-central1-c",
            "us-east1-b",
            "us-east1-c",
            "us-east1-d",
            "us-east4-a",
            "us-east4-c",
            "us-west1-a",
            "us-west1-b",
            "us-west1-c",
            "us-west4-a",
            "us-west4-c",
        }
    ),
)


def region_zones(gpu: GpuModel, region: str) -> list[str]:
    """The zones of `region` known to offer `gpu`, in order."""
    return sorted(zone for zone in gpu.zones if zone.rsplit("-", 1)[0] == region)


def _machines() -> dict[str, MachineSpec]:
    """Machine types and the GPUs they attach by type (compute/docs/gpus)."""
    specs: list[MachineSpec] = []
    for count in (1, 2, 4, 8):
        specs.append(MachineSpec(f"a2-highgpu-{count}g", A100_40GB, count, 0))
        specs.append(MachineSpec(f"a2-ultragpu-{count}g", A100_80GB, count, count))
        # A3 High below 8 GPUs is sold only as Spot or Flex-start.
        specs.append(
            MachineSpec(f"a3-highgpu-{count}g", H100_80GB, count, 2 * count, spot_only=count < 8)  # noqa: PLR2004 (8 GPUs, as the comment above says)
        )
    specs.append(MachineSpec("a2-megagpu-16g", A100_40GB, 16, 0))
    for vcpus, count in ((4, 1), (8, 1), (12, 1), (16, 1), (24, 2), (32, 1), (48, 4), (96, 8)):
        specs.append(MachineSpec(f"g2-standard-{vcpus}", L4, count, 0))
    return {spec.name: spec for spec in specs}


MACHINE_TYPES: dict[str, MachineSpec] = _machines()


@dataclass(frozen=True)
class ModelFamily:
    """How vLLM must be told to serve a family of models, tool calling included."""

    name: str
    id_pattern: re.Pattern[str]
    tool_call_parser: str | None  # None: vLLM's tool-calling guide names no parser for it
    vllm_flags: tuple[str, ...]


# vLLM's tool-calling guide, docs/features/tool_calling.md (vllm-project/vllm, newest stored
# version, commit 0064cc9c), names the parser for each family. The first matching family wins.
MODEL_FAMILIES: tuple[ModelFamily, ...] = (
    # "Mistral Models (`mistral`)": the official format is `--tokenizer_mode mistral
    # --config_format mistral --load_format mistral`; Mistral Small 3.x ships it (params.json,
    # consolidated safetensors, tekken.json).
    ModelFamily(
        name="mistral",
        id_pattern=re.compile(r"^mistralai/(Mistral|Ministral|Magistral|Devstral)-", re.IGNORECASE),
        tool_call_parser="mistral",
        vllm_flags=(
            "--tokenizer-mode",
            "mistral",
            "--config-format",
            "mistral",
            "--load-format",
            "mistral",
        ),
    ),
    # Mixtral's Hugging Face repositories are in Transformers format without params.json
    # (vikhyat/mixtral-inference#3, mistralai/mistral-inference#242), and the Mistral format flags
    # then fail with "Failed to load mistral 'params.json' config ... Please check if the model
    # is a mistral-format model" (vllm-project/vllm#17132). The guide names no Mixtral model, so
    # tool calling stays off unless model.toolCallParser asks for it.
    ModelFamily(
        name="mixtral",
        id_pattern=re.compile(r"^mistralai/Mixtral-", re.IGNORECASE),
        tool_call_parser=None,
        vllm_flags=(),
    ),
    # "Llama Models (`llama3_json`)": "All Llama 3.1, 3.2 and 4 models" (Llama 4 is recommended
    # `llama4_pythonic`, so it is no member); Llama 3.0 is not listed. Llama 3.3 "uses the same
    # prompt format as Llama 3.1" (llama.com/docs/model-cards-and-prompt-formats/llama3_3).
    ModelFamily(
        name="llama3",
        id_pattern=re.compile(r"^meta-llama/(Meta-)?Llama-3\.[123]-.*Instruct", re.IGNORECASE),
        tool_call_parser="llama3_json",
        vllm_flags=(),
    ),
    # "Qwen3-Coder Models (`qwen3_xml`)": Qwen/Qwen3-Coder-480B-A35B-Instruct,
    # Qwen/Qwen3-Coder-30B-A3B-Instruct. Before the hermes family, which must not take them.
    ModelFamily(
        name="qwen3_coder",
        id_pattern=re.compile(r"^Qwen/Qwen3-Coder-"),
        tool_call_parser="qwen3_xml",
        vllm_flags=(),
    ),
    # "Hermes Models (`hermes`)" (NousResearch/Hermes-2-Pro, -2-Theta, -3) and "Qwen Models":
    # Qwen2.5 with `hermes`; Qwen3 likewise (QwenLM/Qwen3 docs/source/framework/function_call.md:
    # "vllm serve Qwen/Qwen3-8B --enable-auto-tool-choice --tool-call-parser hermes").
    ModelFamily(
        name="hermes",
        id_pattern=re.compile(
            r"^(Qwen/Qwen2\.5-.*Instruct|Qwen/Qwen3-(?!Coder-)|NousResearch/Hermes-)"
        ),
        tool_call_parser="hermes",
        vllm_flags=(),
    ),
    # The open models Elastic's 2026 Security LLM matrix rates highest that fit these machines
    # (elastic/docs-content solutions/security/ai/large-language-model-performance-matrix.md).
    # GPT-OSS: vLLM's tool-calling guide, "OpenAI OSS Models (`openai`)": openai/gpt-oss-20b,
    # openai/gpt-oss-120b, flags `--tool-call-parser openai`; the vLLM recipe
    # (vllm-project/recipes models/openai/gpt-oss-120b.yaml, updated 2026-05-10) adds nothing
    # else on A100 ("default TRITON_ATTN + Marlin MXFP4 MoE").
    ModelFamily(
        name="gpt_oss",
        id_pattern=re.compile(r"^openai/gpt-oss-"),
        tool_call_parser="openai",
        vllm_flags=(),
    ),
    # Gemma 4: the vLLM recipe (vllm-project/recipes models/Google/gemma-4-31B-it.yaml, updated
    # 2026-05-11), feature tool_calling: `--enable-auto-tool-choice --tool-call-parser gemma4
    # --chat-template examples/tool_chat_template_gemma4.jinja`; in the vllm/vllm-openai image
    # the examples are under /vllm-workspace (the tool-calling guide's Apertus entry).
    ModelFamily(
        name="gemma4",
        id_pattern=re.compile(r"^google/gemma-4-"),
        tool_call_parser="gemma4",
        vllm_flags=("--chat-template", "/vllm-workspace/examples/tool_chat_template_gemma4.jinja"),
    ),
)

# Tool-call parsers the default image's vLLM (0.32.0) registers: `ToolParserManager.
# list_registered()` (vllm/tool_parsers/abstract_tool_parser.py) in the 0.32.0 wheel, which
# `vllm-gcp check-vllm` compares with this set. The stored main-branch source (commit 0064cc9c,
# `_TOOL_PARSERS_TO_REGISTER`) also names solar_open2, which 0.32.0 does not register. For the
# did-you-mean; `qwen3_coder` and `qwen3_xml` name the same parser class.
TOOL_CALL_PARSERS = frozenset(
    {
        "apertus",
        "cohere_command3",
        "cohere_command4",
        "deepseek_v3",
        "deepseek_v31",
        "deepseek_v32",
        "deepseek_v4",
        "deepseek_v41",
        "dots",
        "ernie45",
        "functiongemma",
        "gemma4",
        "gigachat3",
        "glm45",
        "glm47",
        "granite",
        "granite-20b-fc",
        "granite4",
        "hermes",
        "hf",
        "hunyuan_a13b",
        "hy_v3",
        "hy_v4",
        "inkling",
        "internlm",
        "jamba",
        "k2_horizon",
        "kimi_k2",
        "kimi_k3",
        "lfm2",
        "ling3",
        "llama3_json",
        "llama4_json",
        "llama4_pythonic",
        "longcat",
        "mimo",
        "minicpm5",
        "minimax_m2",
        "minimax_m3",
        "mistral",
        "muse_glimmer",
        "olmo3",
        "openai",
        "phi4_mini_json",
        "plamo3",
        "poolside_v1",
        "pythonic",
        "qwen3_coder",
        "qwen3_json",
        "qwen3_xml",
        "seed_oss",
        "step3",
        "step3p5",
        "xlam",
    }
)

# Parameter counts (billions) from the models' Hugging Face cards, for the fit check.
KNOWN_MODEL_PARAMS_B: dict[str, float] = {
    "mistralai/Mistral-Small-3.2-24B-Instruct-2506": 24.0,
    "mistralai/Mistral-Small-3.1-24B-Instruct-2503": 24.0,
    "mistralai/Mistral-Large-Instruct-2411": 123.0,
    "mistralai/Mixtral-8x7B-Instruct-v0.1": 46.7,
    "mistralai/Ministral-8B-Instruct-2410": 8.0,
    "meta-llama/Llama-3.1-8B-Instruct": 8.0,
    "meta-llama/Llama-3.1-70B-Instruct": 70.6,
    "meta-llama/Llama-3.3-70B-Instruct": 70.6,
    "Qwen/Qwen2.5-7B-Instruct": 7.6,
    "Qwen/Qwen2.5-14B-Instruct": 14.8,
    "Qwen/Qwen2.5-32B-Instruct": 32.8,
    "Qwen/Qwen2.5-72B-Instruct": 72.7,
    # 117B total, 5.1B active (the model card, openai/gpt-oss-120b); its weights are not bf16,
    # see KNOWN_MODEL_WEIGHTS_GB.
    "openai/gpt-oss-120b": 117.0,
    "openai/gpt-oss-20b": 21.0,
    # "parameter_count: 31B", dense (vllm-project/recipes models/Google/gemma-4-31B-it.yaml).
    "google/gemma-4-31B-it": 31.0,
    # A 1.6T-parameter MoE with 49B active (huggingface/chat-ui#2245): rated by Elastic for Attack
    # Discovery, but no catalogue machine holds it; listed so the fit check says so.
    "deepseek-ai/DeepSeek-V4-Pro": 1600.0,
}
# Checkpoints that are not bf16, by their size on the GPUs. GPT-OSS ships its MoE weights in
# MXFP4 ("post-trained with MXFP4 quantization of the MoE weights, making gpt-oss-120b run on a
# single 80GB GPU", the model card): about 4.25 bits for the ~114B expert parameters and bf16 for
# the rest make about 65 GB for the 120B and 13 GB for the 20B (estimates; the vLLM recipe rates
# the 120B's default variant at vram_minimum_gb 96, which the KV-cache margin below matches).
KNOWN_MODEL_WEIGHTS_GB: dict[str, float] = {
    "openai/gpt-oss-120b": 65.0,
    "openai/gpt-oss-20b": 13.0,
}
# The longest context vLLM serves each model with (tokens), for the maxModelLen check. vLLM derives
# it from the model's config (`_get_and_verify_max_len` in vllm/config/model.py, the keys read by
# `derive_max_model_len_and_key`, vllm/transformers_utils/model_arch_config_convertor.py: the
# smallest of max_position_embeddings and its kin, times the RoPE scaling factor except for the
# llama3, su and longrope types; for yarn, original_max_position_embeddings times the factor) and
# refuses a --max-model-len above it ("User-specified max_model_len ... is greater than the
# derived max_model_len") unless VLLM_ALLOW_LONG_MAX_MODEL_LEN is set, which this stack never does.
KNOWN_CONTEXT_TOKENS: dict[str, int] = {
    # Mistral format (--config-format mistral, which the mistral family sets): vLLM fills
    # max_position_embeddings with 128_000 when params.json has none
    # (`_remap_general_mistral_args`, vllm/transformers_utils/configs/mistral.py), and takes the
    # smaller of it and params.json's max_seq_len, so no Mistral-format model gets more
    # (vllm-project/vllm#57279, open: "wrongly capped to 128000"); the model cards give both
    # 128k ("enhances long context capabilities up to 128k tokens", Mistral-Small-3.1; 3.2 is
    # "a minor update of" it).
    "mistralai/Mistral-Small-3.2-24B-Instruct-2506": 128_000,
    "mistralai/Mistral-Small-3.1-24B-Instruct-2503": 128_000,
    # vllm-project/recipes (commit 8959cf6, 2026-08-21) models/meta-llama/*.yaml,
    # context_length 131072: max_position_embeddings 131072 with llama3 RoPE, not scaled again.
    "meta-llama/Llama-3.1-8B-Instruct": 131_072,
    "meta-llama/Llama-3.3-70B-Instruct": 131_072,
    # "By default, the context length for Qwen2.5 models are set to 32,768 tokens ... Our
    # provided default `max_position_embedding` is `32768` and thus the maximum length for the
    # serving is also this value" (QwenLM/Qwen2.5, now QwenLM/Qwen3, commit 4da996c,
    # docs/source/deployment/vllm.md); YaRN beyond it is a config change (extraArgs
    # --hf-overrides, which lifts this check).
    "Qwen/Qwen2.5-7B-Instruct": 32_768,
    "Qwen/Qwen2.5-14B-Instruct": 32_768,
    "Qwen/Qwen2.5-32B-Instruct": 32_768,
    "Qwen/Qwen2.5-72B-Instruct": 32_768,
    # vllm-project/recipes models/openai/gpt-oss-*.yaml: context_length 131072, "YaRN rope
    # scaling (factor=32) extending 4K -> 131K context"; the 120b recipe runs
    # --max-model-len 131072.
    "openai/gpt-oss-120b": 131_072,
    "openai/gpt-oss-20b": 131_072,
    # vllm-project/recipes models/Google/gemma-4-31B-it.yaml: context_length 262144.
    "google/gemma-4-31B-it": 262_144,
    # vllm-project/recipes models/deepseek-ai/DeepSeek-V4-Pro.yaml: context_length 1048576.
    "deepseek-ai/DeepSeek-V4-Pro": 1_048_576,
}
BYTES_PER_PARAM_BF16 = 2.0
# The weights may fill at most this share of the memory vLLM may use: the rest holds the KV cache,
# without which a model that "fits" serves no useful context.
MAX_WEIGHTS_SHARE = 0.9
# Boot disk room for the OS with the driver and for the vLLM image (about 10 GB compressed,
# 25 GB unpacked for recent CUDA 13 releases); the weights come on top where no local SSD holds
# the model cache.
BOOT_DISK_BASE_GB = 60


def family_of(model_id: str) -> ModelFamily | None:
    return next((f for f in MODEL_FAMILIES if f.id_pattern.search(model_id)), None)


def weights_gb(model_id: str) -> float | None:
    """Size of the weights in GB (bf16 unless the checkpoint says otherwise), where known."""
    if model_id in KNOWN_MODEL_WEIGHTS_GB:
        return KNOWN_MODEL_WEIGHTS_GB[model_id]
    params = KNOWN_MODEL_PARAMS_B.get(model_id)
    return None if params is None else params * BYTES_PER_PARAM_BF16


_VERSION_TAG = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def vllm_version(image: str) -> tuple[int, int, int] | None:
    """The vLLM release an image reference names by its tag, if it names one."""
    if "@" in image:
        return None
    _, _, tag = image.rpartition(":")
    match = _VERSION_TAG.match(tag)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


_DRIVER_IN_IMAGE = re.compile(r"with-nvidia-(\d{3})")


def image_driver_major(host_image: str) -> int | None:
    """The NVIDIA driver branch a GPU-ready Ubuntu image family names, if it names one."""
    match = _DRIVER_IN_IMAGE.search(host_image)
    return None if match is None else int(match.group(1))
