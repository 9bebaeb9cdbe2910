"""vllm-gcp: the operator tools for the work around `pulumi up`, behind one command.

    vllm-gcp plan prod --out plan-prod/       # the offline plan (tools/plan.py)
    vllm-gcp smoke --stack dev                # the smoke test (tools/smoke_test.py)
    vllm-gcp bench --stack prod               # the load benchmark (tools/bench.py)
    vllm-gcp e2e                              # the end-to-end run (tools/e2e.sh)
    vllm-gcp check-vllm prod                  # the pinned vLLM's parser (tools/check_vllm.py)
    vllm-gcp image build --project P --zone Z # a prepared host image (tools/image_build.py)

Each command parses its own options (`vllm-gcp COMMAND --help`); this module only picks the
command, and its exit code is the command's. A command's module is imported only when it runs,
so `vllm-gcp --help` stays quick. Declared in pyproject.toml ([project.scripts]) and installed
into ./venv by tools/setup-dev.sh; `python -m tools.cli` is the same without the install.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROG = "vllm-gcp"
E2E_SCRIPT = Path(__file__).resolve().parent / "e2e.sh"


@dataclass(frozen=True)
class Command:
    summary: str  # one line in `vllm-gcp --help`
    run: Callable[[list[str], str], int]  # (the command's arguments, its prog) to an exit code


def _plan(argv: list[str], prog: str) -> int:
    from tools import plan  # noqa: PLC0415 (imported when run)

    return plan.main(argv, prog=prog)


def _smoke(argv: list[str], prog: str) -> int:
    from tools import smoke_test  # noqa: PLC0415 (imported when run)

    return smoke_test.main(argv, prog=prog)


def _bench(argv: list[str], prog: str) -> int:
    from tools import bench  # noqa: PLC0415 (imported when run)

    return bench.main(argv, prog=prog)


def _check_vllm(argv: list[str], prog: str) -> int:
    from tools import check_vllm  # noqa: PLC0415 (imported when run)

    return check_vllm.main(argv, prog=prog)


def _image(argv: list[str], prog: str) -> int:
    from tools import image_build  # noqa: PLC0415 (imported when run)

    return image_build.main(argv, prog=prog)


def _e2e(argv: list[str], prog: str) -> int:
    """Replaces this process with tools/e2e.sh: its exit code and signals are the run's own."""
    bash = shutil.which("bash")
    if bash is None:
        print(f"{prog}: error: bash is not on PATH", file=sys.stderr)
        return 127
    sys.stdout.flush()
    sys.stderr.flush()
    # bash and the script are fixed; the arguments go to the script as given, without a shell.
    environment = {**os.environ, "VLLM_GCP_PROG": prog}
    os.execve(bash, [bash, str(E2E_SCRIPT), *argv], environment)  # noqa: S606


COMMANDS: dict[str, Command] = {
    "plan": Command("validate a stack file and show what it would deploy, offline", _plan),
    "smoke": Command(
        "check a deployed endpoint the way Elastic's OpenAI connector uses it", _smoke
    ),
    "bench": Command("load-benchmark a deployed endpoint through its proxy", _bench),
    "e2e": Command("deploy a short-lived dev stack, smoke-test it, destroy it (needs GCP)", _e2e),
    "check-vllm": Command(
        "check the vLLM command line with the pinned vLLM release's own parser", _check_vllm
    ),
    "image": Command("build a prepared host image on a throwaway VM (needs gcloud)", _image),
}


def parser() -> argparse.ArgumentParser:
    width = max(len(name) for name in COMMANDS)
    listing = "\n".join(f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items())
    top = argparse.ArgumentParser(
        prog=PROG,
        description="Operator tools for the vllm-gcp Pulumi program.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{listing}\n\nRun '{PROG} COMMAND --help' for a command's options.",
        usage=f"{PROG} [-h] COMMAND [ARGS ...]",
    )
    # Everything after COMMAND is the command's, options included: its own parser reads them.
    top.add_argument("command", metavar="COMMAND", choices=list(COMMANDS), help=argparse.SUPPRESS)
    top.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    top = parser()
    if not given or (given[0].startswith("-") and given[0] not in ("-h", "--help")):
        top.error(f"give a COMMAND first ({', '.join(COMMANDS)}), then its options")
    args = top.parse_args(given)
    command = COMMANDS[args.command]
    return command.run(list(args.args), f"{PROG} {args.command}")


if __name__ == "__main__":
    sys.exit(main())
