#!/usr/bin/env bash
# First contact with a host reached through a jump host (network.sshJumpHost): run on the
# operator's machine, by the local command components/remote_access.py `first_contact` adds
# before the first remote step, with the system's OpenSSH client.
#
# Why: through a proxy, pulumi-command 1.2.1 dials the jump host, forwards one TCP connection to
# the host and retries the SSH handshake on that same connection (provider/pkg/provider/remote/
# connection.go, Dial and dialWithRetry). A first dial that reaches sshd before the guest agent has
# installed the stack's key from metadata fails its authentication, the host closes the
# connection, and every retry then spins on the closed connection until the step's timeout. Here
# every attempt is a new `ssh -J` process (TCP to the jump host, a new forwarded connection, a new
# handshake), repeated until the host accepts the stack's key or the deadline passes; the remote
# steps then dial a host that is ready for them.
#
# stdin: the stack's private key (OpenSSH format). It is written to a file of mode 0600 in a
# private temporary directory removed on exit: never on a command line, in the environment or in
# the output; the GPU host is offered that key only (IdentitiesOnly, no agent).
#
# The jump host is offered the operator's SSH agent's keys (SSH_AUTH_SOCK) and nothing else, as the
# remote steps offer it: pulumi-command's proxy has no key in this program and adds agent signers
# only (connection.go SSHConfig), so a jump host that takes only a default key file (~/.ssh/id_*)
# would pass here and then fail every remote step. Hence: no agent, or an agent without keys, stops
# before any dial; the jump hop reads `IdentityFile none` (no default key files, the agent still
# used); and the jump host refusing the agent's keys stops at once (waiting will not change them),
# while the GPU host refusing the stack's key is retried (the guest agent installs it after boot).
# The jump host's host key is checked against the operator's known_hosts (a new one is learnt, a
# changed one refused); the GPU host's is not checked (a new VM, as pulumi-command does not check
# it either).
#
# Portable: macOS's bash 3.2 and Linux's bash; no GNU timeout (each command is bounded here).
# For tests: VLLM_GCP_{DEADLINE,ATTEMPT,RETRY,AGENT}_SECONDS override the waits.
set -euo pipefail
umask 077

readonly TARGET_HOST={{ shell:HOST }}
readonly TARGET_USER={{ shell:USER }}
readonly TARGET_PORT={{ shell:PORT }}
readonly JUMP_HOST={{ shell:JUMP_HOST }}
readonly DEFAULT_DEADLINE_SECONDS={{ shell:DEADLINE_SECONDS }}
readonly DEADLINE_SECONDS="${VLLM_GCP_DEADLINE_SECONDS:-$DEFAULT_DEADLINE_SECONDS}"
# One attempt: the TCP connects (jump host, then host through it) and the handshake.
readonly ATTEMPT_SECONDS="${VLLM_GCP_ATTEMPT_SECONDS:-45}"
readonly CONNECT_TIMEOUT_SECONDS=15
readonly RETRY_SECONDS="${VLLM_GCP_RETRY_SECONDS:-5}"
# Listing the agent's keys: a local socket, which answers at once or not at all.
readonly AGENT_SECONDS="${VLLM_GCP_AGENT_SECONDS:-10}"
readonly TARGET="${TARGET_USER}@${TARGET_HOST}"
# user@host[:port] (components/remote_access.py checks the form). The jump's ssh matches `Host`
# against the name as given; it names the jump host `user@host` in its errors, the name lowercased
# ("ops@bastion.internal: Permission denied (publickey).").
readonly JUMP_USER="${JUMP_HOST%%@*}"
JUMP_NAME="${JUMP_HOST#*@}"
readonly JUMP_NAME="${JUMP_NAME%%:*}"
JUMP_LOGIN="${JUMP_USER}@$(printf '%s' "$JUMP_NAME" | tr '[:upper:]' '[:lower:]')"
readonly JUMP_LOGIN

work_dir=""
child_pid=""
key_file=""
config_file=""
attempt_log=""
agent_log=""

log() {
  printf '[first contact] %s\n' "$*"
}

fail() {
  printf '[first contact] %s\n' "$*" >&2
  exit 1
}

cleanup() {
  if [ -n "$child_pid" ]; then
    kill -TERM "$child_pid" 2>/dev/null || true
  fi
  if [ -n "$work_dir" ]; then
    rm -rf -- "$work_dir"
  fi
}

