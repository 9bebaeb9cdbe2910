"""Runs inside the vLLM check's own virtual environment (tools/check_vllm.py), never the project's.

Standard library and vLLM only: it imports no project module and nothing from the project's venv.
It reads one JSON request on stdin and writes one JSON report to the file it is given:

    request  {"cases": [{"name": ..., "argv": ["serve", MODEL, "--flag", ...]}, ...],
              "load_parsers": [NAME, ...],    # each registered, and its class imports
              "known_parsers": [NAME, ...]}   # each registered
    report   {"vllm": VERSION, "platform": ..., "entry_points": {...},
              "cases": [{"name", "ok", "error", "warnings"}, ...],
              "parsers": [{"name", "ok", "error"}, ...], "registered_parsers": [...]}

Each command line goes through what `vllm serve` itself runs before it loads a model
(vllm/entrypoints/cli/main.py and cli/serve.py at the release):

1. the platform: where vLLM detects none (no GPU here), the CPU platform, the way vLLM's CLI picks
   it for `vllm bench` (`platforms.current_platform = CpuPlatform()` when
   `current_platform.is_unspecified()`);
2. a `vllm` parser with the `serve` subcommand built by `make_arg_parser`
   (vllm/entrypoints/launchers/cli_args.py; vllm/entrypoints/openai/cli_args.py in older
   releases), which parses the arguments: an unknown flag or a bad value is refused here;
3. `validate_parsed_serve_args` (the serve subcommand's `validate`);
4. `AsyncEngineArgs.from_cli_args` (vllm/engine/arg_utils.py), which builds the engine's
   arguments and their sub-configurations;
5. the API server's own check of the tool-call and reasoning parsers
   (`validate_api_server_args`, vllm/entrypoints/launchers/launcher.py), against
   `ToolParserManager` (vllm/tool_parsers/abstract_tool_parser.py).

Exit 0 when the report was written (whatever it says), 4 when vLLM or a module its parser needs
does not import: the report then carries "import_error". The report goes to a file named on the
command line: vLLM logs to stdout.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import sys
import traceback
from typing import Any

IMPORT_FAILED = 4


class _NotInRelease(ImportError):
    """None of an entry point's known locations exists in this release."""


class _Refused(Exception):
    """argparse's error(): the message it would print before exiting 2."""


class _Warnings(logging.Handler):
    """vLLM's warnings while one command line is checked (deprecated and duplicate flags)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _first(*candidates: tuple[str, str]) -> tuple[Any, str]:
    """The first of (module, attribute) that imports; a missing module is tried past, any other
    import error is the release's own and propagates."""
    missing: list[str] = []
    for module_name, attribute in candidates:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and not module_name.startswith(error.name):
                raise  # a dependency is missing, not this location
            missing.append(module_name)
            continue
        if hasattr(module, attribute):
            return getattr(module, attribute), f"{module_name}.{attribute}"
        missing.append(f"{module_name}.{attribute}")
    raise _NotInRelease(f"none of {', '.join(missing)} exists in this vLLM release")


def _select_platform() -> str:
    """vllm/entrypoints/cli/main.py for `vllm bench`: `from vllm import platforms`; where
    `platforms.current_platform.is_unspecified()`, `platforms.current_platform = CpuPlatform()`
    (vllm.platforms.cpu)."""
    platforms = importlib.import_module("vllm.platforms")
    if platforms.current_platform.is_unspecified():
        cpu_platform = importlib.import_module("vllm.platforms.cpu").CpuPlatform
        setattr(platforms, "current_platform", cpu_platform())  # noqa: B010 (a module's)
    return type(platforms.current_platform).__name__


def _serve_parser(make_arg_parser: Any, parser_class: Any) -> Any:
    """`vllm` with the serve subcommand, as cli/main.py builds it; errors raise instead of exit."""

    def refuse(message: str) -> None:
        raise _Refused(message)

    top = parser_class(prog="vllm")
    subparsers = top.add_subparsers(required=False, dest="subparser")
    serve = subparsers.add_parser("serve", usage="vllm serve [model_tag] [options]")
    serve = make_arg_parser(serve)
    # The check reports the message; argparse would print it and exit 2.
    top.error = refuse
    serve.error = refuse
    return top


