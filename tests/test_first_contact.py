"""components/first_contact.sh, the first SSH through a jump host, run on the operator's machine:
rendered as the component renders it and run with a stand-in ssh (tests/fakebin_ssh/ssh) that
records each call and fails as a host without the stack's key would, then succeeds, and a stand-in
ssh-add that lists an agent's keys. One test hands the dial to the real OpenSSH client, for the
settings `ssh -G` reports for each hop."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.remote_access import COMPONENTS_DIR, first_contact_script
from tests.harness import MOCK_SSH_PRIVATE_KEY, assert_shell_clean

FAKEBIN = Path(__file__).resolve().parent / "fakebin_ssh"
HOST = "10.42.0.10"
JUMP = "ops@10.0.0.5:22"
FAST = {"VLLM_GCP_RETRY_SECONDS": "0"}

# Constructs macOS's bash 3.2 does not have (bash 4 and later), and GNU-only tools.
BASH4_ONLY = {
    "mapfile/readarray": r"\b(mapfile|readarray)\b",
    "associative arrays": r"\b(declare|local|typeset)\s+-[a-zA-Z]*A",
    "namerefs, declare -g": r"\b(declare|local|typeset)\s+-[a-zA-Z]*[ng]\b",
    "${var@Q} and other transformations": r"\$\{[^}]*@[QEPAaKk]\}",
    "case modification": r"\$\{[^}]*(,,|\^\^)[^}]*\}",
    "negative array indices": r"\[\s*-\d+\s*\]\}",
    "|& and &>>": r"\|&|&>>",
    "coproc, wait -n": r"\bcoproc\b|\bwait\s+-n\b",
    "BASHPID, EPOCHSECONDS": r"BASHPID|EPOCH(SECONDS|REALTIME)",
    "fd allocation {var}>": r"\{[A-Za-z_][A-Za-z0-9_]*\}[<>]",
    ";;& and ;& in case": r";;&|;&",
    "globstar": r"globstar",
    "GNU timeout": r"(^|[\s;|&(])timeout\s",
}


@dataclass
class Contact:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class Operator:
    """The operator's machine: the stand-in ssh first on PATH and its record directory."""

    def __init__(self, base: Path) -> None:
        self.state = base / "state"
        self.tmp = base / "tmp"
        self.state.mkdir()
        self.tmp.mkdir()
        (self.state / "expected_key").write_text(MOCK_SSH_PRIVATE_KEY)
        # The stand-in ssh-add answers for an agent whose socket exists.
        self.agent_socket = self.state / "agent.sock"
        self.agent_socket.touch()

    def fake(self, name: str, text: str = "") -> None:
        (self.state / name).write_text(text)

    def record(self, name: str) -> list[str]:
        path = self.state / name
        return path.read_text().splitlines() if path.exists() else []

    def contact(
        self,
        key: str = MOCK_SSH_PRIVATE_KEY,
        *,
        jump: str = JUMP,
        agent: bool = True,
        **env: str,
    ) -> Contact:
        script = first_contact_script(HOST, "vllm", jump)
        started = time.monotonic()
        agent_env = {"SSH_AUTH_SOCK": str(self.agent_socket)} if agent else {}
        # As the local command runs it: interpreter ["bash", "-c"], the key on stdin.
        result = subprocess.run(
            ["bash", "-c", script],
            input=key,
            env={
                "PATH": f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}",
                "HOME": str(self.state),
                "TMPDIR": str(self.tmp),
                "FAKE_STATE": str(self.state),
                **agent_env,
                **FAST,
                **env,
            },
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return Contact(result.returncode, result.stdout, result.stderr, time.monotonic() - started)


@pytest.fixture
def operator(tmp_path: Path) -> Operator:
    return Operator(tmp_path)