# "$@" with no stdin, its output in the file $1, for at most $2 whole seconds: its status, or 143
# when it ran out of time. Without GNU timeout: a subshell runs the command and tells the watchdog
# its pid, then its end, through a pipe; the watchdog stops it if the limit passes first. This
# shell signals neither while it runs on: a subshell that a signal reaches before it has run a
# line of its own runs the traps it inherited (here: exit, then cleanup, which removes the key and
# the config the next command needs), and a quick command (ssh-add) can end that early.
run_bounded() {
  local output=$1 limit=$2 status=0
  shift 2
  (
    "$@" </dev/null >"$output" 2>&1 &
    printf '%s\n' "$!"
    ended=0
    wait "$!" || ended=$?
    printf 'done %s\n' "$ended"
  ) | watchdog "$limit" &
  child_pid=$!
  wait "$child_pid" || status=$?
  child_pid=""
  return "$status"
}

# The pipeline's end for run_bounded: the command's pid, then "done <status>" within $1 s, or the
# command is stopped (TERM, KILL 2 s later). Its status: the command's, or 143 when it ran out of
# time. A TERM (cleanup, when the script is stopped) stops the command too.
watchdog() {
  local pid="" line=""
  trap - EXIT INT HUP
  trap 'if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null; fi; exit 143' TERM
  IFS= read -r pid || return 1
  if IFS= read -r -t "$1" line; then
    return "${line#done }"
  fi
  kill -TERM "$pid" 2>/dev/null || true
  if ! IFS= read -r -t 2 line; then
    kill -KILL "$pid" 2>/dev/null || true
    IFS= read -r line || true
  fi
  return 143
}

# The file's last line that is not blank, without a CR.
last_line() {
  sed -e 's/\r$//' -e '/^[[:space:]]*$/d' "$1" | tail -n 1
}

# The remote steps reach the jump host with the agent's keys only: without one, stop here.
check_agent() {
  local status=0 said keys
  local advice="the remote steps reach the jump host ${JUMP_HOST} with your SSH agent's keys only (SSH_AUTH_SOCK; no key file is read for it): start an agent, run ssh-add <key> with a key the jump host accepts, then run pulumi up again"
  if [ -z "${SSH_AUTH_SOCK:-}" ]; then
    fail "no SSH agent (SSH_AUTH_SOCK is not set): ${advice}"
  fi
  command -v ssh-add >/dev/null 2>&1 ||
    fail "no ssh-add on PATH to list your SSH agent's keys: ${advice}"
  run_bounded "$agent_log" "$AGENT_SECONDS" ssh-add -l || status=$?
  said="$(last_line "$agent_log")"
  case "$status" in
    0) ;;
    1) fail "your SSH agent (SSH_AUTH_SOCK) holds no key (ssh-add -l: ${said:-status 1}): ${advice}" ;;
    143 | 137) fail "your SSH agent (SSH_AUTH_SOCK) did not list its keys within ${AGENT_SECONDS} s (ssh-add -l): ${advice}" ;;
    *) fail "your SSH agent (SSH_AUTH_SOCK) does not answer (ssh-add -l: ${said:-status ${status}}): ${advice}" ;;
  esac
  keys="$(grep -c . "$agent_log" || true)"
  log "the jump host ${JUMP_HOST} is offered your SSH agent's keys only (${keys} listed by ssh-add -l), as the remote steps offer it"
}

prepare() {
  command -v ssh >/dev/null 2>&1 ||
    fail "no ssh on PATH: reaching ${TARGET} through the jump host ${JUMP_HOST} needs an OpenSSH client"
  work_dir="$(mktemp -d "${TMPDIR:-/tmp}/vllm-gcp-first-contact.XXXXXXXX")"
  key_file="${work_dir}/key"
  config_file="${work_dir}/ssh_config"
  attempt_log="${work_dir}/attempt.log"
  agent_log="${work_dir}/agent.log"
  check_agent
  # umask 077: the file is created with mode 0600; the key goes from stdin to it, nowhere else.
  cat >"$key_file"
  chmod 0600 "$key_file"
  if [ ! -s "$key_file" ]; then
    fail "no private key on stdin"
  fi
  # OpenSSH refuses a key whose last line has no newline.
  if [ -n "$(tail -c 1 "$key_file")" ]; then
    printf '\n' >>"$key_file"
  fi
  # ssh passes -F on to the ssh it runs for the jump host (-J: `ssh -l user -p port -F file -W
  # host:port jump`), which matches `Host <jump>` and `Host *`; the command-line options of
  # attempt() hold for the GPU host only. The jump hop: the agent's keys, no key file (`none`
  # skips the default ~/.ssh/id_* files and keeps the agent). Both: no prompt, no shared
  # connection, bounded connects; the operator's own ssh_config is not read (pulumi-command
  # reads none).
  cat >"$config_file" <<EOF
Host ${JUMP_NAME}
  IdentityFile none
  IdentitiesOnly no
  IdentityAgent SSH_AUTH_SOCK
Host *
  BatchMode yes
  ConnectTimeout ${CONNECT_TIMEOUT_SECONDS}
  ServerAliveInterval 5
  ServerAliveCountMax 3
  StrictHostKeyChecking accept-new
  ControlMaster no
  ControlPath none
EOF
}

