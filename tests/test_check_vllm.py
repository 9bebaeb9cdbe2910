"""tools/check_vllm.py without vLLM: the command lines it renders, the install's failure paths,
and tools/vllm_probe.py run for real against a stand-in vLLM package (tests/standin_vllm)."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import pytest

from components import catalogue, host_bundle
from components.config import validate
from tests.harness import stack_config
from tools import check_vllm

STANDIN = Path(__file__).resolve().parent / "standin_vllm"
RELEASE = check_vllm.default_release()


def _family_parsers() -> set[str]:
    return {f.tool_call_parser for f in catalogue.MODEL_FAMILIES if f.tool_call_parser}


def _registered(*without: str) -> str:
    return ",".join(sorted((catalogue.TOOL_CALL_PARSERS | _family_parsers()) - set(without)))


@pytest.fixture(autouse=True)
def no_real_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test runs venv or pip for real: the ones about installing stand in for them."""

    def refuse(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        raise AssertionError(f"a test ran {command[:4]} for real")

    monkeypatch.setattr(check_vllm, "_run", refuse)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("VLLM_GCP_CACHE", str(root))
    return root


@pytest.fixture
def standin_env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ready environment for RELEASE whose `vllm` is the stand-in package: a venv without pip
    (made in a moment) with a .pth file pointing at tests/standin_vllm."""
    directory = check_vllm.environment_dir(RELEASE)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(directory)})
    Path(purelib).mkdir(parents=True, exist_ok=True)
    (Path(purelib) / "vllm_standin.pth").write_text(f"{STANDIN}\n")
    ready = {"recipe": check_vllm.recipe(RELEASE)}
    (directory / check_vllm.READY).write_text(json.dumps(ready) + "\n")
    monkeypatch.setenv("VLLM_STANDIN_REGISTERED", _registered())
    return directory


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = check_vllm.main(list(argv), prog="vllm-gcp check-vllm")
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ------------------------------------------------------------------------------------------------
# The command lines: the program's own, for every stack, family and the GCS variant


def test_the_release_follows_the_default_image_tag() -> None:
    assert catalogue.vllm_version(catalogue.DEFAULT_VLLM_IMAGE) == tuple(
        int(part) for part in RELEASE.split(".")
    )
    assert check_vllm.release_of("vllm/vllm-openai:v0.31.0") == "0.31.0"
    assert check_vllm.release_of("vllm/vllm-openai@sha256:" + "0" * 64) is None


def test_default_cases_cover_every_stack_every_family_and_gcs_streaming() -> None:
    cases = check_vllm.default_cases()
    names = [c.name for c in cases]
    for stack in check_vllm.stack_names():
        assert f"stack {stack}" in names
    for family in catalogue.MODEL_FAMILIES:
        (case,) = [c for c in cases if c.name.startswith(f"family {family.name} (")]
        model_id = case.arguments[1]
        assert catalogue.family_of(model_id) is family
        assert case.tool_parser == family.tool_call_parser
    (gcs,) = [c for c in cases if "streamed" in c.name]
    assert gcs.arguments[:2] == ("serve", check_vllm.EXAMPLE_GCS_URI)
    assert list(gcs.arguments[gcs.arguments.index("--load-format") :][:2]) == [
        "--load-format",
        "runai_streamer",
    ]
    assert "HF_HUB_OFFLINE=1" in gcs.environment
    assert {c.release for c in cases} == {RELEASE}


def test_a_stack_case_is_the_units_command_line_with_extra_args() -> None:
    """What the check hands vLLM is what the unit's `docker run` passes after the image."""
    extra = ["--max-num-seqs", "64"]
    case = check_vllm.stack_case("prod", [f"vllm-gcp:model.extraArgs={json.dumps(extra)}"])
    model_id = "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
    raw = stack_config("prod", {"vllm-gcp:model": {"id": model_id, "extraArgs": extra}})
    config, _ = validate(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}, "prod"
    )
    image = config.model.image
    spec = host_bundle.container_spec(config.model, config.tensor_parallel_size, image)
    unit_argv = host_bundle.docker_run_command(spec, image)
    at = unit_argv.index(image)
    assert unit_argv[at - 2 : at] == ["--entrypoint", "vllm"]
    assert tuple(unit_argv[at + 1 :]) == case.arguments
    assert case.arguments[:2] == ("serve", model_id)
    assert case.arguments[-2:] == tuple(extra)