def test_each_attempt_dials_afresh_until_the_host_accepts_the_key(operator: Operator) -> None:
    operator.fake("fails", "2")
    contact = operator.contact()
    assert contact.returncode == 0, contact.stderr
    calls = operator.record("calls")
    assert len(calls) == 3
    assert len({call.split()[0] for call in calls}) == 3  # a new ssh process each attempt
    for call in calls:
        assert f" -J {JUMP} " in call
        assert " -l vllm " in call
        assert call.endswith(f" {HOST} true")
    assert contact.stdout.count("not yet: vllm@10.42.0.10: Permission denied (publickey).") == 2
    assert "vllm@10.42.0.10 accepted the stack's key through ops@10.0.0.5:22 (attempt 3" in (
        contact.stdout
    )
    # No prompt and a bounded connect, for the jump host too (ssh hands -F on to its ssh).
    configs = operator.record("configs")
    assert "  BatchMode yes" in configs
    assert "  ConnectTimeout 15" in configs
    # The agent was asked for its keys once, before the first dial.
    assert operator.record("agent_calls") == [f"-l SSH_AUTH_SOCK={operator.agent_socket}"]
    assert "is offered your SSH agent's keys only (1 listed by ssh-add -l)" in contact.stdout


def test_the_key_lives_only_in_a_private_file_for_the_attempts(operator: Operator) -> None:
    operator.fake("fails", "1")
    contact = operator.contact()
    assert contact.returncode == 0, contact.stderr
    checks = [line.split() for line in operator.record("key_checks")]
    assert [(mode, verdict) for mode, verdict, _ in checks] == [("600", "same")] * 2
    key_file = Path(checks[0][2])
    assert key_file.parent.parent == operator.tmp
    assert not key_file.exists()
    assert list(operator.tmp.iterdir()) == []  # the whole private directory is gone
    body = MOCK_SSH_PRIVATE_KEY.splitlines()[1]
    for text in (*operator.record("calls"), contact.stdout, contact.stderr):
        assert body not in text
    assert operator.record("stdin") == []  # ssh's own stdin is not the key


def test_an_attempt_that_hangs_is_cut_off_and_the_next_one_made(operator: Operator) -> None:
    operator.fake("hang_first")
    contact = operator.contact(VLLM_GCP_ATTEMPT_SECONDS="1")
    assert contact.returncode == 0, contact.stderr
    assert contact.seconds < 6
    assert "attempt 1 (" in contact.stdout
    assert "not yet: no answer within 1 s" in contact.stdout
    assert len(operator.record("calls")) == 2


def test_commands_that_end_at_once_leave_the_work_files_alone(operator: Operator) -> None:
    # The stand-ins end within milliseconds, often before a subshell forked with them has run a
    # line: were it signalled then, it would run the traps it inherited (exit, cleanup) and remove
    # the work directory under the script (it did, about one run in twenty, with a watchdog
    # stopped by a TERM).
    for _ in range(20):
        contact = operator.contact()
        assert contact.returncode == 0, contact.stderr
        assert "accepted the stack's key" in contact.stdout
    assert list(operator.tmp.iterdir()) == []


def test_past_the_deadline_it_gives_up_with_a_clear_message(operator: Operator) -> None:
    operator.fake("fails", "100000")
    contact = operator.contact(VLLM_GCP_DEADLINE_SECONDS="1", VLLM_GCP_RETRY_SECONDS="0.2")
    assert contact.returncode == 1
    assert contact.seconds < 6
    message = contact.stderr.strip().splitlines()[-1]
    assert message.startswith("[first contact] gave up after ")
    target = "vllm@10.42.0.10 did not accept the stack's key through the jump host ops@10.0.0.5:22"
    assert target in message
    assert "Last ssh error: vllm@10.42.0.10: Permission denied (publickey)." in message
    assert list(operator.tmp.iterdir()) == []


def test_a_changed_jump_host_key_fails_at_once(operator: Operator) -> None:
    operator.fake("host_key_changed")
    contact = operator.contact()
    assert contact.returncode == 1
    assert len(operator.record("calls")) == 1
    assert "the jump host ops@10.0.0.5:22 does not match its key in your known_hosts" in (
        contact.stderr
    )


# ------------------------------------------------------------------------------------------------
# The jump host: the SSH agent's keys only, as the remote steps (pulumi-command's proxy) offer it

