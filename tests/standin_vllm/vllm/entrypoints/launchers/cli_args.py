"""vllm.entrypoints.launchers.cli_args: the serve flags the program renders, as vLLM types them."""

import argparse
from pathlib import Path

from ... import platforms


def make_arg_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    if platforms.current_platform.is_unspecified():
        raise RuntimeError("device type inference failed: no platform was selected")
    parser.add_argument("model_tag", nargs="?")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--revision")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--tokenizer-mode", choices=["auto", "mistral"])
    parser.add_argument("--config-format", choices=["auto", "hf", "mistral"])
    parser.add_argument("--load-format", choices=["auto", "mistral", "runai_streamer"])
    parser.add_argument("--chat-template")
    parser.add_argument("--enable-auto-tool-choice", action="store_true")
    parser.add_argument("--tool-call-parser")
    parser.add_argument("--max-num-seqs", type=int)
    return parser


def validate_parsed_serve_args(args: argparse.Namespace) -> None:
    if args.chat_template is not None and not Path(args.chat_template).exists():
        raise ValueError(f"The supplied chat template ({args.chat_template}) doesn't exist")
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise TypeError("Error: --enable-auto-tool-choice requires --tool-call-parser")
