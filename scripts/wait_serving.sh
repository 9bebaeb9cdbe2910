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

# vllm-gcp:include host_lib.sh

readonly ROOT="${VLLM_GCP_ROOT:-}"
readonly SERVICE_NAME={{ shell:SERVICE_NAME }}
readonly MODELS_URL={{ shell:MODELS_URL }}
readonly SERVED_MODEL_NAME={{ shell:SERVED_MODEL_NAME }}
readonly SECRETS_ENV_FILE="${ROOT}"{{ shell:SECRETS_ENV_FILE }}
readonly OFFLINE_MARKER={{ shell:OFFLINE_MARKER }}
readonly DEFAULT_TIMEOUT_SECONDS={{ shell:TIMEOUT_SECONDS }}
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
