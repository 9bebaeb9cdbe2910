"""Stand-in for the vllm package (tests/standin_vllm/README.md)."""

import os

__version__ = "0.32.0"

_missing = os.environ.get("VLLM_STANDIN_MISSING_MODULE")
if _missing:
    raise ModuleNotFoundError(f"No module named '{_missing}'", name=_missing)
