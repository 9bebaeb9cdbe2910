"""The vLLM command line the unit runs, checked by the pinned vLLM release's own parser.

    vllm-gcp check-vllm                       # every stack file, a model of each family, GCS
    vllm-gcp check-vllm prod --set 'model.extraArgs=["--max-num-seqs", "64"]'
    vllm-gcp check-vllm --print               # show the command lines; install nothing

The command lines come from the program's own functions: the stack file through
`components.config.validate` (as `vllm-gcp plan` reads it, placeholders for the values left to
the user), then `components.host_bundle.container_spec`, extraArgs included. Each goes to the
`vllm` package of the release the stack's image names (for the checked-in cases, the release of
`catalogue.DEFAULT_VLLM_IMAGE`, so the check follows the tag by itself), installed once into a
virtual environment of its own under ~/.cache/vllm-gcp (never the project's venv), where
tools/vllm_probe.py runs what `vllm serve` runs before it loads a model: the CPU platform picked
as vLLM's CLI picks it, `make_arg_parser`, `validate_parsed_serve_args`,
`AsyncEngineArgs.from_cli_args` and the API server's tool-parser check. Every tool-call parser
the catalogue names must be registered in `ToolParserManager`, and each one a family passes must
load.

The install is lean: vLLM without its dependencies, then only what its parser imports
(LEAN_REQUIREMENTS), at the versions vLLM's own metadata pins; no GPU kernels, and none of
torchvision, torchaudio, torchcodec (the CPU build of torch cannot import beside them).

Exit codes: 0 every command line accepted and every parser known; 1 vLLM refused a command line
or does not know a parser; 2 a bad stack or option; 3 vLLM cannot be installed (network, no
wheel for this Python and machine, disk); 4 the check could not run vLLM's parser.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import email.parser
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import catalogue, host_bundle
from components.config import PROJECT, ConfigError, validate
from tools.plan import PlanError, read_stack

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "vllm_probe.py"

OK, REFUSED, BAD_INPUT, CANNOT_INSTALL, CANNOT_RUN = 0, 1, 2, 3, 4

# What the parser path of vLLM 0.32.0 imports (found by running tools/vllm_probe.py in an
# environment holding vLLM alone and adding each module it asked for), as distribution names.
# Their versions come from vLLM's own Requires-Dist. A release that needs one more is reported
# with the module's name (exit 4): add its distribution here.
LEAN_REQUIREMENTS: tuple[str, ...] = (
    "torch",
    "numpy",
    "packaging",
    "regex",
    "psutil",
    "pyyaml",
    "pydantic",
    "cbor2",
    "pyzmq",
    "urllib3",
    "transformers",
    "aiohttp",
    "requests",
    "oss-harmony",
    "openai",
    "msgspec",
    "cloudpickle",
    "pillow",
    "pybase64",
    "cachetools",
    "uvloop",
    "py-cpuinfo",
    "fastapi",
    "uvicorn",
    "watchfiles",
    "prometheus_client",
    "partial-json-parser",
    "llguidance",
    "ijson",
    "mistral_common",
    "apache-tvm-ffi",
)
# Installed without their own dependencies: xgrammar's triton (about 1 GB) compiles GPU kernels;
# the tool parsers import only xgrammar's grammar classes.
LEAN_NO_DEPS: tuple[str, ...] = ("xgrammar",)
# vLLM requires these, the CPU build of torch fails to import beside PyPI's builds, and parsing
# needs none of them: never installed, removed if present.
REMOVED: tuple[str, ...] = ("torchvision", "torchaudio", "torchcodec")

# Measured for 0.32.0 on a 2-core x86_64 machine with Python 3.11, an empty pip cache and torch
# 2.13.0's CPU wheel on its disk (pip's find-links), other work loading the machine: 425 MB
# from the index (vLLM's wheel 326 MB), 1.88 GB installed, 78 s; then the first check 40 s
# (it byte-compiles what it imports), later ones 25 s. Said up front, before an install starts.
INSTALL_DOWNLOAD_MB = 430
INSTALL_DISK_GB = 1.9
INSTALL_SECONDS = 80
FIRST_CHECK_SECONDS = 40
# Refused up front below this much free space where the environment goes (the environment and
# pip's unpacked downloads).
INSTALL_NEEDS_FREE_GB = 3.0
PIP_TIMEOUT_SECONDS = 1800
PROBE_TIMEOUT_SECONDS = 600
READY = ".ready.json"
WARM = ".warm"  # the parser has run once: what it imports is byte-compiled

# One model of each catalogue family, where KNOWN_MODEL_PARAMS_B has none (the smallest known
# model of a family is taken otherwise): the ids vLLM's tool-calling guide names.
EXAMPLE_MODELS: dict[str, str] = {
    "qwen3_coder": "Qwen/Qwen3-Coder-30B-A3B-Instruct",
}
# The stack the family and GCS cases start from, and the bucket the GCS case streams from.
BASE_STACK = "prod"
EXAMPLE_GCS_URI = "gs://vllm-gcp-check/weights"


class CannotInstall(Exception):
    """vLLM cannot be installed here: the message says why, plainly."""


class CannotRun(Exception):
    """vLLM installed, but its parser could not be run."""


# ------------------------------------------------------------------------------------------------
# The command lines, through the program's own functions


@dataclass(frozen=True)
class Case:
    """One vLLM command line as the unit runs it."""

    name: str  # "stack prod", "family llama3 (meta-llama/Llama-3.1-8B-Instruct)", ...
    release: str  # the vLLM release the image names, X.Y.Z
    arguments: tuple[str, ...]  # after the entrypoint: serve MODEL --flag ...
    environment: tuple[str, ...]  # the container's --env values
    tool_parser: str | None
    container_dirs: tuple[str, ...] = ()  # the container's side of each --volume

    @property
    def command_line(self) -> str:
        return shlex.join(["vllm", *self.arguments])


def release_of(image: str) -> str | None:
    version = catalogue.vllm_version(image)
    return None if version is None else ".".join(str(part) for part in version)


def default_release() -> str:
    release = release_of(catalogue.DEFAULT_VLLM_IMAGE)
    if release is None:
        raise RuntimeError(f"{catalogue.DEFAULT_VLLM_IMAGE} names no vLLM release in its tag")
    return release


def stack_case(
    stack: str,
    settings: Sequence[str] = (),
    name: str | None = None,
    release: str | None = None,
) -> Case:
    """The stack file's command line, read as `vllm-gcp plan` reads it, for the release its
    image names (or `release`); raises ConfigError, PlanError, or ValueError where the command
    line is not one this check can give vLLM."""
    stack_input = read_stack(stack, settings)
    raw = {**stack_input.config, **{f"{PROJECT}:{k}": v for k, v in stack_input.secrets.items()}}
    config, _ = validate(raw, stack)
    model = config.model
    spec = host_bundle.container_spec(model, config.tensor_parallel_size, model.image)
    label = name or f"stack {stack}"
    release = release or release_of(model.image)
    if release is None:
        raise ValueError(
            f"{label}: the image {model.image} names no vLLM release in its tag: give --release"
        )
    if spec.entrypoint != "vllm":
        raise ValueError(
            f"{label}: vLLM {release} runs {spec.entrypoint} {shlex.join(spec.arguments[:2])}; "
            "this check parses `vllm serve` command lines (vLLM 0.10 and later)"
        )
    return Case(
        name=label,
        release=release,
        arguments=spec.arguments,
        environment=spec.environment,
        tool_parser=model.effective_tool_call_parser,
        container_dirs=tuple(volume.split(":")[1] for volume in spec.volumes),
    )


def example_model(family: catalogue.ModelFamily) -> str:
    """The smallest model of the family the catalogue knows, else its EXAMPLE_MODELS entry."""
    known = [m for m in catalogue.KNOWN_MODEL_PARAMS_B if catalogue.family_of(m) is family]
    if known:
        return min(known, key=lambda m: (catalogue.KNOWN_MODEL_PARAMS_B[m], m))
    if family.name in EXAMPLE_MODELS:
        return EXAMPLE_MODELS[family.name]
    raise ValueError(
        f"catalogue family {family.name!r} has no model to check: add one to "
        "catalogue.KNOWN_MODEL_PARAMS_B or to EXAMPLE_MODELS in tools/check_vllm.py"
    )


def stack_names() -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in (ROOT / "stacks").glob("*.yaml"))


def default_cases() -> list[Case]:
    """Every stack file, one model of every catalogue family on the base stack, and the base
    stack streaming its weights from Cloud Storage."""
    cases = [stack_case(stack) for stack in stack_names()]
    for family in catalogue.MODEL_FAMILIES:
        model_id = example_model(family)
        cases.append(
            stack_case(
                BASE_STACK,
                [f"{PROJECT}:model.id={model_id}"],
                name=f"family {family.name} ({model_id})",
            )
        )
    cases.append(
        stack_case(
            BASE_STACK,
            [f"{PROJECT}:model.source=gcs", f"{PROJECT}:model.gcsUri={EXAMPLE_GCS_URI}"],
            name=f"stack {BASE_STACK}, weights streamed from {EXAMPLE_GCS_URI}",
        )
    )
    return cases


def catalogue_parsers() -> tuple[list[str], list[str]]:
    """(the parsers the families pass, which must load; every parser the catalogue names)."""
    passed = sorted({f.tool_call_parser for f in catalogue.MODEL_FAMILIES if f.tool_call_parser})
    return passed, sorted(catalogue.TOOL_CALL_PARSERS)


# ------------------------------------------------------------------------------------------------
# The release's own environment


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 (pip and venv of this Python, with fixed arguments)
        list(command),
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_SECONDS,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def cache_root() -> Path:
    """$VLLM_GCP_CACHE, else $XDG_CACHE_HOME/vllm-gcp, else ~/.cache/vllm-gcp."""
    if os.environ.get("VLLM_GCP_CACHE"):
        return Path(os.environ["VLLM_GCP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vllm-gcp"


def environment_dir(release: str) -> Path:
    return cache_root() / f"vllm-{release}"


def venv_python(directory: Path) -> Path:
    return directory / "bin" / "python"


def install_notice(release: str, directory: Path) -> str:
    return (
        f"vLLM {release} is not installed for this check yet: installing it once into "
        f"{directory} (its own virtual environment; later runs reuse it). Measured on 2 cores: "
        f"about {INSTALL_DOWNLOAD_MB} MB to download, {INSTALL_DISK_GB:g} GB on disk, "
        f"{INSTALL_SECONDS} s, then {FIRST_CHECK_SECONDS} s for the first check, with torch's CPU "
        "wheel found by pip on this machine; where pip finds only PyPI's torch, that is a CUDA "
        "build of several GB more."
    )


def _explain_pip_failure(what: str, output: str, release: str) -> str:
    lowered = output.lower()
    python = f"Python {sys.version_info.major}.{sys.version_info.minor} on {platform.machine()}"
    if "no space left on device" in lowered:
        return f"{what}: the disk is full (No space left on device)"
    if any(
        sign in lowered
        for sign in (
            "temporary failure in name resolution",
            "network is unreachable",
            "connection refused",
            "newconnectionerror",
            "connecttimeout",
            "read timed out",
            "connection reset",
            "could not fetch url",
            "max retries exceeded",
        )
    ):
        return f"{what}: the package index cannot be reached (network); pip said:\n{_tail(output)}"
    if "no matching distribution found" in lowered or "could not find a version" in lowered:
        return (
            f"{what}: pip finds no vllm=={release} wheel for {python} (or no such release); "
            f"pip said:\n{_tail(output)}"
        )
    return f"{what} failed; pip said:\n{_tail(output)}"


def _tail(output: str, lines: int = 8) -> str:
    kept = [line for line in output.strip().splitlines() if "is ignored: it is neither" not in line]
    return "\n".join(f"    {line}" for line in kept[-lines:])


def _pip(run: Runner, python: Path, what: str, release: str, *args: str) -> None:
    """This Python's pip, installing into the environment of `python` (pip's --python): the
    environment itself needs no pip of its own. No byte-compiling at install: of the 50,000
    files only the few thousand the parser imports are ever compiled, on its first run."""
    command = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    try:
        result = run([*command, "install", "--no-compile", *args])
    except subprocess.TimeoutExpired:
        raise CannotInstall(f"{what}: pip did not finish in {PIP_TIMEOUT_SECONDS} s") from None
    if result.returncode != 0:
        raise CannotInstall(_explain_pip_failure(what, result.stdout + result.stderr, release))


def _vllm_metadata(directory: Path, release: str) -> list[str]:
    found = list(directory.glob(f"lib/python*/site-packages/vllm-{release}.dist-info/METADATA"))
    if not found:
        raise CannotInstall(f"vllm {release} installed without its METADATA in {directory}")
    message = email.parser.Parser().parsestr(found[0].read_text(encoding="utf-8"))
    return list(message.get_all("Requires-Dist") or [])


_REQUIREMENT = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$"
)


def constraints(requires: Iterable[str]) -> list[str]:
    """vLLM's own version pins (its Requires-Dist) as pip constraints: extras dropped (pip refuses
    them in constraints), markers kept for pip to evaluate, optional extras' packages left out."""
    lines: list[str] = []
    for text in requires:
        match = _REQUIREMENT.match(text)
        if match is None:
            continue
        name, specifier, marker = match.group(1), match.group(2), match.group(3) or ""
        if not specifier or "extra" in marker or name.lower() in REMOVED:
            continue
        lines.append(f"{name}{specifier}{marker}")
    return lines


