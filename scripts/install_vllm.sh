#!/usr/bin/env bash
# Remote step 3 of the vLLM server (components/vllm_server.py): pull the image, install the
# systemd unit read from stdin and (re)start the container with it. Re-run on every change of
# the model settings, the image or the secrets; each run restarts the container once.
# Journal lines holding the key or the token are left out of everything printed here.
#
# Runs as the SSH user, acting through sudo. For tests, VLLM_GCP_ROOT prefixes every host path.
set -euo pipefail

readonly ROOT="${VLLM_GCP_ROOT:-}"
readonly IMAGE='{{ IMAGE }}'
readonly SERVICE_NAME='{{ SERVICE_NAME }}'
readonly UNIT_FILE="${ROOT}/etc/systemd/system/${SERVICE_NAME}"
read -r -a CACHE_DIRS <<<'{{ CACHE_DIRS }}'
readonly CACHE_DIRS
# Its values (the API key, the token) are filtered out of the journal lines printed here.
readonly SECRETS_ENV_FILE="${ROOT}"'{{ SECRETS_ENV_FILE }}'
# Set where the image comes through Artifact Registry: the login script and where it goes.
readonly REGISTRY_HOST='{{ REGISTRY_HOST }}'
readonly REGISTRY_LOGIN="${ROOT}"'{{ REGISTRY_LOGIN_PATH }}'
readonly REGISTRY_LOGIN_SCRIPT='{{ REGISTRY_LOGIN_SCRIPT }}'
readonly LOG_LINES=50

STAGED_UNIT="$(mktemp)"
readonly STAGED_UNIT
trap 'rm -f -- "$STAGED_UNIT"' EXIT

log() {
  printf '[run vllm] %s\n' "$*"
}

read_unit() {
  cat >"$STAGED_UNIT"
  if ! grep -q '^ExecStart=' "$STAGED_UNIT"; then
    log "stdin held no systemd unit with an ExecStart line" >&2
    exit 1
  fi
}

prepare_cache() {
  local dir
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
  sudo -n install -d -m 0755 "$(dirname "$REGISTRY_LOGIN")"
  printf '%s' "$REGISTRY_LOGIN_SCRIPT" | sudo -n tee "${REGISTRY_LOGIN}.new" >/dev/null
  sudo -n chmod 0755 "${REGISTRY_LOGIN}.new"
  sudo -n mv -f "${REGISTRY_LOGIN}.new" "$REGISTRY_LOGIN"
  sudo -n "$REGISTRY_LOGIN" "$REGISTRY_HOST"
}

pull_image() {
  # Pulled here, not only by the unit, so a wrong reference fails this step with Docker's
  # message instead of a restart loop.
  log "pulling ${IMAGE} (a first pull of a vLLM image takes minutes)"
  sudo -n docker pull "$IMAGE"
}

install_unit() {
  sudo -n install -m 0644 "$STAGED_UNIT" "${UNIT_FILE}.new"
  sudo -n mv -f "${UNIT_FILE}.new" "$UNIT_FILE"
  sudo -n systemctl daemon-reload
  sudo -n systemctl enable --quiet "$SERVICE_NAME"
  log "installed ${UNIT_FILE}"
}

secret_values() {
  # The env file's non-empty values, one a line: read as root into a pipe, never an argument.
  sudo -n sed -n 's/^[A-Za-z_][A-Za-z0-9_]*=\(..*\)$/\1/p' "$SECRETS_ENV_FILE" 2>/dev/null || true
}

without_secrets() {
  # vLLM before PR #52523 could print the key in its "non-default args" line: drop such lines.
  grep --fixed-strings --invert-match --file=<(secret_values) || true
}

restart_service() {
  log "restarting ${SERVICE_NAME}"
  if ! sudo -n systemctl restart "$SERVICE_NAME"; then
    {
      log "${SERVICE_NAME} did not start; last ${LOG_LINES} lines of its journal (lines holding a secret left out):"
      sudo -n journalctl --unit "$SERVICE_NAME" --lines "$LOG_LINES" --no-pager --output cat |
        without_secrets || true
    } >&2
    exit 1
  fi
  log "${SERVICE_NAME} started; the next step waits until it serves"
}

read_unit
prepare_cache
log_in_to_registry
pull_image
install_unit
restart_service
