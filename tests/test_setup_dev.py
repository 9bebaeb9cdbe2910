"""tools/setup-dev.sh on a stand-in machine: its python3, apt-get, sudo and id are the stand-ins
of tests/fakebin_setup, and the script runs from a copy of the project in a temporary directory,
so the real ./venv is never touched."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.harness import ROOT

STANDIN = ROOT / "tests" / "fakebin_setup" / "standin.sh"
COMMANDS = ("python3", "apt-get", "sudo", "id", "nginx")
LOCKED = len(
    re.findall(r"^[A-Za-z0-9][A-Za-z0-9._-]*==", (ROOT / "requirements-dev.txt").read_text(), re.M)
)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str
    calls: list[str]
    project: Path


def _prepare(tmp_path: Path) -> Path:
    """A copy of what the script reads, and the stand-ins' directory; the project's path."""
    project = tmp_path / "project"
    (project / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "setup-dev.sh", project / "tools")
    for name in ("pyproject.toml", "requirements-dev.txt"):
        shutil.copy(ROOT / name, project)
    # What the set-up byte-compiles (the stand-in python refuses a path that does not exist).
    (project / "__main__.py").touch()
    for directory in ("components", "tests", "benchmarks"):
        (project / directory).mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "state").mkdir()
    for command in COMMANDS:
        (tmp_path / "bin" / command).symlink_to(STANDIN)
    return project


def _setup(tmp_path: Path, **knobs: str) -> Run:
    """Runs the copy's tools/setup-dev.sh (preparing the copy first if there is none)."""
    project = tmp_path / "project"
    if not project.exists():
        _prepare(tmp_path)
    state = tmp_path / "state"
    calls_log = state / "calls.log"
    calls_log.unlink(missing_ok=True)
    result = subprocess.run(
        ["bash", str(project / "tools" / "setup-dev.sh")],
        capture_output=True,
        text=True,
        env={
            "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "FAKE_STATE": str(state),
            **knobs,
        },
        timeout=60,
        check=False,
    )
    calls = calls_log.read_text().splitlines() if calls_log.exists() else []
    return Run(result.returncode, result.stdout, result.stderr, calls, project)


def _commands(run: Run, name: str) -> list[str]:
    return [call for call in run.calls if call.split()[0] == name]


def test_a_supported_python_sets_up_with_progress(tmp_path: Path) -> None:
    run = _setup(tmp_path)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    # Every line says how long the set-up has run so far.
    assert all(re.match(r"setup-dev \[ *\d+s\]: ", line) for line in lines), lines
    assert "using " in lines[0] and "Python 3.11.7" in lines[0]
    progress = [line for line in lines if re.search(r": +\d+/\d+ ", line)]
    assert len(progress) == LOCKED
    assert progress[0].endswith(f"  1/{LOCKED} annotated-types==0.8.0")
    assert f"unpacking {LOCKED} packages into the venv" in run.out
    assert lines[-1].endswith(
        "done: run the tests with venv/bin/pytest, the tools with venv/bin/vllm-gcp --help"
    )
    # pip's whole output is kept next to the venv, the progress lines are drawn from it.
    pip_log = (run.project / "venv" / "setup-dev-pip.log").read_text()
    assert pip_log.count("Collecting ") == LOCKED
    assert _commands(run, "apt-get") == []
    # The project's modules are compiled once, for every test worker and tool process after.
    assert [c for c in run.calls if "compileall" in c] == [
        "python -m compileall -q -j 0 __main__.py components tools tests benchmarks"
    ]
    installs = [call for call in _commands(run, "python") if " install " in call]
    assert [call.split()[4:] for call in installs] == [
        ["--disable-pip-version-check", "--progress-bar", "off", "--require-hashes",
         "-r", f"{run.project}/requirements-dev.txt"],
        ["--quiet", "--disable-pip-version-check", "--no-deps", "--no-build-isolation",
         "--editable", str(run.project)],
    ]  # fmt: skip


def test_wheels_from_a_local_directory_show_as_progress_too(tmp_path: Path) -> None:
    run = _setup(tmp_path, FAKE_PIP_FROM_FILES="1")
    assert run.code == 0, run.err
    progress = [line for line in run.out.splitlines() if re.search(r": +\d+/\d+ ", line)]
    assert len(progress) == LOCKED
    assert progress[0].endswith(f"  1/{LOCKED} annotated-types-0.8.0-py3-none-any.whl")


def test_while_pip_unpacks_in_silence_a_line_says_it_is_still_working(tmp_path: Path) -> None:
    run = _setup(tmp_path, FAKE_PIP_UNPACK_S="1.3", SETUP_DEV_PROGRESS_EVERY_S="0.5")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    unpacking = next(i for i, line in enumerate(lines) if "unpacking" in line)
    quiet = [line.split(": ", 1)[1] for line in lines[unpacking + 1 : unpacking + 3]]
    assert quiet == ["  still installing (pip is quiet while it unpacks)"] * 2
    assert "still installing" not in "".join(lines[:unpacking])


