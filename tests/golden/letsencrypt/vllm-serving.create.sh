# vllm-gcp remote step: the script below, run under GNU timeout (last line).
VLLM_GCP_STEP_SCRIPT=$(cat <<'VLLM_GCP_STEP_SCRIPT_END'
#!/usr/bin/env bash
# Remote step 4 of the vLLM server (components/vllm_server.py): wait until vLLM lists the served
# model on /v1/models (a first start downloads the weights: up to an hour), printing the
# container's latest log line every half minute; fail with its log if it keeps exiting. Once it
# serves, mark this configuration's weights as cached, so later restarts run offline.
#
# The API key goes to curl as a header file read through sudo, never as an argument.
# Journal lines holding the key or the token are left out of everything printed here.
# Runs as the SSH user, under the step's time limit (components/remote_access.py); each request
# to vLLM has its own (curl --max-time). For tests, VLLM_GCP_ROOT prefixes every host path and
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
readonly SERVICE_NAME='vllm.service'
readonly MODELS_URL='http://127.0.0.1:8000/v1/models'
readonly SERVED_MODEL_NAME='mistralai/Mistral-Small-3.2-24B-Instruct-2506'
readonly SECRETS_ENV_FILE="${ROOT}"'/etc/vllm-gcp/secrets.env'
readonly OFFLINE_MARKER='/var/lib/vllm-cache/vllm-gcp/served-8829b259ea0a1ab7.env'
readonly DEFAULT_TIMEOUT_SECONDS='3600'
readonly TIMEOUT_SECONDS="${VLLM_GCP_TIMEOUT_SECONDS:-$DEFAULT_TIMEOUT_SECONDS}"
readonly POLL_SECONDS="${VLLM_GCP_POLL_SECONDS:-5}"
readonly PROGRESS_SECONDS="${VLLM_GCP_PROGRESS_SECONDS:-30}"
# Exits tolerated while waiting (a dropped download resumes after a restart); more is a loop.
readonly MAX_EXITS=2
readonly LOG_LINES=50

authorization_header() {
  sudo -n sed -n 's/^VLLM_API_KEY=/Authorization: Bearer /p' "$SECRETS_ENV_FILE"
}

serves_model() {
  local body
  body="$(curl --fail --silent --show-error --connect-timeout 5 --max-time 10 \
    --header @<(authorization_header) "$MODELS_URL" 2>/dev/null)" || return 1
  # vLLM answers compact JSON: {"object":"list","data":[{"id":"<served name>",...}]}
  [[ $body == *"\"id\":\"${SERVED_MODEL_NAME}\""* ]]
}

service_state() {
  systemctl is-active "$SERVICE_NAME" || true
}

exit_count() {
  local restarts
  restarts="$(systemctl show --property NRestarts --value "$SERVICE_NAME" || true)"
  printf '%s\n' "${restarts:-0}"
}

latest_log_line() {
  # Download progress bars end lines with carriage returns: keep the last update only.
  sudo -n journalctl --unit "$SERVICE_NAME" --lines 1 --no-pager --output cat 2>/dev/null |
    tr '\r' '\n' | without_secrets "$SECRETS_ENV_FILE" | sed '/^[[:space:]]*$/d' | tail -n 1 | cut -c 1-240 || true
}

fail_with_log() {
  {
    log "$1"
    log "last ${LOG_LINES} lines of the ${SERVICE_NAME} journal (lines holding a secret left out):"
    sudo -n journalctl --unit "$SERVICE_NAME" --lines "$LOG_LINES" --no-pager --output cat |
      without_secrets "$SECRETS_ENV_FILE" || true
  } >&2
  exit 1
}

mark_weights_cached() {
  local marker staged
  if [[ -z $OFFLINE_MARKER ]]; then
    return 0
  fi
  marker="${ROOT}${OFFLINE_MARKER}"
  staged="$(sudo -n mktemp "${marker}.XXXXXX")"
  printf 'HF_HUB_OFFLINE=1\n' | sudo -n tee "$staged" >/dev/null
  sudo -n chmod 0644 "$staged"
  sudo -n mv -f "$staged" "$marker"
  log "weights cached: restarts of this configuration run with HF_HUB_OFFLINE=1"
}

wait_until_serving() {
  local baseline exits state last_progress=-1
  doing "waiting for vLLM to list ${SERVED_MODEL_NAME} on ${MODELS_URL} (a first start downloads the weights)"
  baseline="$(exit_count)"
  until serves_model; do
    state="$(service_state)"
    case "$state" in
      failed | inactive)
        fail_with_log "${SERVICE_NAME} is ${state} after ${SECONDS}s: the container stopped"
        ;;
    esac
    exits=$(($(exit_count) - baseline))
    if ((exits >= MAX_EXITS)); then
      fail_with_log "the container exited ${exits} times in ${SECONDS}s; it is not going to start"
    fi
    if ((SECONDS >= TIMEOUT_SECONDS)); then
      fail_with_log "${SERVED_MODEL_NAME} not served after ${SECONDS}s"
    fi
    if ((last_progress < 0 || SECONDS - last_progress >= PROGRESS_SECONDS)); then
      log "waiting for ${SERVED_MODEL_NAME} (${SECONDS}s, ${state}): $(latest_log_line)"
      last_progress=$SECONDS
    fi
    sleep "$POLL_SECONDS"
  done
  log "vLLM serves ${SERVED_MODEL_NAME} after ${SECONDS}s"
  mark_weights_cached
}

step_begin "serving"
wait_until_serving
VLLM_GCP_STEP_SCRIPT_END
) && exec timeout --kill-after=20 3840 env VLLM_GCP_STEP_LIMIT_SECONDS=3840 bash -c "$VLLM_GCP_STEP_SCRIPT"
