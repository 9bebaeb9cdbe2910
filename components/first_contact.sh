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
# the output. The jump host authenticates the operator as for the remote steps: the SSH agent
# (SSH_AUTH_SOCK) or the operator's default keys. Its host key is checked against the operator's
# known_hosts (a new one is learnt, a changed one refused); the GPU host's is not checked (a new VM,
# as pulumi-command does not check it either).
#
# Portable: macOS's bash 3.2 and Linux's bash; no GNU timeout (each attempt is bounded here).
# For tests: VLLM_GCP_{DEADLINE,ATTEMPT,RETRY}_SECONDS override the waits.
set -euo pipefail
umask 077

readonly TARGET_HOST='{{ HOST }}'
readonly TARGET_USER='{{ USER }}'
readonly TARGET_PORT='{{ PORT }}'
readonly JUMP_HOST='{{ JUMP_HOST }}'
readonly DEFAULT_DEADLINE_SECONDS='{{ DEADLINE_SECONDS }}'
readonly DEADLINE_SECONDS="${VLLM_GCP_DEADLINE_SECONDS:-$DEFAULT_DEADLINE_SECONDS}"
# One attempt: the TCP connects (jump host, then host through it) and the handshake.
readonly ATTEMPT_SECONDS="${VLLM_GCP_ATTEMPT_SECONDS:-45}"
readonly CONNECT_TIMEOUT_SECONDS=15
readonly RETRY_SECONDS="${VLLM_GCP_RETRY_SECONDS:-5}"
readonly TARGET="${TARGET_USER}@${TARGET_HOST}"

work_dir=""
ssh_pid=""
key_file=""
config_file=""
attempt_log=""

log() {
  printf '[first contact] %s\n' "$*"
}

fail() {
  printf '[first contact] %s\n' "$*" >&2
  exit 1
}

cleanup() {
  if [ -n "$ssh_pid" ]; then
    kill -TERM "$ssh_pid" 2>/dev/null || true
  fi
  if [ -n "$work_dir" ]; then
    rm -rf -- "$work_dir"
  fi
}

prepare() {
  command -v ssh >/dev/null 2>&1 ||
    fail "no ssh on PATH: reaching ${TARGET} through the jump host ${JUMP_HOST} needs an OpenSSH client"
  work_dir="$(mktemp -d "${TMPDIR:-/tmp}/vllm-gcp-first-contact.XXXXXXXX")"
  key_file="${work_dir}/key"
  config_file="${work_dir}/ssh_config"
  attempt_log="${work_dir}/attempt.log"
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
  # ssh passes -F on to the ssh it runs for the jump host (-J): these settings hold for both
  # hops, the command-line options below for the host only. No prompt, no shared connection,
  # bounded connects; the operator's own ssh_config is not read (pulumi-command reads none).
  cat >"$config_file" <<EOF
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
attempt() {
  local watchdog status=0
  ssh -F "$config_file" -J "$JUMP_HOST" -p "$TARGET_PORT" -l "$TARGET_USER" -i "$key_file" \
    -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR -n -T "$TARGET_HOST" true \
    </dev/null >"$attempt_log" 2>&1 &
  ssh_pid=$!
  # The per-attempt limit, without GNU timeout: a watchdog that stops ssh if it is still running.
  # Its sleeps run in the background so that its TERM trap (ssh ended first) acts at once.
  (
    sleeper=""
    trap 'if [ -n "$sleeper" ]; then kill "$sleeper" 2>/dev/null; fi; exit 0' TERM
    sleep "$ATTEMPT_SECONDS" &
    sleeper=$!
    wait "$sleeper"
    kill -TERM "$ssh_pid" 2>/dev/null
    sleep 2 &
    sleeper=$!
    wait "$sleeper"
    kill -KILL "$ssh_pid" 2>/dev/null
  ) </dev/null >/dev/null 2>&1 &
  watchdog=$!
  wait "$ssh_pid" || status=$?
  ssh_pid=""
  kill -TERM "$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
  return "$status"
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
  local attempts=0 status last=""
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
    if [ "$SECONDS" -ge "$DEADLINE_SECONDS" ]; then
      fail "gave up after ${SECONDS} s and ${attempts} attempts: ${TARGET} did not accept the stack's key through the jump host ${JUMP_HOST}. Last ssh error: ${last}. Check that your SSH agent holds a key the jump host accepts (ssh-add -l), that the jump host reaches ${TARGET_HOST} on port ${TARGET_PORT} (firewall, access.sshCidrs), and the VM's serial console (guest agent, sshd)."
    fi
    log "attempt ${attempts} (${SECONDS} s of ${DEADLINE_SECONDS} s): not yet: ${last}"
    sleep "$RETRY_SECONDS"
  done
}

main "$@"