def _free_gb(directory: Path) -> float:
    probe = directory
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free / 1e9


def _size_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and not p.is_symlink())


def recipe(release: str) -> str:
    """What an environment was built from: one that another recipe built is built anew."""
    parts = [release, sys.version.split()[0], *LEAN_REQUIREMENTS, "|", *LEAN_NO_DEPS, "|", *REMOVED]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _ready_recipe(directory: Path) -> str | None:
    try:
        record = json.loads((directory / READY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("recipe") if isinstance(record, dict) else None


def ensure_environment(
    release: str, *, log: Callable[[str], None] = print, run: Runner | None = None
) -> Path:
    """The Python of vLLM `release`'s own environment, installed first where it is not."""
    run = run or _run
    directory = environment_dir(release)
    python = venv_python(directory)
    if _ready_recipe(directory) == recipe(release) and python.exists():
        return python
    log(install_notice(release, directory))
    free = _free_gb(directory)
    if free < INSTALL_NEEDS_FREE_GB:
        raise CannotInstall(
            f"not enough disk for vLLM {release}: {free:.1f} GB free where {directory} goes, "
            f"{INSTALL_NEEDS_FREE_GB:g} GB needed (set VLLM_GCP_CACHE to put it elsewhere)"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f"vllm-{release}.partial-", dir=directory.parent))
    started = time.monotonic()
    try:
        _build(building, release, run)
        seconds = time.monotonic() - started
        size = _size_bytes(building)
        record = {
            "release": release,
            "recipe": recipe(release),
            "seconds": round(seconds),
            "bytes": size,
        }
        (building / READY).write_text(json.dumps(record) + "\n", encoding="utf-8")
        if _ready_recipe(directory) == recipe(release):
            shutil.rmtree(building)  # another run finished the same environment first
        else:
            if directory.exists():
                shutil.rmtree(directory)  # an older recipe's
            building.rename(directory)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    log(f"Installed vLLM {release} in {seconds:.0f} s, {size / 1e9:.1f} GB in {directory}.")
    return venv_python(directory)


def _build(directory: Path, release: str, run: Runner) -> None:
    # Built beside its place and moved there when complete: its Python finds the environment by
    # pyvenv.cfg wherever it lies (the scripts in bin/ would name the build path; none is used).
    result = run([sys.executable, "-m", "venv", "--without-pip", str(directory)])
    if result.returncode != 0:
        raise CannotInstall(f"python -m venv {directory} failed:\n{_tail(result.stderr)}")
    python = venv_python(directory)
    _pip(run, python, f"installing vllm=={release}", release, "--no-deps", f"vllm=={release}")
    pins = constraints(_vllm_metadata(directory, release))
    constraints_file = directory / "vllm-constraints.txt"
    constraints_file.write_text("\n".join(pins) + "\n", encoding="utf-8")
    with_pins = ("--constraint", str(constraints_file))
    _pip(
        run,
        python,
        "installing what vLLM's parser imports",
        release,
        *with_pins,
        *LEAN_REQUIREMENTS,
    )
    _pip(
        run,
        python,
        "installing " + ", ".join(LEAN_NO_DEPS),
        release,
        *with_pins,
        "--no-deps",
        *LEAN_NO_DEPS,
    )
    # Never asked for, but a package's own dependencies might bring them.
    run([sys.executable, "-m", "pip", "--python", str(python), "uninstall", "--yes", *REMOVED])


# ------------------------------------------------------------------------------------------------
# Running the probe


@dataclass
class Report:
    release: str
    python: Path
    platform: str = ""
    entry_points: dict[str, str] = field(default_factory=dict)
    cases: list[dict[str, Any]] = field(default_factory=list)
    parsers: list[dict[str, Any]] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)


