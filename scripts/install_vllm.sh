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

# vllm-gcp:include host_lib.sh

readonly ROOT="${VLLM_GCP_ROOT:-}"
readonly IMAGE={{ shell:IMAGE }}
readonly SERVICE_NAME={{ shell:SERVICE_NAME }}
readonly UNIT_FILE="${ROOT}/etc/systemd/system/${SERVICE_NAME}"
readonly CACHE_DIRS=({{ shell:CACHE_DIRS }})
# Its values (the API key, the token) are filtered out of the journal lines printed here.
readonly SECRETS_ENV_FILE="${ROOT}"{{ shell:SECRETS_ENV_FILE }}
# Set where the image comes through Artifact Registry, whose login helper the startup script
# installed (scripts/registry_login.sh).
readonly REGISTRY_HOST={{ shell:REGISTRY_HOST }}
readonly REGISTRY_LOGIN="${ROOT}"{{ shell:REGISTRY_LOGIN_PATH }}
# scripts/drain_vllm.sh, the unit's first ExecStop: installed here, with the unit that calls it.
readonly DRAIN_HELPER="${ROOT}"{{ shell:DRAIN_HELPER_PATH }}
# A prepared image names the vLLM image it holds (vllm-gcp image build).
readonly PREPARED_IMAGE_MARKER="${ROOT}"{{ shell:PREPARED_IMAGE_MARKER }}
readonly LOG_LINES=50
# The login's token request and docker login are bounded inside it too.
readonly REGISTRY_LOGIN_SECONDS=300
# A first pull of a ~12 GB vLLM image.
readonly PULL_SECONDS=1800
# The unit's TimeoutStopSec (the drain of the answers in flight, then docker stop), its
# TimeoutStartSec (40 min: the start gate, a pull, a copy of the weights) and a minute: systemd
# gives up first, with its reason in the journal printed below.
readonly RESTART_SECONDS={{ shell:RESTART_SECONDS }}

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
# vllm-gcp:include drain_vllm.sh
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