def test_every_family_has_a_model_to_check() -> None:
    for family in catalogue.MODEL_FAMILIES:
        assert catalogue.family_of(check_vllm.example_model(family)) is family


def test_constraints_keep_vllms_pins_without_extras_and_optional_packages() -> None:
    requires = [
        "regex",
        "transformers<5.20.0,>=5.16.1",
        "fastapi[standard]<0.137.0,>=0.133.0",
        'xgrammar==0.2.8; platform_machine == "x86_64" or platform_machine == "aarch64"',
        "torch==2.13.0",
        "torchvision==0.28.0",
        'pandas; extra == "bench"',
        'tensorizer==2.10.1; extra == "tensorizer"',
    ]
    assert check_vllm.constraints(requires) == [
        "transformers<5.20.0,>=5.16.1",
        "fastapi<0.137.0,>=0.133.0",
        'xgrammar==0.2.8; platform_machine == "x86_64" or platform_machine == "aarch64"',
        "torch==2.13.0",
    ]


def test_paths_only_the_container_has_get_stand_ins(tmp_path: Path) -> None:
    (gemma,) = [
        c for c in check_vllm.default_cases() if c.name.startswith("family gemma4")
    ] or pytest.skip("no gemma4 family in the catalogue")
    arguments, notes = check_vllm.stand_in_paths(gemma, tmp_path)
    template = gemma.arguments[gemma.arguments.index("--chat-template") + 1]
    stood_in = arguments[gemma.arguments.index("--chat-template") + 1]
    assert template.startswith("/vllm-workspace/")
    assert Path(stood_in).is_file()
    assert stood_in.startswith(str(tmp_path))
    assert notes == [f"{template} is a file in the image; checked with a stand-in for it"]