# One fresh dial: ssh's output in $attempt_log; its status, or 143 when the attempt ran out of time.
# The GPU host is offered the stack's key only: no agent, no default key files.
attempt() {
  run_bounded "$attempt_log" "$ATTEMPT_SECONDS" \
    ssh -F "$config_file" -J "$JUMP_HOST" -p "$TARGET_PORT" -l "$TARGET_USER" -i "$key_file" \
    -o IdentitiesOnly=yes -o IdentityAgent=none -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR \
    -n -T "$TARGET_HOST" true
}

# The jump host's refusal of the agent's keys, as its ssh prints it: "<jump user@host>: Permission
# denied (...)." (the GPU host's says "<user>@<its address>:"), or a disconnect for too many
# failed keys (only the jump host can say so: the GPU host is offered one key, and its address
# through the jump host reads UNKNOWN).
jump_refusal() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line%$'\r'}"
    case "$line" in
      "${JUMP_LOGIN}: Permission denied"*) ;;
      "Received disconnect from UNKNOWN "*) continue ;;
      "Received disconnect from "*": Too many authentication failures"*) ;;
      *) continue ;;
    esac
    printf '%s\n' "$line"
    return 0
  done <"$attempt_log"
  return 1
}

# The attempt's last error line that says something: when the jump host's ssh fails, ssh adds
# lines about the proxy connection closing, which say nothing of why.
last_error_line() {
  local line
  line="$(sed -e 's/\r$//' -e '/^[[:space:]]*$/d' -e '/^@/d' -e '/^kex_exchange_identification:/d' \
    -e '/^Connection closed by UNKNOWN/d' "$attempt_log" | tail -n 1)"
  if [ -z "$line" ]; then
    line="$(sed -e 's/\r$//' -e '/^[[:space:]]*$/d' "$attempt_log" | tail -n 1)"
  fi
  printf '%s\n' "$line"
}

main() {
  local attempts=0 status last="" refusal
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM HUP
  prepare
  log "dialing ${TARGET} through the jump host ${JUMP_HOST} until it accepts the stack's key (up to ${DEADLINE_SECONDS} s; a new connection each attempt)"
  while :; do
    attempts=$((attempts + 1))
    status=0
    attempt || status=$?
    if [ "$status" -eq 0 ]; then
      log "${TARGET} accepted the stack's key through ${JUMP_HOST} (attempt ${attempts}, after ${SECONDS} s)"
      return 0
    fi
    last="$(last_error_line)"
    if [ -z "$last" ]; then
      if [ "$status" -eq 143 ]; then
        last="no answer within ${ATTEMPT_SECONDS} s"
      else
        last="ssh exited with status ${status} and said nothing"
      fi
    fi
    # The host's key is not checked: only the jump host's can fail, and waiting will not help.
    if grep -q "Host key verification failed" "$attempt_log"; then
      fail "the jump host ${JUMP_HOST} does not match its key in your known_hosts (Host key verification failed): check the key, then run pulumi up again"
    fi
    # Nor will it change the keys the agent holds.
    if refusal="$(jump_refusal)"; then
      fail "the jump host ${JUMP_HOST} refused your SSH agent's keys (${refusal}): the remote steps reach it with the agent's keys only (SSH_AUTH_SOCK), as this did; run ssh-add <key> with a key ${JUMP_LOGIN} accepts (ssh-add -l lists the agent's keys), then run pulumi up again"
    fi
    if [ "$SECONDS" -ge "$DEADLINE_SECONDS" ]; then
      fail "gave up after ${SECONDS} s and ${attempts} attempts: ${TARGET} did not accept the stack's key through the jump host ${JUMP_HOST}. Last ssh error: ${last}. Check that the jump host reaches ${TARGET_HOST} on port ${TARGET_PORT} (firewall, access.sshCidrs), and the VM's serial console (guest agent, sshd)."
    fi
    log "attempt ${attempts} (${SECONDS} s of ${DEADLINE_SECONDS} s): not yet: ${last}"
    sleep "$RETRY_SECONDS"
  done
}

main "$@"