AGENT_ADVICE = (
    "the remote steps reach the jump host ops@10.0.0.5:22 with your SSH agent's keys only "
    "(SSH_AUTH_SOCK; no key file is read for it): start an agent, run ssh-add <key> with a key "
    "the jump host accepts, then run pulumi up again"
)


def assert_stopped_before_any_dial(operator: Operator, contact: Contact, message: str) -> None:
    assert contact.returncode == 1
    assert contact.seconds < 5
    assert contact.stderr.strip().splitlines() == [f"[first contact] {message}: {AGENT_ADVICE}"]
    assert operator.record("calls") == []
    assert list(operator.tmp.iterdir()) == []


def test_without_an_agent_it_stops_before_any_dial(operator: Operator) -> None:
    contact = operator.contact(agent=False)
    assert_stopped_before_any_dial(operator, contact, "no SSH agent (SSH_AUTH_SOCK is not set)")
    assert operator.record("agent_calls") == []


def test_an_agent_without_keys_stops_before_any_dial(operator: Operator) -> None:
    operator.fake("agent_empty")
    contact = operator.contact()
    assert_stopped_before_any_dial(
        operator,
        contact,
        "your SSH agent (SSH_AUTH_SOCK) holds no key (ssh-add -l: The agent has no identities.)",
    )
    assert len(operator.record("agent_calls")) == 1


def test_an_agent_that_is_gone_stops_before_any_dial(operator: Operator) -> None:
    contact = operator.contact(SSH_AUTH_SOCK=str(operator.state / "gone.sock"))
    assert_stopped_before_any_dial(
        operator,
        contact,
        "your SSH agent (SSH_AUTH_SOCK) does not answer "
        "(ssh-add -l: Error connecting to agent: No such file or directory)",
    )


def test_an_agent_that_does_not_answer_is_given_up_on_quickly(operator: Operator) -> None:
    operator.fake("agent_hang")
    contact = operator.contact(VLLM_GCP_AGENT_SECONDS="1")
    assert_stopped_before_any_dial(
        operator,
        contact,
        "your SSH agent (SSH_AUTH_SOCK) did not list its keys within 1 s (ssh-add -l)",
    )


@pytest.mark.parametrize(
    ("jump", "refusal"),
    [
        (JUMP, "ops@10.0.0.5: Permission denied (publickey)."),
        # ssh names a jump host by its lowercased name.
        ("ops@Bastion.Internal:2222", "ops@bastion.internal: Permission denied (publickey)."),
    ],
)
def test_the_jump_host_refusing_the_agents_keys_fails_at_once(
    operator: Operator, jump: str, refusal: str
) -> None:
    operator.fake("jump_denied", "permission")
    # Were it retried, it would be for 2 s, many attempts, then "gave up".
    contact = operator.contact(jump=jump, VLLM_GCP_DEADLINE_SECONDS="2")
    assert contact.returncode == 1
    assert len(operator.record("calls")) == 1
    message = contact.stderr.strip().splitlines()[-1]
    assert message.startswith(
        f"[first contact] the jump host {jump} refused your SSH agent's keys ({refusal}): "
    )
    assert "with the agent's keys only (SSH_AUTH_SOCK)" in message
    assert "run ssh-add <key> with a key " in message


def test_the_jump_host_disconnecting_for_too_many_keys_fails_at_once(operator: Operator) -> None:
    operator.fake("jump_denied", "too_many")
    contact = operator.contact(VLLM_GCP_DEADLINE_SECONDS="2")
    assert contact.returncode == 1
    assert len(operator.record("calls")) == 1
    assert (
        "refused your SSH agent's keys (Received disconnect from 192.0.2.7 port 22:2: "
        "Too many authentication failures)"
    ) in contact.stderr


def test_the_hosts_refusal_is_retried_even_for_the_jump_hosts_user(operator: Operator) -> None:
    # The jump host's user is the host's: only the address tells the two refusals apart.
    operator.fake("fails", "2")
    contact = operator.contact(jump="vllm@10.0.0.5:22")
    assert contact.returncode == 0, contact.stderr
    assert len(operator.record("calls")) == 3
    assert contact.stdout.count("not yet: vllm@10.42.0.10: Permission denied (publickey).") == 2


