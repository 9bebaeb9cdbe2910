# vllm-gcp remote step: the script below, run under GNU timeout (last line).
VLLM_GCP_STEP_SCRIPT=$(cat <<'VLLM_GCP_STEP_SCRIPT_END'
#!/usr/bin/env bash
# Remote step 3 of the vLLM server (components/vllm_server.py): pull the image, install the
# systemd unit read from stdin and (re)start the container with it. Re-run on every change of
# the model settings, the image or the secrets; each run restarts the container once.
# Journal lines holding the key or the token are left out of everything printed here.
#
# Runs as the SSH user, acting through sudo, under the step's time limit
# (components/remote_access.py); the login, the pull and the restart have limits of their own.
# For tests, VLLM_GCP_ROOT prefixes every host path.
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
readonly IMAGE='vllm/vllm-openai:v0.32.0'
readonly SERVICE_NAME='vllm.service'
readonly UNIT_FILE="${ROOT}/etc/systemd/system/${SERVICE_NAME}"
readonly CACHE_DIRS=('/var/lib/vllm-cache/huggingface' '/var/lib/vllm-cache/vllm' '/var/lib/vllm-cache/vllm-gcp')
# Its values (the API key, the token) are filtered out of the journal lines printed here.
readonly SECRETS_ENV_FILE="${ROOT}"'/etc/vllm-gcp/secrets.env'
# Set where the image comes through Artifact Registry, whose login helper the startup script
# installed (scripts/registry_login.sh).
readonly REGISTRY_HOST=''
readonly REGISTRY_LOGIN="${ROOT}"'/usr/local/libexec/vllm-gcp/registry-login'
# scripts/drain_vllm.sh, the unit's first ExecStop: installed here, with the unit that calls it.
readonly DRAIN_HELPER="${ROOT}"'/usr/local/libexec/vllm-gcp/drain-vllm'
# A prepared image names the vLLM image it holds (vllm-gcp image build).
readonly PREPARED_IMAGE_MARKER="${ROOT}"'/usr/lib/vllm-gcp/prepared-image.env'
readonly LOG_LINES=50
# The login's token request and docker login are bounded inside it too.
readonly REGISTRY_LOGIN_SECONDS=300
# A first pull of a ~12 GB vLLM image.
readonly PULL_SECONDS=1800
# The unit's TimeoutStopSec (the drain of the answers in flight, then docker stop), its
# TimeoutStartSec (40 min: the start gate, a pull, a copy of the weights) and a minute: systemd
# gives up first, with its reason in the journal printed below.
readonly RESTART_SECONDS='2850'

STAGED_UNIT="$(mktemp)"
readonly STAGED_UNIT
trap 'rm -f -- "$STAGED_UNIT"' EXIT

read_unit() {
  doing "reading the systemd unit from stdin"
  cat >"$STAGED_UNIT"
  if ! grep -q '^ExecStart=' "$STAGED_UNIT"; then
    fail "stdin held no systemd unit with an ExecStart line"
  fi
}

prepare_cache() {
  local dir
  doing "preparing the caches"
  # Root only: vLLM releases before PR #52523 wrote VLLM_API_KEY into the compile cache's
  # cache_key_factors.json. install -d also tightens a directory that exists already.
  for dir in "${CACHE_DIRS[@]}"; do
    sudo -n install -d -m 0700 "${ROOT}${dir}"
  done
  log "caches ready (root only): ${CACHE_DIRS[*]}"
}

log_in_to_registry() {
  if [[ -z $REGISTRY_HOST ]]; then
    return 0
  fi
  bounded --root "$REGISTRY_LOGIN_SECONDS" "logging Docker in to ${REGISTRY_HOST}" \
    "$REGISTRY_LOGIN" "$REGISTRY_HOST"
}

report_baked_image() {
  local baked
  if [[ ! -f $PREPARED_IMAGE_MARKER ]]; then
    return 0
  fi
  baked="$(sed -n 's/^VLLM_IMAGE=//p' "$PREPARED_IMAGE_MARKER" | head -n 1)"
  if [[ -z $baked ]]; then
    return 0
  fi
  if [[ $baked == "$IMAGE" ]]; then
    log "${IMAGE} is the image the prepared host image holds: nothing to download"
  else
    log "the prepared host image holds ${baked}, not ${IMAGE}: pulling ${IMAGE} (only its missing layers)"
  fi
}

pull_image() {
  # Pulled here, not only by the unit, so a wrong reference fails this step with Docker's
  # message instead of a restart loop.
  report_baked_image
  log "pulling ${IMAGE} (a first pull of a vLLM image takes minutes)"
  bounded --root "$PULL_SECONDS" "pulling ${IMAGE}" docker pull "$IMAGE"
}

install_drain_helper() {
  local staged
  doing "installing ${DRAIN_HELPER}"
  staged="$(mktemp)"
  cat >"$staged" <<'VLLM_GCP_DRAIN_HELPER'
#!/usr/bin/env bash
# vllm-gcp drain: the first ExecStop of vllm.service (scripts/vllm.service), so it runs on
# `systemctl stop`/`restart`, on a shutdown (an autoscaler's scale-in, a group's update, a VM
# deletion) and before `docker stop`. Installed by the run step (scripts/install_vllm.sh).
#
#   drain-vllm MARKER METRICS_URL SETTLE_SECONDS LIMIT_SECONDS POLL_SECONDS
#
# 1. Writes MARKER: Nginx then refuses new API requests (single VM) or fails the load balancer's
#    health route, so the load balancer sends this replica nothing new (fleet).
# 2. Waits until vLLM has no request running or waiting (vllm:num_requests_running and
#    vllm:num_requests_waiting on its loopback /metrics, every POLL_SECONDS) and SETTLE_SECONDS
#    have passed (the load balancer's health check needs that long to see the failure, and
#    sends requests until then), or until LIMIT_SECONDS, whichever comes first.
# 3. Exits 0 whatever happened: the unit's next ExecStop stops the container. vLLM not
#    answering means there is nothing left to finish.
#
# Lines go to stderr, which systemd puts in the unit's journal. No secret passes through here:
# /metrics answers without the API key.
set -euo pipefail

readonly LOG_TAG="vllm-gcp-drain"
readonly REQUEST_SECONDS=5

log() {
  printf '%s: %s\n' "$LOG_TAG" "$*" >&2
}

# Requests in flight (running plus waiting, over every series), from the Prometheus text on
# stdin; nothing when neither metric is there. Labels go first: a label value may hold a space.
in_flight() {
  awk '
    /^vllm:num_requests_(running|waiting)[{ ]/ {
      line = $0
      sub(/\{.*\}/, "", line)
      split(line, field, " ")
      total += field[2]
      seen = 1
    }
    END { if (seen) printf "%d\n", total }'
}

main() {
  if (($# != 5)); then
    log "usage: drain-vllm MARKER METRICS_URL SETTLE_SECONDS LIMIT_SECONDS POLL_SECONDS"
    exit 2
  fi
  local marker=$1 url=$2 settle=$3 limit=$4 poll=$5 metrics count
  mkdir -p -- "$(dirname -- "$marker")"
  : >"$marker"
  log "draining: new requests are refused from now on (${marker}); waiting up to ${limit} s for the ones in flight"
  while :; do
    if ! metrics="$(curl -fsS --max-time "$REQUEST_SECONDS" "$url" 2>/dev/null)"; then
      log "vLLM does not answer on ${url}: nothing left to finish"
      return 0
    fi
    count="$(in_flight <<<"$metrics")"
    if [[ -z $count ]]; then
      log "${url} has no vllm:num_requests_running or vllm:num_requests_waiting: not waiting"
      return 0
    fi
    if ((count == 0 && SECONDS >= settle)); then
      log "drained after ${SECONDS} s: no request running or waiting"
      return 0
    fi
    if ((SECONDS >= limit)); then
      log "drain limit of ${limit} s reached with ${count} request(s) in flight: stopping anyway"
      return 0
    fi
    sleep "$poll"
  done
}

main "$@"
# --- end of drain_vllm.sh
VLLM_GCP_DRAIN_HELPER
  sudo -n install -d -m 0755 "$(dirname "$DRAIN_HELPER")"
  sudo -n install -m 0755 "$staged" "$DRAIN_HELPER"
  rm -f -- "$staged"
  log "installed ${DRAIN_HELPER}"
}

install_unit() {
  doing "installing ${UNIT_FILE}"
  sudo -n install -m 0644 "$STAGED_UNIT" "${UNIT_FILE}.new"
  sudo -n mv -f "${UNIT_FILE}.new" "$UNIT_FILE"
  sudo -n systemctl daemon-reload
  sudo -n systemctl enable --quiet "$SERVICE_NAME"
  log "installed ${UNIT_FILE}"
}

restart_service() {
  log "restarting ${SERVICE_NAME}"
  if ! bounded --root "$RESTART_SECONDS" \
    "restarting ${SERVICE_NAME} (its start gate, a pull of a missing image, a copy of the weights)" \
    systemctl restart "$SERVICE_NAME"; then
    {
      log "${SERVICE_NAME} did not start; last ${LOG_LINES} lines of its journal (lines holding a secret left out):"
      sudo -n journalctl --unit "$SERVICE_NAME" --lines "$LOG_LINES" --no-pager --output cat |
        without_secrets "$SECRETS_ENV_FILE" || true
    } >&2
    exit 1
  fi
  log "${SERVICE_NAME} started; the next step waits until it serves"
}

step_begin "run vllm"
read_unit
prepare_cache
log_in_to_registry
pull_image
install_drain_helper
install_unit
restart_service
VLLM_GCP_STEP_SCRIPT_END
) && exec timeout --kill-after=20 4740 env VLLM_GCP_STEP_LIMIT_SECONDS=4740 bash -c "$VLLM_GCP_STEP_SCRIPT"
