# vllm-gcp remote step: the script below, run under GNU timeout (last line).
VLLM_GCP_STEP_SCRIPT=$(cat <<'VLLM_GCP_STEP_SCRIPT_END'
#!/usr/bin/env bash
# Remote step 1 of the vLLM server (components/vllm_server.py): wait until the startup script
# has prepared the host (drivers, Docker, GPU check, model cache), printing progress so the
# deploy shows life. If the startup script failed, run it once more (a transient failure, such
# as IAM grants still propagating, then passes on this `pulumi up`), and fail with its log if it
# fails again. A driver install reboots the host, which ends this SSH session: say so first.
#
# Runs as the SSH user and reads root-owned state through sudo, under the step's time limit
# (components/remote_access.py). For tests, VLLM_GCP_ROOT prefixes every host path and
# VLLM_GCP_{POLL,PROGRESS,TIMEOUT}_SECONDS shorten the waits.
set -euo pipefail

# shellcheck shell=bash
# vllm-gcp host library: the pieces every host script shares. Not run on its own: the renderer
# (components/render.py) puts this file in place of a script's "# vllm-gcp:include host_lib.sh"
# line, so each script the host receives is complete in itself.
#
#   step_begin NAME [stderr]  names the step in every line it prints ("[NAME] ..."), on stdout
#                             (or stderr), and installs the time-limit trap (TERM, HUP).
#   log MESSAGE...            "[NAME] MESSAGE".
#   fail MESSAGE...           "[NAME] MESSAGE" on stderr, then exit 1.
#   doing WHAT                names what the step is doing now (a wait, a phase): the trap's message.
#   bounded [--root] [--output FILE] SECONDS WHAT COMMAND [ARGS...]
#                             runs COMMAND (a program, not a shell function) under its own time
#                             limit with GNU timeout; when the limit hits it prints "[NAME] timed out
#                             after SECONDS s: WHAT" and returns 124. --root: through `sudo -n`, with
#                             timeout inside sudo so the limit reaches the command's own children.
#                             --output: COMMAND's stdout and stderr appended to FILE. stdin passes on.
#   without_secrets ENV_FILE  a filter: stdin less every line that holds a value of ENV_FILE (an
#                             env file read as root, into a pipe, never into an argument).
#   bounded_capture VAR SECONDS WHAT COMMAND [ARGS...]
#                             the same, COMMAND's stdout into the variable VAR (never for secrets: it
#                             passes through a temporary file).
#
# The step's overall limit: host_step (components/remote_access.py) runs each remote step's script
# under `timeout` with VLLM_GCP_STEP_LIMIT_SECONDS set. pulumi-command never stops a command running
# on the host (custom_timeouts bound only its dialing), so this is what ends a hung step. At the
# limit `timeout` sends TERM; the trap stops the operation in flight and prints "[NAME] timed out
# after N s (this step's time limit): WHAT". A script may define `on_stop SIGNAL` to act first (it
# may exit: wait_host_ready.sh explains a reboot that way).
#
# Call `bounded` from the script's own shell, not inside $(...) or a pipeline: an operation run in a
# subshell escapes the trap (use bounded_capture for output).
# For tests: VLLM_GCP_OPERATION_LIMIT_SECONDS caps every operation's limit.

_step_name="vllm-gcp"
_log_fd=1
_operation="running the step's script"
_bounded_pid=""
# After the TERM at an operation's limit, what it gets to exit before KILL.
readonly _BOUNDED_KILL_AFTER_SECONDS=10

step_begin() {
  _step_name=$1
  if [[ ${2:-} == stderr ]]; then
    _log_fd=2
  fi
  trap '_step_stopped TERM 15' TERM
  trap '_step_stopped HUP 1' HUP
}

log() {
  printf '[%s] %s\n' "$_step_name" "$*" >&"$_log_fd"
}

fail() {
  log "$@" >&2
  exit 1
}

doing() {
  _operation="$*"
}

bounded() {
  local as_root=false output="" seconds what status=0 outer=$_operation
  while [[ $1 == --* ]]; do
    case "$1" in
      --root) as_root=true ;;
      --output)
        output=$2
        shift
        ;;
      *) fail "bounded: unknown option $1" ;;
    esac
    shift
  done
  seconds=$1
  what=$2
  shift 2
  local cap=${VLLM_GCP_OPERATION_LIMIT_SECONDS:-}
  if [[ $cap =~ ^[0-9]+$ ]] && ((cap < seconds)); then
    seconds=$cap
  fi
  local runner=(timeout --kill-after="$_BOUNDED_KILL_AFTER_SECONDS" "$seconds")
  if $as_root; then
    runner=(sudo -n "${runner[@]}")
  fi
  _operation="${what} (its own limit: ${seconds} s)"
  # In the background so that `wait` returns at once when the step's limit hits (the trap then
  # runs); an explicit redirection keeps stdin, which a background command would otherwise lose.
  if [[ -n $output ]]; then
    "${runner[@]}" "$@" <&0 >>"$output" 2>&1 &
  else
    "${runner[@]}" "$@" <&0 &
  fi
  _bounded_pid=$!
  wait "$_bounded_pid" || status=$?
  _bounded_pid=""
  _operation=$outer
  # 124: the limit hit; 137: the command ignored the TERM and was killed.
  if ((status == 124 || status == 137)); then
    log "timed out after ${seconds} s: ${what}" >&2
    return 124
  fi
  return "$status"
}

bounded_capture() {
  local variable=$1 captured status=0
  shift
  captured=$(mktemp)
  bounded "$@" >"$captured" || status=$?
  printf -v "$variable" '%s' "$(cat "$captured")"
  rm -f -- "$captured"
  return "$status"
}