def _effective(lines: list[str]) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(" ")
        settings.setdefault(name, []).append(value)
    return settings


def test_openssh_offers_the_jump_host_the_agent_and_the_host_the_stack_key_only(
    operator: Operator,
) -> None:
    """The real ssh dials: it builds the jump hop's command itself (`ssh -l -p -F -W`), whose
    stand-in records what `ssh -G` makes of it, then refuses as a jump host would."""
    real_ssh = shutil.which("ssh")
    if real_ssh is None:
        pytest.skip("no OpenSSH client here")
    operator.fake("real_ssh", real_ssh)
    jump = "ops@Bastion.Internal:2222"  # a jump's `Host` block matches the name as given
    contact = operator.contact(jump=jump, VLLM_GCP_DEADLINE_SECONDS="2")
    assert contact.returncode == 1, contact.stderr
    assert "refused your SSH agent's keys (ops@bastion.internal: Permission denied" in (
        contact.stderr
    )
    assert len(operator.record("calls")) == 1
    [hop] = operator.record("jump_calls")
    assert re.fullmatch(r"-l ops -p 2222 -F \S+/ssh_config Bastion\.Internal", hop), hop

    jump_host = _effective(operator.record("jump.G"))
    assert jump_host["user"] == ["ops"]
    assert jump_host["port"] == ["2222"]
    assert jump_host["identityfile"] == ["none"]  # no ~/.ssh/id_* file
    assert jump_host["identitiesonly"] == ["no"]  # the agent's keys
    assert jump_host["identityagent"] == ["SSH_AUTH_SOCK"]
    assert jump_host["batchmode"] == ["yes"]
    assert jump_host["connecttimeout"] == ["15"]

    target = _effective(operator.record("target.G"))
    [key_file] = target["identityfile"]  # the stack's key, no default file
    assert Path(key_file).name == "key"
    assert Path(key_file).parent.parent == operator.tmp
    assert target["identitiesonly"] == ["yes"]
    assert target["identityagent"] == ["none"]
    assert target["user"] == ["vllm"]
    assert target["hostname"] == [HOST]
    assert target["proxyjump"] == [jump]
    assert target["batchmode"] == ["yes"]
    assert list(operator.tmp.iterdir()) == []


def test_no_key_on_stdin_is_refused_before_any_dial(operator: Operator) -> None:
    contact = operator.contact(key="")
    assert contact.returncode == 1
    assert "no private key on stdin" in contact.stderr
    assert operator.record("calls") == []
    assert list(operator.tmp.iterdir()) == []


def test_a_key_without_a_final_newline_gets_one(operator: Operator) -> None:
    contact = operator.contact(key=MOCK_SSH_PRIVATE_KEY.rstrip("\n"))
    assert contact.returncode == 0, contact.stderr
    assert [line.split()[1] for line in operator.record("key_checks")] == ["same"]


# ------------------------------------------------------------------------------------------------
# Static checks: it must run on macOS's bash 3.2 as well as on Linux


def test_the_script_passes_bash_n_and_shellcheck() -> None:
    assert_shell_clean(first_contact_script(HOST, "vllm", JUMP))


def test_the_script_uses_nothing_bash_3_2_lacks() -> None:
    code = [
        line
        for line in (COMPONENTS_DIR / "first_contact.sh").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    for construct, pattern in BASH4_ONLY.items():
        found = [line for line in code if re.search(pattern, line)]
        assert found == [], f"{construct}: {found}"


@pytest.mark.parametrize(
    ("host", "user", "jump"),
    [
        ("10.0.0.1'; reboot; '", "vllm", JUMP),
        (HOST, "Vllm$(id)", JUMP),
        (HOST, "vllm", "ops@bastion -o ProxyCommand=x"),
    ],
)
def test_values_that_could_change_its_meaning_are_refused(host: str, user: str, jump: str) -> None:
    with pytest.raises(ValueError, match="first contact"):
        first_contact_script(host, user, jump)