def _check_case(argv: list[str], entry: dict[str, Any]) -> tuple[str | None, list[str]]:
    """None when vLLM accepts the command line, else its message; and vLLM's warnings."""
    handler = _Warnings()
    root = logging.getLogger("vllm")
    root.addHandler(handler)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            try:
                parser = _serve_parser(entry["make_arg_parser"], entry["parser_class"])
                args = parser.parse_args(argv)
                if getattr(args, "model_tag", None) is not None:
                    args.model = args.model_tag  # as ServeSubcommand.cmd does
                entry["validate_parsed_serve_args"](args)
                entry["engine_args"].from_cli_args(args)
                validate_api = entry.get("validate_api_server_args")
                if validate_api is not None:
                    validate_api(args)
                elif args.enable_auto_tool_choice and args.tool_call_parser not in (
                    entry["tool_parsers"].list_registered()
                ):
                    return f"invalid tool call parser: {args.tool_call_parser}", handler.messages
            except _Refused as refused:
                return str(refused), handler.messages
            except SystemExit as exit_:  # --help and the like
                return f"exited {exit_.code}: {stderr.getvalue().strip()}", handler.messages
            except Exception as error:
                return f"{type(error).__name__}: {error}", handler.messages
    finally:
        root.removeHandler(handler)
    return None, handler.messages


def _check_parser(name: str, load: bool, manager: Any) -> str | None:
    registered = manager.list_registered()
    if name not in registered:
        return f"tool-call parser {name!r} is not registered"
    if load:
        try:
            manager.get_tool_parser(name)
        except Exception as error:
            return f"tool-call parser {name!r} does not load: {type(error).__name__}: {error}"
    return None


def _entry_points() -> tuple[dict[str, Any], dict[str, str]]:
    found: dict[str, Any] = {}
    where: dict[str, str] = {}
    for key, candidates in {
        "make_arg_parser": (
            ("vllm.entrypoints.launchers.cli_args", "make_arg_parser"),
            ("vllm.entrypoints.openai.cli_args", "make_arg_parser"),
        ),
        "validate_parsed_serve_args": (
            ("vllm.entrypoints.launchers.cli_args", "validate_parsed_serve_args"),
            ("vllm.entrypoints.openai.cli_args", "validate_parsed_serve_args"),
        ),
        "parser_class": (
            ("vllm.utils.argparse_utils", "FlexibleArgumentParser"),
            ("vllm.utils", "FlexibleArgumentParser"),
        ),
        "engine_args": (("vllm.engine.arg_utils", "AsyncEngineArgs"),),
        "tool_parsers": (
            ("vllm.tool_parsers", "ToolParserManager"),
            ("vllm.entrypoints.openai.tool_parsers", "ToolParserManager"),
        ),
    }.items():
        found[key], where[key] = _first(*candidates)
    try:
        found["validate_api_server_args"], where["validate_api_server_args"] = _first(
            ("vllm.entrypoints.launchers.launcher", "validate_api_server_args"),
            ("vllm.entrypoints.openai.api_server", "validate_api_server_args"),
        )
    except _NotInRelease:
        where["validate_api_server_args"] = "(not found: the tool parser is checked by name)"
    return found, where


def _run(request: dict[str, Any]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    try:
        report["vllm"] = importlib.import_module("vllm").__version__
        report["platform"] = _select_platform()
        entry, report["entry_points"] = _entry_points()
    except ImportError as error:
        report["import_error"] = {
            "module": error.name if isinstance(error, ModuleNotFoundError) else None,
            "message": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=-6),
        }
        return report

    cases: list[dict[str, Any]] = []
    for case in request["cases"]:
        error, warnings = _check_case(list(case["argv"]), entry)
        cases.append(
            {"name": case["name"], "ok": error is None, "error": error, "warnings": warnings}
        )
    report["cases"] = cases
    manager = entry["tool_parsers"]
    loads = list(dict.fromkeys(request.get("load_parsers", [])))
    knowns = [n for n in dict.fromkeys(request.get("known_parsers", [])) if n not in loads]
    parsers: list[dict[str, Any]] = []
    for name in [*loads, *knowns]:
        error = _check_parser(name, name in loads, manager)
        parsers.append({"name": name, "ok": error is None, "error": error})
    report["parsers"] = parsers
    report["registered_parsers"] = list(manager.list_registered())
    return report


def main(argv: list[str]) -> int:
    """`python vllm_probe.py REPORT.json < REQUEST.json`: the report goes to its own file, since
    vLLM logs to stdout."""
    if len(argv) != 1:
        print("usage: vllm_probe.py REPORT.json < REQUEST.json", file=sys.stderr)
        return 2
    report = _run(json.load(sys.stdin))
    with open(argv[0], "w", encoding="utf-8") as out:
        json.dump(report, out)
    return IMPORT_FAILED if "import_error" in report else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