def test_a_python_older_than_requires_python_is_refused_by_its_version(tmp_path: Path) -> None:
    run = _setup(tmp_path, FAKE_PYTHON_VERSION="3.10.12")
    assert run.code == 1
    assert run.out == ""
    assert run.err.startswith(
        f"setup-dev: error: {tmp_path}/bin/python3 is Python 3.10.12; vllm-gcp needs Python 3.11 "
        "or newer (pyproject.toml,\n    requires-python)."
    )
    assert "sudo apt-get install -y python3.11 python3.11-venv" in run.err
    assert "PYTHON=python3.11 bash tools/setup-dev.sh" in run.err
    assert _commands(run, "python3") == ["python3 --version"]
    assert not (run.project / "venv").exists()


def test_a_venv_of_an_older_python_is_refused(tmp_path: Path) -> None:
    assert _setup(tmp_path).code == 0
    run = _setup(tmp_path, FAKE_PYTHON_VERSION="3.10.12")
    assert run.code == 1
    assert run.err == (
        f"setup-dev: error: {run.project}/venv holds Python 3.10.12, older than pyproject.toml's "
        "requires-python: remove it\n    (rm -rf venv) and run this script again\n"
    )


def test_a_second_run_reuses_the_venv(tmp_path: Path) -> None:
    assert _setup(tmp_path).code == 0
    run = _setup(tmp_path)
    assert run.code == 0, run.err
    assert run.out.splitlines()[0].endswith(f"reusing {run.project}/venv (Python 3.11.7)")
    assert [call for call in run.calls if " venv " in call] == []


def test_the_minimum_is_read_from_pyproject(tmp_path: Path) -> None:
    pyproject = _prepare(tmp_path) / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('">=3.11"', '">=3.13"'))
    run = _setup(tmp_path, FAKE_PYTHON_VERSION="3.12.1")
    assert run.code == 1
    assert "is Python 3.12.1; vllm-gcp needs Python 3.13 or newer" in run.err


def test_without_ensurepip_as_root_it_installs_the_venv_package_and_goes_on(
    tmp_path: Path,
) -> None:
    run = _setup(tmp_path, FAKE_NO_ENSUREPIP="1", FAKE_UID="0")
    assert run.code == 0, run.err
    assert _commands(run, "apt-get") == [
        "apt-get update -qq",
        "apt-get install -y -qq python3.11-venv",
    ]
    assert (
        "python3 -m venv needs ensurepip, which Debian and Ubuntu ship in python3.11-venv: "
        "apt-get install python3.11-venv"
    ) in run.out
    # The failed attempt left a venv without pip; the second one replaces it.
    assert [c for c in _commands(run, "python3") if "venv" in c] == [
        f"python3 -m venv --clear {run.project}/venv",
        f"python3 -m venv --clear {run.project}/venv",
    ]
    assert "done:" in run.out


def test_without_ensurepip_or_root_it_prints_the_apt_command_and_stops(tmp_path: Path) -> None:
    run = _setup(tmp_path, FAKE_NO_ENSUREPIP="1")
    assert run.code == 1
    assert run.err == (
        "setup-dev: error: python3 -m venv needs ensurepip, which Debian and Ubuntu ship in "
        "python3.11-venv. Install it, then run this script again:\n"
        "    sudo apt-get update && sudo apt-get install -y python3.11-venv\n"
    )
    assert _commands(run, "apt-get") == []
    assert _commands(run, "sudo") == ["sudo -n true"]


def test_without_ensurepip_and_passwordless_sudo_it_installs_through_sudo(tmp_path: Path) -> None:
    run = _setup(tmp_path, FAKE_NO_ENSUREPIP="1", FAKE_SUDO_NOPASSWD="1")
    assert run.code == 0, run.err
    assert _commands(run, "sudo") == [
        "sudo -n true",
        "sudo -n timeout 600 apt-get update -qq",
        "sudo -n env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "
        "python3.11-venv",
    ]


def test_a_venv_left_without_pip_is_created_again(tmp_path: Path) -> None:
    first = _setup(tmp_path, FAKE_NO_ENSUREPIP="1")
    assert first.code == 1
    assert (first.project / "venv" / "bin" / "python").exists()
    # The operator ran the apt-get command it printed.
    (tmp_path / "state" / "apt-installed").write_text("python3.11-venv\n")
    second = _setup(tmp_path, FAKE_NO_ENSUREPIP="1")
    assert second.code == 0, second.err
    assert "has no pip (an earlier venv creation failed): creating it again" in second.out
    assert "done:" in second.out


def test_a_failed_pip_install_shows_the_end_of_its_output(tmp_path: Path) -> None:
    run = _setup(tmp_path, FAKE_PIP_FAIL="1")
    assert run.code == 1
    assert "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE." in run.err
    assert run.err.rstrip().endswith(
        f"setup-dev: error: pip install failed or took over 30 minutes (the end of its output "
        f"above, all of it in {run.project}/venv/setup-dev-pip.log)"
    )
    assert "install_project" not in run.out
    assert "installing the project" not in run.out
