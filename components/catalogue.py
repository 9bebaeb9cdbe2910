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

# The Docker Hub image vLLM publishes; tags from v0.20 are CUDA 13 builds that need driver 580+,
# which DEFAULT_HOST_IMAGE carries. The default is past every advisory listed below.
VLLM_IMAGE_REPOSITORY = "vllm/vllm-openai"
DEFAULT_VLLM_IMAGE = f"{VLLM_IMAGE_REPOSITORY}:v0.32.0"
FIRST_CUDA13_VLLM = (0, 20, 0)
MIN_DRIVER_FOR_CUDA13 = 580


@dataclass(frozen=True)
class Advisory:
    fixed_in: tuple[int, int, int]
    name: str
    summary: str


# vLLM security advisories of 2026 (GitHub advisory database / OSV for PyPI "vllm").
VLLM_ADVISORIES: tuple[Advisory, ...] = (
    Advisory((0, 14, 0), "CVE-2026-22807", "remote code execution through auto_map"),
    Advisory((0, 14, 1), "CVE-2026-22778", "remote code execution in video processing"),
    Advisory((0, 14, 1), "CVE-2026-24779", "server-side request forgery"),
    Advisory((0, 18, 0), "CVE-2026-27893", "trust_remote_code override"),
    Advisory((0, 22, 0), "CVE-2026-41523", "security check bypass leading to code execution"),
    Advisory(
        (0, 22, 0),
        "CVE-2026-48746",
        "API-key bypass through the Host header (mitigated here: Nginx checks the token)",
    ),
    Advisory((0, 24, 0), "CVE-2026-54234", "denial of service"),
    Advisory((0, 24, 0), "CVE-2026-55514", "denial of service"),
    Advisory((0, 24, 0), "CVE-2026-55574", "regular-expression denial of service"),
)


def advisories_for(version: tuple[int, int, int]) -> list[Advisory]:
    return [advisory for advisory in VLLM_ADVISORIES if version < advisory.fixed_in]


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

    @property
    def gpu_memory_gb(self) -> int:
        return self.gpu.memory_gb * self.gpu_count


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


def _machines() -> dict[str, MachineSpec]:
    """Machine types and the GPUs they attach by type (compute/docs/gpus)."""
    specs: list[MachineSpec] = []
    for count in (1, 2, 4, 8):
        specs.append(MachineSpec(f"a2-highgpu-{count}g", A100_40GB, count, 0))
        specs.append(MachineSpec(f"a2-ultragpu-{count}g", A100_80GB, count, count))
        # A3 High below 8 GPUs is sold only as Spot or Flex-start.
        specs.append(
            MachineSpec(f"a3-highgpu-{count}g", H100_80GB, count, 2 * count, spot_only=count < 8)
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
    tool_call_parser: str
    vllm_flags: tuple[str, ...]


# vLLM's tool calling guide (docs/features/tool_calling.md) names the parser for each family;
# Mistral's checkpoints ship in Mistral's own format, hence the three format flags.
MODEL_FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        name="mistral",
        id_pattern=re.compile(
            r"^mistralai/(Mistral|Ministral|Magistral|Devstral|Mixtral)-", re.IGNORECASE
        ),
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
    ModelFamily(
        name="llama3",
        id_pattern=re.compile(r"^meta-llama/(Meta-)?Llama-3(\.\d)?-.*Instruct", re.IGNORECASE),
        tool_call_parser="llama3_json",
        vllm_flags=(),
    ),
    ModelFamily(
        name="hermes",
        id_pattern=re.compile(r"^(Qwen/Qwen2\.5-.*Instruct|Qwen/Qwen3-|NousResearch/Hermes-)"),
        tool_call_parser="hermes",
        vllm_flags=(),
    ),
)

# Tool-call parsers vLLM ships (vllm/entrypoints/openai/tool_parsers), for the did-you-mean.
TOOL_CALL_PARSERS = frozenset(
    {
        "deepseek_v3",
        "granite",
        "hermes",
        "internlm",
        "jamba",
        "llama3_json",
        "llama4_pythonic",
        "mistral",
        "openai",
        "phi4_mini_json",
        "pythonic",
        "qwen3_coder",
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
    """Size of the weights in GB at bf16, where the model is known."""
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
