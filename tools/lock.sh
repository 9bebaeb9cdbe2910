#!/usr/bin/env bash
# Recompiles the hashed lock files from their inputs, after a change to requirements*.in:
#
#   bash tools/lock.sh             # keep every version the locks pin that the inputs still allow
#   bash tools/lock.sh --upgrade   # move every package to the newest version the inputs allow
#
# requirements.in -> requirements.txt (what Pulumi installs into ./venv: the runtime), and
# requirements-dev.in -> requirements-dev.txt (what tools/setup-dev.sh installs: runtime, tests,
# linters, operator tools, build backend). pip-tools runs from a throwaway venv under /tmp, so it
# never enters ./venv or the locks. Each lock's header names the exact pip-compile command.
set -euo pipefail

PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly PROJECT_DIR
readonly PIP_TOOLS_VERSION="7.6.2"
# Index and find-links options stay out of the locks: they name this machine's package sources.
readonly COMPILE_OPTIONS=(
  --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
)

log() {
  printf 'lock: %s\n' "$*"
}

main() {
  local extra=()
  case "${1:-}" in
    "") ;;
    --upgrade) extra=(--upgrade) ;;
    *)
      printf 'usage: bash tools/lock.sh [--upgrade]\n' >&2
      exit 2
      ;;
  esac
  local scratch
  scratch="$(mktemp -d /tmp/vllm-gcp-lock.XXXXXX)"
  # shellcheck disable=SC2064  # expand now: the path is fixed for this run
  trap "rm -rf '${scratch}'" EXIT
  log "installing pip-tools ${PIP_TOOLS_VERSION} into ${scratch}"
  python3 -m venv "${scratch}/venv"
  "${scratch}/venv/bin/pip" install --quiet --disable-pip-version-check \
    "pip-tools==${PIP_TOOLS_VERSION}"
  cd "${PROJECT_DIR}"
  # The runtime first: the dev input is held to its versions (-c requirements.txt).
  local name
  for name in requirements requirements-dev; do
    log "compiling ${name}.in -> ${name}.txt"
    "${scratch}/venv/bin/pip-compile" --quiet "${COMPILE_OPTIONS[@]}" "${extra[@]}" \
      --output-file="${name}.txt" "${name}.in"
  done
  log "done: install with bash tools/setup-dev.sh"
}

main "$@"