# The vllm/vllm-openai image's working directory: vLLM's examples (chat templates) are under it.
IMAGE_WORKDIR = "/vllm-workspace"


def stand_in_paths(case: Case, root: Path) -> tuple[list[str], list[str]]:
    """The case's arguments with each path that exists only in the container (under the image's
    working directory, or a volume) replaced by a stand-in under `root`; and a note for each.

    vLLM checks at parse time that some paths exist (`--chat-template`, a model directory when
    offline); the check cannot see the image's files, so it says which ones it stood in for."""
    arguments: list[str] = []
    notes: list[str] = []
    for argument in case.arguments:
        volume = next(
            (d for d in case.container_dirs if argument == d or argument.startswith(d + "/")),
            None,
        )
        in_image = argument.startswith(IMAGE_WORKDIR + "/")
        if volume is None and not in_image:
            arguments.append(argument)
            continue
        stand_in = root / argument.lstrip("/")
        if volume is not None and argument == volume:
            stand_in.mkdir(parents=True, exist_ok=True)
            where = "a volume of the container"
        else:
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.touch()
            where = "a file in the image" if in_image else "a file in a volume"
        arguments.append(str(stand_in))
        notes.append(f"{argument} is {where}; checked with a stand-in for it")
    return arguments, notes


def probe_environment(case_environment: Sequence[str]) -> dict[str, str]:
    """This process's environment as the container would shape it: the container's NAME=VALUE
    settings applied, its pass-through NAMEs left unset (a first start), nothing of a venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        # Nothing of this process's Python; and byte-code is written (into the check's own
        # environment), so that only the first run compiles what the parser imports.
        if k
        not in (
            "PYTHONPATH",
            "PYTHONHOME",
            "VIRTUAL_ENV",
            "PYTHONSTARTUP",
            "PYTHONDONTWRITEBYTECODE",
        )
    }
    env.update({"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "PYTHONNOUSERSITE": "1"})
    for setting in case_environment:
        name, sep, value = setting.partition("=")
        if sep:
            env[name] = value
        else:
            env.pop(name, None)
    return env


def run_probe(
    python: Path,
    cases: Sequence[Case],
    load_parsers: Sequence[str],
    known_parsers: Sequence[str],
    *,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """tools/vllm_probe.py under `python` for cases that share one container environment."""
    environments = {c.environment for c in cases}
    if len(environments) > 1:
        raise ValueError("run_probe takes cases of one container environment")
    env = probe_environment(next(iter(environments), ()))
    env.update(extra_env or {})
    with tempfile.TemporaryDirectory(prefix="vllm-gcp-probe-") as scratch:
        requested: list[dict[str, Any]] = []
        notes: dict[str, list[str]] = {}
        for case in cases:
            argv, notes[case.name] = stand_in_paths(case, Path(scratch) / "container")
            requested.append({"name": case.name, "argv": argv})
        request = {
            "cases": requested,
            "load_parsers": list(load_parsers),
            "known_parsers": list(known_parsers),
        }
        report_path = Path(scratch) / "report.json"
        try:
            result = subprocess.run(  # noqa: S603 (the environment's Python and our probe)
                [str(python), str(PROBE), str(report_path)],
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_SECONDS,
                env=env,
                cwd=scratch,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CannotRun(f"vLLM's parser did not finish in {PROBE_TIMEOUT_SECONDS} s") from None
        if not report_path.is_file():
            raise CannotRun(
                f"vLLM's parser stopped (exit {result.returncode}) without a report:\n"
                f"{_tail(result.stderr, 15)}"
            )
        report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
    problem = report.get("import_error")
    if problem:
        module = problem.get("module")
        hint = (
            f"; the lean install lacks module {module!r}: add its distribution to "
            "LEAN_REQUIREMENTS in tools/check_vllm.py"
            if module
            else ""
        )
        raise CannotRun(f"vLLM's parser does not import: {problem.get('message')}{hint}")
    for result in report.get("cases", []):
        result["notes"] = notes.get(result["name"], [])
    return report


def check(
    python: Path,
    release: str,
    cases: Sequence[Case],
    *,
    parsers: tuple[Sequence[str], Sequence[str]] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Report:
    """Every case through the release's parser, and tool-call parsers against its registry:
    (those that must load, those that must be registered), by default the catalogue's. One probe
    per container environment (vLLM reads some settings once, at import), run side by side."""
    load_parsers, known_parsers = parsers if parsers is not None else catalogue_parsers()
    groups: dict[tuple[str, ...], list[Case]] = {}
    for case in cases:
        groups.setdefault(case.environment, []).append(case)
    # The catalogue's parsers go with the first group (or alone, without cases).
    jobs = [
        (group, (load_parsers, known_parsers) if index == 0 else ((), ()))
        for index, group in enumerate(list(groups.values()) or [[]])
    ]

    def probe(job: tuple[list[Case], tuple[Sequence[str], Sequence[str]]]) -> dict[str, Any]:
        return run_probe(python, job[0], *job[1], extra_env=extra_env)

    # The first run of a new environment compiles what the parser imports (the install compiles
    # nothing): the other probes wait for it rather than compile the same files beside it.
    warm = python.parent.parent / WARM
    raws = [] if warm.exists() else [probe(jobs.pop(0))]
    with contextlib.suppress(OSError):
        warm.touch()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        raws += list(pool.map(probe, jobs))
    report = Report(release=release, python=python)
    by_name: dict[str, dict[str, Any]] = {}
    for raw in raws:
        report.platform = raw.get("platform", "")
        report.entry_points = raw.get("entry_points", {})
        report.registered = raw.get("registered_parsers", [])
        by_name.update({c["name"]: c for c in raw.get("cases", [])})
        report.parsers += raw.get("parsers", [])
    report.cases = [by_name[c.name] for c in cases]
    return report


def _passes(report: Report) -> bool:
    return all(c["ok"] for c in report.cases) and all(p["ok"] for p in report.parsers)


def report_lines(report: Report, cases: Sequence[Case]) -> list[str]:
    lines = [
        f"vLLM {report.release}'s own parser ({report.platform} platform), "
        f"{venv_python_dir(report.python)}:",
        "  entry points: " + ", ".join(report.entry_points.values()),
    ]
    for case, result in zip(cases, report.cases, strict=True):
        if result["ok"]:
            lines.append(f"  ok       {case.name}")
        else:
            lines.append(f"  REFUSED  {case.name}: {result['error']}")
            lines.append(f"           {case.command_line}")
        lines += [f"           warning: {w}" for w in result.get("warnings", [])]
        lines += [f"           note: {n}" for n in result.get("notes", [])]
    families = {f.tool_call_parser: f.name for f in catalogue.MODEL_FAMILIES if f.tool_call_parser}
    unknown = [p for p in report.parsers if not p["ok"]]
    for parser in unknown:
        where = (
            f"family {families[parser['name']]}"
            if parser["name"] in families
            else "catalogue.TOOL_CALL_PARSERS"
        )
        lines.append(f"  UNKNOWN  tool-call parser {parser['name']} ({where}): {parser['error']}")
    refused = sum(not c["ok"] for c in report.cases)
    lines.append(
        f"check-vllm: {len(report.cases) - refused} of {len(report.cases)} command lines "
        f"accepted; {len(report.parsers) - len(unknown)} of {len(report.parsers)} tool-call "
        f"parsers known to vLLM {report.release}"
    )
    return lines


def venv_python_dir(python: Path) -> str:
    return str(python.parent.parent)


# ------------------------------------------------------------------------------------------------
# The command


def _release(text: str) -> str:
    if not re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a vLLM release such as 0.32.0")
    return text


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(__doc__ or "").split("\n", 1)[0],
        epilog=(
            f"Without STACK: every stack file, one model of each catalogue family on the "
            f"{BASE_STACK} stack, and that stack streaming its weights from Cloud Storage. "
            f"vLLM is installed once per release under {cache_root()} "
            f"(VLLM_GCP_CACHE moves it): about {INSTALL_DOWNLOAD_MB} MB to download, "
            f"{INSTALL_DISK_GB:g} GB on disk, {INSTALL_SECONDS} s. Exit codes: 0 accepted, "
            "1 refused, 2 bad stack or option, 3 cannot install vLLM, 4 cannot run its parser."
        ),
    )
    parser.add_argument("stacks", nargs="*", metavar="STACK", help="stacks/Pulumi.<STACK>.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value of the STACKs, as `vllm-gcp plan --set` does",
    )
    parser.add_argument(
        "--release",
        type=_release,
        metavar="X.Y.Z",
        help="check against this vLLM release instead of the one the image's tag names",
    )
    parser.add_argument(
        "--print",
        dest="print_only",
        action="store_true",
        help="print the command lines and the release they go to; install and run nothing",
    )
    return parser


def _cases(args: argparse.Namespace) -> list[Case]:
    if args.stacks:
        return [stack_case(stack, args.set, release=args.release) for stack in args.stacks]
    if args.set:
        raise PlanError("--set needs a STACK to apply to")
    cases = default_cases()
    if args.release:
        cases = [dataclasses.replace(c, release=args.release) for c in cases]
    return cases


def main(argv: list[str] | None = None, prog: str = "vllm-gcp check-vllm") -> int:
    args = _parser(prog).parse_args(argv)
    try:
        cases = _cases(args)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        return BAD_INPUT
    except (PlanError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return BAD_INPUT

    if args.print_only:
        for case in cases:
            print(f"{case.name} -> vLLM {case.release}:\n  {case.command_line}")
        return OK

    status = OK
    for release in sorted({c.release for c in cases}):
        chosen = [c for c in cases if c.release == release]
        # Your stacks: the parsers they pass must load. The checked-in cases: every parser the
        # catalogue names must be known too.
        parsers = (
            (sorted({c.tool_parser for c in chosen if c.tool_parser}), []) if args.stacks else None
        )
        try:
            python = ensure_environment(release, log=lambda m: print(m, flush=True))
            report = check(python, release, chosen, parsers=parsers)
        except CannotInstall as error:
            print(f"{prog}: cannot install vLLM {release}: {error}", file=sys.stderr)
            return CANNOT_INSTALL
        except CannotRun as error:
            print(f"{prog}: cannot run vLLM {release}'s parser: {error}", file=sys.stderr)
            return CANNOT_RUN
        print("\n".join(report_lines(report, chosen)), flush=True)
        if not _passes(report):
            status = REFUSED
    return status


if __name__ == "__main__":
    sys.exit(main())
