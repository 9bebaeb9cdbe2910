"""vllm.entrypoints.launchers.launcher: the API server's check of the tool-call parser."""

import argparse

from ...tool_parsers import ToolParserManager


def validate_api_server_args(args: argparse.Namespace) -> None:
    valid = ToolParserManager.list_registered()
    if args.enable_auto_tool_choice and args.tool_call_parser not in valid:
        raise KeyError(f"invalid tool call parser: {args.tool_call_parser}")
