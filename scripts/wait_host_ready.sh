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

# vllm-gcp:include host_lib.sh

readonly ROOT="${VLLM_GCP_ROOT:-}"
readonly READY_MARKER="${ROOT}"{{ shell:READY_MARKER }}
readonly STARTUP_FAILED_MARKER="${ROOT}"{{ shell:STARTUP_FAILED_MARKER }}
readonly REBOOTING_MARKER="${ROOT}"{{ shell:REBOOTING_MARKER }}
readonly STARTUP_LOG="${ROOT}"{{ shell:STARTUP_LOG }}
readonly DEFAULT_TIMEOUT_SECONDS={{ shell:TIMEOUT_SECONDS }}
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
