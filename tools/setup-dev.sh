#!/usr/bin/env bash
# Prepares a fresh machine to develop and test vllm-gcp: the system packages the tests drive
# for real (Nginx) and ./venv with the pinned Python packages (the same venv Pulumi uses).
set -euo pipefail

PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly PROJECT_DIR

log() {
  printf 'setup-dev: %s\n' "$*"
}

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  else
    sudo "$@"
  fi
}

install_system_packages() {
  if command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; then
    log "nginx already installed"
    return
  fi
  log "installing nginx-light (the proxy tests run the real Nginx)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light
}

create_venv() {
  if [[ ! -x "${PROJECT_DIR}/venv/bin/python" ]]; then
    log "creating ${PROJECT_DIR}/venv"
    python3 -m venv "${PROJECT_DIR}/venv"
  fi
  log "installing the pinned packages from requirements-dev.txt"
  "${PROJECT_DIR}/venv/bin/pip" install --quiet --disable-pip-version-check \
    -r "${PROJECT_DIR}/requirements-dev.txt"
}

main() {
  install_system_packages
  create_venv
  log "done: run the tests with venv/bin/pytest"
}

main "$@"