_secret_values() {
  # The env file's non-empty values, one a line.
  sudo -n sed -n 's/^[A-Za-z_][A-Za-z0-9_]*=\(..*\)$/\1/p' "$1" 2>/dev/null || true
}

without_secrets() {
  # vLLM before PR #52523 could print the key in its "non-default args" line: drop such lines.
  grep --fixed-strings --invert-match --file=<(_secret_values "$1") || true
}

_step_stopped() {
  local signal=$1 number=$2 limit=${VLLM_GCP_STEP_LIMIT_SECONDS:-} status
  # Ignored, not reset to the default: `timeout` sends its TERM twice (to the script, then to
  # its process group: coreutils src/timeout.c, cleanup), and the second one under the default
  # action would end the script here, before it stops the operation in flight or says why.
  trap '' TERM HUP
  if [[ -n $_bounded_pid ]]; then
    kill -TERM "$_bounded_pid" 2>/dev/null || true
  fi
  if declare -F on_stop >/dev/null; then
    on_stop "$signal"
  fi
  if [[ $signal == TERM && $limit =~ ^[0-9]+$ ]] && ((SECONDS + 2 >= limit)); then
    log "timed out after ${limit} s (this step's time limit): ${_operation}" >&2
    status=124
  else
    log "stopped by SIG${signal} after ${SECONDS} s: ${_operation}" >&2
    status=$((128 + number))
  fi
  if [[ -n $_bounded_pid ]]; then
    wait "$_bounded_pid" 2>/dev/null || true
  fi
  exit "$status"
}
# --- end of host_lib.sh

readonly ROOT="${VLLM_GCP_ROOT:-}"
readonly READY_MARKER="${ROOT}"'/var/lib/vllm-gcp/host-ready'
readonly STARTUP_FAILED_MARKER="${ROOT}"'/var/lib/vllm-gcp/startup-failed'
readonly REBOOTING_MARKER="${ROOT}"'/var/lib/vllm-gcp/rebooting'
readonly STARTUP_LOG="${ROOT}"'/var/log/vllm-gcp-startup.log'
readonly DEFAULT_TIMEOUT_SECONDS='1680'
readonly TIMEOUT_SECONDS="${VLLM_GCP_TIMEOUT_SECONDS:-$DEFAULT_TIMEOUT_SECONDS}"
readonly POLL_SECONDS="${VLLM_GCP_POLL_SECONDS:-5}"
readonly PROGRESS_SECONDS="${VLLM_GCP_PROGRESS_SECONDS:-30}"
readonly LOG_LINES=30
# A rerun of the startup script: a driver install and apt's retries take minutes.
readonly RERUN_SECONDS=1200
readonly REBOOTING_MESSAGE="host rebooting to load the NVIDIA driver; run pulumi up again"

exists_as_root() {
  sudo -n test -f "$1"
}

print_startup_log() {
  log "last ${LOG_LINES} lines of ${STARTUP_LOG}:"
  sudo -n tail -n "$LOG_LINES" "$STARTUP_LOG" || log "(no log at ${STARTUP_LOG})"
}

failure_reason() {
  local reason
  reason="$(sudo -n cat "$STARTUP_FAILED_MARKER" 2>/dev/null || true)"
  printf '%s\n' "${reason:-no reason recorded}"
}

fail_startup() {
  {
    log "the startup script failed again after ${SECONDS}s: $(failure_reason)"
    print_startup_log
  } >&2
  exit 1
}

rerun_startup() {
  log "the startup script failed: $(failure_reason)"
  log "running it once more (google_metadata_script_runner startup)"
  # It clears the markers first and writes one of them again; its own status says nothing more.
  bounded --root "$RERUN_SECONDS" "running the startup script once more" \
    google_metadata_script_runner startup || true
}

fail_timeout() {
  {
    log "gave up after ${SECONDS}s: ${READY_MARKER} never appeared"
    print_startup_log
  } >&2
  exit 1
}

# Called by the library's trap on TERM or HUP. The reboot stops this session: explain the lost
# connection, if anything still reads us.
on_stop() {
  if exists_as_root "$REBOOTING_MARKER"; then
    log "$REBOOTING_MESSAGE" >&2
    exit 1
  fi
}

wait_for_host() {
  local last_progress=-1 reran=false warned_reboot=false
  doing "waiting for ${READY_MARKER} (the startup script: drivers, Docker, GPU check, cache)"
  until exists_as_root "$READY_MARKER"; do
    if exists_as_root "$STARTUP_FAILED_MARKER"; then
      if $reran; then
        fail_startup
      fi
      reran=true
      rerun_startup
      continue
    fi
    if ! $warned_reboot && exists_as_root "$REBOOTING_MARKER"; then
      log "${REBOOTING_MESSAGE} if this step ends with a lost connection"
      warned_reboot=true
    fi
    if ((SECONDS >= TIMEOUT_SECONDS)); then
      fail_timeout
    fi
    if ((last_progress < 0 || SECONDS - last_progress >= PROGRESS_SECONDS)); then
      log "waiting for the startup script (drivers, Docker, GPU check, cache): ${SECONDS}s elapsed, for ${READY_MARKER}"
      last_progress=$SECONDS
    fi
    sleep "$POLL_SECONDS"
  done
  log "host ready after ${SECONDS}s"
}

step_begin "host ready"
wait_for_host
VLLM_GCP_STEP_SCRIPT_END
) && exec timeout --kill-after=20 1740 env VLLM_GCP_STEP_LIMIT_SECONDS=1740 bash -c "$VLLM_GCP_STEP_SCRIPT"