def test_print_shows_the_command_lines_and_installs_nothing(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = _main(capsys, "--print")
    assert status == check_vllm.OK
    assert f"stack prod -> vLLM {RELEASE}:" in out
    assert "  vllm serve mistralai/Mistral-Small-3.2-24B-Instruct-2506 --host 0.0.0.0" in out
    assert not cache.exists()


def test_a_bad_stack_is_exit_2(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _main(capsys, "no-such-stack")
    assert status == check_vllm.BAD_INPUT
    assert "no stack file stacks/Pulumi.no-such-stack.yaml" in err
    status, _, err = _main(capsys, "prod", "--set", "vllm-gcp:model.gpuMemoryUtilization=1.5")
    assert status == check_vllm.BAD_INPUT
    assert "vllm-gcp:model.gpuMemoryUtilization" in err
    assert not cache.exists()


# ------------------------------------------------------------------------------------------------
# The probe against the stand-in vLLM


def test_every_rendered_command_line_passes_the_standin(
    standin_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = _main(capsys)
    assert status == check_vllm.OK, out + err
    cases = check_vllm.default_cases()
    assert f"check-vllm: {len(cases)} of {len(cases)} command lines accepted" in out
    assert f"vLLM {RELEASE}'s own parser (CpuPlatform platform)" in out


def test_an_unknown_flag_is_reported_with_the_stack_and_the_flag(
    standin_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = _main(capsys, "prod", "--set", 'vllm-gcp:model.extraArgs=["--no-such-flag"]')
    assert status == check_vllm.REFUSED
    assert "  REFUSED  stack prod: unrecognized arguments: --no-such-flag" in out
    assert "vllm serve mistralai/Mistral-Small-3.2-24B-Instruct-2506 --host" in out
    assert "check-vllm: 0 of 1 command lines accepted" in out


def test_a_bad_value_and_vllms_warnings_are_reported(
    standin_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = _main(
        capsys, "dev", "--set", 'vllm-gcp:model.extraArgs=["--max-num-seqs", "many"]'
    )
    assert status == check_vllm.REFUSED
    assert "REFUSED  stack dev: argument --max-num-seqs: invalid int value: 'many'" in out
    status, out, _ = _main(
        capsys, "dev", "--set", 'vllm-gcp:model.extraArgs=["--max-num-seqs", "8"]'
    )
    assert status == check_vllm.OK
    assert "warning: argument 'max_num_seqs' is deprecated" in out


def test_a_stack_of_yours_is_checked_with_the_parser_it_passes(
    standin_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalogue parser no stack uses is the project's concern (the run without STACK), not
    that of someone checking their stack."""
    monkeypatch.setenv("VLLM_STANDIN_REGISTERED", _registered("xlam"))
    status, out, _ = _main(capsys, "dev")
    assert status == check_vllm.OK, out
    assert "check-vllm: 1 of 1 command lines accepted; 1 of 1 tool-call parsers known" in out
    status, out, _ = _main(capsys)
    assert status == check_vllm.REFUSED
    assert "UNKNOWN  tool-call parser xlam (catalogue.TOOL_CALL_PARSERS)" in out


def test_an_image_without_a_release_needs_release(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digest = "vllm-gcp:model.image=vllm/vllm-openai@sha256:" + "a" * 64
    status, _, err = _main(capsys, "prod", "--set", digest, "--print")
    assert status == check_vllm.BAD_INPUT
    assert "names no vLLM release in its tag: give --release" in err
    status, out, _ = _main(capsys, "prod", "--set", digest, "--release", "0.31.0", "--print")
    assert status == check_vllm.OK
    assert "stack prod -> vLLM 0.31.0:" in out


def test_an_unknown_tool_call_parser_is_reported(
    standin_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_STANDIN_REGISTERED", _registered("hermes", "xlam"))
    status, out, _ = _main(capsys)
    assert status == check_vllm.REFUSED
    assert "REFUSED  stack dev: KeyError: 'invalid tool call parser: hermes'" in out
    assert "UNKNOWN  tool-call parser hermes (family hermes): tool-call parser 'hermes' is " in out
    assert (
        "UNKNOWN  tool-call parser xlam (catalogue.TOOL_CALL_PARSERS): tool-call parser 'xlam' "
        "is not registered" in out
    )


def test_a_family_parser_that_does_not_load_is_reported(
    standin_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_STANDIN_BROKEN_PARSER", "mistral")
    status, out, _ = _main(capsys, "prod")
    assert status == check_vllm.REFUSED
    assert "  ok       stack prod" in out
    assert (
        "UNKNOWN  tool-call parser mistral (family mistral): tool-call parser 'mistral' does "
        "not load: ModuleNotFoundError: No module named 'ijson'" in out
    )


def test_a_module_the_lean_install_lacks_is_exit_4_naming_it(
    standin_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_STANDIN_MISSING_MODULE", "ijson")
    status, _, err = _main(capsys, "prod")
    assert status == check_vllm.CANNOT_RUN
    assert "cannot run vLLM 0.32.0's parser: vLLM's parser does not import: " in err
    assert "lacks module 'ijson': add its distribution to LEAN_REQUIREMENTS" in err


def test_the_probe_runs_without_the_projects_packages(standin_env: Path) -> None:
    """The environment's Python sees the stand-in but not the project's venv or its modules."""
    python = check_vllm.venv_python(standin_env)
    script = "import importlib.util as u; print(u.find_spec('pydantic'), u.find_spec('components'))"
    result = subprocess.run(
        [str(python), "-c", script],
        env=check_vllm.probe_environment(()),
        cwd=standin_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["None", "None"]


# ------------------------------------------------------------------------------------------------
# Installing: said up front, and plainly refused


class FakeRun:
    """Stands in for venv and pip: venv succeeds, pip fails as told."""

    def __init__(self, pip_output: str) -> None:
        self.pip_output = pip_output
        self.commands: list[list[str]] = []

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(command))
        if "venv" in command:
            return subprocess.CompletedProcess(list(command), 0, "", "")
        return subprocess.CompletedProcess(list(command), 1, "", self.pip_output)


@pytest.mark.parametrize(
    ("pip_output", "expected"),
    [
        (
            "ERROR: Could not find a version that satisfies the requirement vllm==0.32.0 (from "
            "versions: none)\nERROR: No matching distribution found for vllm==0.32.0",
            "pip finds no vllm==0.32.0 wheel for Python",
        ),
        (
            "WARNING: Retrying (Retry(total=4)) after connection broken by "
            "'NewConnectionError(... [Errno -3] Temporary failure in name resolution)'",
            "the package index cannot be reached (network)",
        ),
        ("ERROR: Could not install packages: [Errno 28] No space left on device", "disk is full"),
    ],
)
def test_cannot_install_is_a_plain_message_and_exit_3(
    cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pip_output: str,
    expected: str,
) -> None:
    fake = FakeRun(pip_output)
    monkeypatch.setattr(check_vllm, "_run", fake)
    status, out, err = _main(capsys, "prod")
    assert status == check_vllm.CANNOT_INSTALL
    assert f"installing it once into {cache / f'vllm-{RELEASE}'}" in out
    assert f"about {check_vllm.INSTALL_DOWNLOAD_MB} MB to download" in out
    assert err.startswith(f"vllm-gcp check-vllm: cannot install vLLM {RELEASE}: ")
    assert expected in err
    assert fake.commands[1][-2:] == ["--no-deps", f"vllm=={RELEASE}"]
    assert list(cache.iterdir()) == []  # nothing half-built is left


def test_too_little_disk_is_refused_before_any_download(
    cache: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeRun("")
    monkeypatch.setattr(check_vllm, "_run", fake)
    monkeypatch.setattr(check_vllm, "_free_gb", lambda _directory: 1.25)
    status, _, err = _main(capsys, "prod")
    assert status == check_vllm.CANNOT_INSTALL
    assert f"not enough disk for vLLM {RELEASE}: 1.2 GB free" in err
    assert "set VLLM_GCP_CACHE to put it elsewhere" in err
    assert fake.commands == []


def test_the_install_asks_pip_for_the_lean_set_under_vllms_pins(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order and arguments of the install, with pip standing in: vLLM alone, then the lean
    set under vLLM's own pins, then the no-deps packages; torchvision and friends removed."""
    commands: list[list[str]] = []

    def run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        commands.append(list(command))
        if "venv" in command:
            directory = Path(command[-1])
            (directory / "bin").mkdir(parents=True)
            (directory / "bin" / "python").touch()
        elif command[-1] == f"vllm=={RELEASE}":
            info = Path(commands[0][-1]) / "lib" / "python3.11" / "site-packages"
            info = info / f"vllm-{RELEASE}.dist-info"
            info.mkdir(parents=True)
            (info / "METADATA").write_text(
                "Name: vllm\nRequires-Dist: torch==2.13.0\nRequires-Dist: torchaudio==2.11.0\n"
            )
        return subprocess.CompletedProcess(list(command), 0, "", "")

    log: list[str] = []
    python = check_vllm.ensure_environment(RELEASE, log=log.append, run=run)
    directory = check_vllm.environment_dir(RELEASE)
    assert python == directory / "bin" / "python"
    record = json.loads((directory / check_vllm.READY).read_text())
    assert record["release"] == RELEASE
    assert (directory / "vllm-constraints.txt").read_text() == "torch==2.13.0\n"
    assert commands[0] == [sys.executable, "-m", "venv", "--without-pip", commands[0][-1]]
    # This Python's pip into the new environment (which has none), byte-compiling nothing.
    head = [sys.executable, "-m", "pip", "--python"]
    assert all(c[:4] == head and c[4].endswith("/bin/python") for c in commands[1:])
    pip = [[a for a in c[5:] if a != "--disable-pip-version-check"] for c in commands[1:]]
    assert pip[0] == ["install", "--no-compile", "--no-deps", f"vllm=={RELEASE}"]
    assert pip[1][:2] == ["install", "--no-compile"]
    assert pip[1][2] == "--constraint"
    assert pip[1][4:] == list(check_vllm.LEAN_REQUIREMENTS)
    assert pip[2][4:] == ["--no-deps", *check_vllm.LEAN_NO_DEPS]
    assert pip[3] == ["uninstall", "--yes", *check_vllm.REMOVED]
    assert not {"torchvision", "torchaudio", "torchcodec", "triton"} & set(
        check_vllm.LEAN_REQUIREMENTS
    )
    assert log[0].startswith(f"vLLM {RELEASE} is not installed for this check yet")
    # Ready: a second call installs nothing; another recipe (a package added to the lean set)
    # builds it anew.
    commands.clear()
    assert check_vllm.ensure_environment(RELEASE, log=log.append, run=run) == python
    assert commands == []
    monkeypatch.setattr(check_vllm, "LEAN_REQUIREMENTS", (*check_vllm.LEAN_REQUIREMENTS, "six"))
    assert check_vllm.ensure_environment(RELEASE, log=log.append, run=run) == python
    assert commands[0][:4] == [sys.executable, "-m", "venv", "--without-pip"]
    assert commands[2][-1] == "six"
    assert [p.name for p in directory.parent.iterdir()] == [directory.name]


def test_the_default_test_run_never_imports_vllm() -> None:
    assert "vllm" not in sys.modules
