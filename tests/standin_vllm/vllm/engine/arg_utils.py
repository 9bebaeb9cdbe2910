"""vllm.engine.arg_utils: AsyncEngineArgs checks what the parser's types cannot."""

import argparse
import logging

logger = logging.getLogger("vllm.engine.arg_utils")


class AsyncEngineArgs:
    def __init__(self, gpu_memory_utilization: float, max_num_seqs: int | None) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if max_num_seqs is not None:
            logger.warning("argument 'max_num_seqs' is deprecated")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "AsyncEngineArgs":
        return cls(args.gpu_memory_utilization, args.max_num_seqs)
