#!/usr/bin/env bash
# Remote step 1 of the vLLM server (components/vllm_server.py): wait until the startup script
# has prepared the host (drivers, Docker, GPU check, model cache), printing progress so the
# deploy shows life, and fail at once with the startup log if the startup script failed.
#
# Runs as the SSH user and reads root-owned state through sudo. For tests, VLLM_GCP_ROOT
# prefixes every host path and VLLM_GCP_{POLL,PROGRESS,TIMEOUT}_SECONDS shorten the waits.
set -euo pipefail

readonly ROOT="${VLLM_GCP_ROOT:-}"
readonly READY_MARKER="${ROOT}"'{{ READY_MARKER }}'
readonly STARTUP_FAILED_MARKER="${ROOT}"'{{ STARTUP_FAILED_MARKER }}'
readonly STARTUP_LOG="${ROOT}"'{{ STARTUP_LOG }}'
readonly DEFAULT_TIMEOUT_SECONDS='{{ TIMEOUT_SECONDS }}'
readonly TIMEOUT_SECONDS="${VLLM_GCP_TIMEOUT_SECONDS:-$DEFAULT_TIMEOUT_SECONDS}"
readonly POLL_SECONDS="${VLLM_GCP_POLL_SECONDS:-5}"
readonly PROGRESS_SECONDS="${VLLM_GCP_PROGRESS_SECONDS:-30}"
readonly LOG_LINES=30

log() {
  printf '[host ready] %s\n' "$*"
}

exists_as_root() {
  sudo -n test -f "$1"
}

print_startup_log() {
  log "last ${LOG_LINES} lines of ${STARTUP_LOG}:"
  sudo -n tail -n "$LOG_LINES" "$STARTUP_LOG" || log "(no log at ${STARTUP_LOG})"
}

fail_startup() {
  local reason
  reason="$(sudo -n cat "$STARTUP_FAILED_MARKER" 2>/dev/null || true)"
  {
    log "the startup script failed after ${SECONDS}s: ${reason:-no reason recorded}"
    print_startup_log
  } >&2
  exit 1
}

fail_timeout() {
  {
    log "gave up after ${SECONDS}s: ${READY_MARKER} never appeared"
    print_startup_log
  } >&2
  exit 1
}

wait_for_host() {
  local last_progress=-1
  until exists_as_root "$READY_MARKER"; do
    if exists_as_root "$STARTUP_FAILED_MARKER"; then
      fail_startup
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

wait_for_host
