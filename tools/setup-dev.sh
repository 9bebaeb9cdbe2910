#!/usr/bin/env bash
# Prepares a fresh machine to develop and test vllm-gcp: the system packages the tests drive
# for real (Nginx), ./venv with the locked Python packages (the same venv Pulumi uses), and the
# project itself in editable mode, which puts the `vllm-gcp` command in venv/bin.
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
  # Every package and version from the lock, each file checked against its hashes.
  log "installing the locked packages from requirements-dev.txt (hash-checked)"
  "${PROJECT_DIR}/venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes \
    -r "${PROJECT_DIR}/requirements-dev.txt"
}

install_project() {
  # No dependencies (the lock brought them) and no build isolation: the build backend is the
  # lock's setuptools, so nothing unpinned is downloaded to build it.
  log "installing the project (editable): venv/bin/vllm-gcp"
  "${PROJECT_DIR}/venv/bin/pip" install --quiet --disable-pip-version-check \
    --no-deps --no-build-isolation --editable "${PROJECT_DIR}"
}

main() {
  install_system_packages
  create_venv
  install_project
  log "done: run the tests with venv/bin/pytest, the tools with venv/bin/vllm-gcp --help"
}

main "$@"
