#!/usr/bin/env bash
# Prepares a fresh machine to develop and test vllm-gcp: the system packages the tests drive
# for real (Nginx), ./venv with the locked Python packages (the same venv Pulumi uses), and the
# project itself in editable mode, which puts the `vllm-gcp` command in venv/bin.
#
#   bash tools/setup-dev.sh                      # with python3 from PATH
#   PYTHON=python3.12 bash tools/setup-dev.sh    # with another interpreter
#
# System packages (Nginx, and Debian's python3.X-venv where `python -m venv` needs it) are
# installed with apt-get when it can be done without asking: as root, or with sudo that needs no
# password. Otherwise the script stops and prints the exact command to run first.
set -euo pipefail

PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly PROJECT_DIR
readonly VENV="${PROJECT_DIR}/venv"
readonly PYTHON="${PYTHON:-python3}"
readonly PIP_LOG="${VENV}/setup-dev-pip.log"
readonly PROGRESS_EVERY_S="${SETUP_DEV_PROGRESS_EVERY_S:-20}"

log() {
  printf 'setup-dev [%4ss]: %s\n' "${SECONDS}" "$*"
}

fail() {
  printf 'setup-dev: error: %s\n' "$*" >&2
  exit 1
}

can_be_root() {
  [[ "$(id -u)" -eq 0 ]] || sudo -n true 2>/dev/null
}

as_root() {
  if [[ "$(id -u)" -eq 0 ]]; then
    "$@"
  else
    sudo -n "$@"
  fi
}

# apt_install WHY PACKAGE...: installs them, or stops with the command that would.
apt_install() {
  local why="$1"
  shift
  if ! command -v apt-get >/dev/null 2>&1; then
    fail "${why}: install $* with your system's package manager, then run this script again"
  fi
  if ! can_be_root; then
    fail "${why}. Install it, then run this script again:
    sudo apt-get update && sudo apt-get install -y $*"
  fi
  log "${why}: apt-get install $*"
  as_root timeout 600 apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "$@"
}

install_system_packages() {
  if command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; then
    log "nginx already installed"
    return
  fi
  apt_install "the proxy tests run the real Nginx" nginx-light
}

# The minimum from pyproject.toml's requires-python (">=X.Y"), the one place it is written.
required_python() {
  local minimum
  minimum="$(sed -n 's/^requires-python = ">=\([0-9]*\.[0-9]*\)"$/\1/p' "${PROJECT_DIR}/pyproject.toml")"
  [[ -n "${minimum}" ]] || fail "pyproject.toml has no requires-python = \">=X.Y\" to check against"
  printf '%s\n' "${minimum}"
}

# X.Y.Z from `PYTHON --version` ("Python 3.11.7"; Python 2 printed it on stderr).
python_version() {
  local output
  output="$("$1" --version 2>&1)" || return 1
  [[ "${output}" =~ ^Python\ ([0-9]+\.[0-9]+(\.[0-9]+)?) ]] || return 1
  printf '%s\n' "${BASH_REMATCH[1]}"
}

# version_older FOUND MINIMUM: true when FOUND (X.Y[.Z]) is older than MINIMUM (X.Y).
version_older() {
  local -a found minimum
  IFS=. read -r -a found <<<"$1"
  IFS=. read -r -a minimum <<<"$2"
  ((found[0] < minimum[0] || (found[0] == minimum[0] && found[1] < minimum[1])))
}

# Prints the interpreter's X.Y.Z; stops when it is missing or older than requires-python.
check_python() {
  local minimum found path
  minimum="$(required_python)"
  path="$(command -v "${PYTHON}")" || fail "${PYTHON} not found: install Python ${minimum} or newer \
(Debian/Ubuntu: sudo apt-get install -y python3 python3-venv), or run with PYTHON=<interpreter>"
  found="$(python_version "${path}")" || fail "cannot tell the version of ${path} (${PYTHON} --version)"
  if version_older "${found}" "${minimum}"; then
    fail "${path} is Python ${found}; vllm-gcp needs Python ${minimum} or newer (pyproject.toml,
    requires-python). Install one (Ubuntu 22.04: sudo apt-get install -y python${minimum} \
python${minimum}-venv; elsewhere python.org or pyenv), then run:
    PYTHON=python${minimum} bash tools/setup-dev.sh"
  fi
  printf '%s\n' "${found}"
}

# True when ./venv holds a supported Python with pip (an earlier run made it); stops when it
# holds an older Python.
venv_ready() {
  local existing
  [[ -x "${VENV}/bin/python" ]] || return 1
  existing="$(python_version "${VENV}/bin/python")" \
    || fail "cannot tell the version of ${VENV}/bin/python: remove ${VENV} and run this script again"
  if version_older "${existing}" "$(required_python)"; then
    fail "${VENV} holds Python ${existing}, older than pyproject.toml's requires-python: remove it
    (rm -rf venv) and run this script again"
  fi
  if ! "${VENV}/bin/python" -m pip --version >/dev/null 2>&1; then
    log "${VENV} has no pip (an earlier venv creation failed): creating it again"
    return 1
  fi
  log "reusing ${VENV} (Python ${existing})"
}

# Creates ./venv from PYTHON; where Debian's venv lacks ensurepip, installs python3.X-venv first.
create_venv() {
  local version="$1" output
  log "creating ${VENV} with ${PYTHON} (Python ${version})"
  if output="$("${PYTHON}" -m venv --clear "${VENV}" 2>&1)"; then
    return
  fi
  # Debian and Ubuntu leave ensurepip out of their python3.X package; the message, from their
  # patch to the venv module, reads "... was not created successfully because ensurepip is not
  # available. On Debian/Ubuntu systems, you need to install the python3-venv package ...".
  if [[ "${output}" != *"because ensurepip is not"* ]]; then
    printf '%s\n' "${output}" >&2
    fail "${PYTHON} -m venv ${VENV} failed (its output above)"
  fi
  local package="python${version%.*}-venv"
  apt_install "${PYTHON} -m venv needs ensurepip, which Debian and Ubuntu ship in ${package}" \
    "${package}"
  "${PYTHON}" -m venv --clear "${VENV}"
}

# Reads pip's output: one line per package as pip takes it up ("Collecting NAME==VERSION" from
# an index, "Processing /path/to/FILE.whl" from a local wheel), then the install phase.
# pip prints nothing while it unpacks (a minute or two): a line every PROGRESS_EVERY_S says so.
show_pip_progress() {
  local total="$1" collected=0 line status
  while true; do
    status=0
    IFS= read -r -t "${PROGRESS_EVERY_S}" line || status=$?
    # read's status is above 128 when it timed out, 1 at the end of pip's output.
    if ((status > 128)); then
      log "  still installing (pip is quiet while it unpacks)"
      continue
    fi
    ((status == 0)) || break
    case "${line}" in
      "Collecting "* | "Processing "*)
        collected=$((collected + 1))
        line="${line#* }"
        line="${line%% *}"
        log "  ${collected}/${total} ${line##*/}"
        ;;
      "Installing collected packages:"*)
        log "  unpacking ${collected} packages into the venv"
        ;;
    esac
  done
}

install_locked_packages() {
  local total
  total="$(grep -c '^[A-Za-z0-9][A-Za-z0-9._-]*==' "${PROJECT_DIR}/requirements-dev.txt")"
  # Every package and version from the lock, each file checked against its hashes.
  log "installing the ${total} locked packages of requirements-dev.txt (hash-checked; a few \
minutes on a fresh machine; pip's whole output in ${PIP_LOG})"
  if ! PYTHONUNBUFFERED=1 timeout 1800 "${VENV}/bin/python" -m pip install \
    --disable-pip-version-check --progress-bar off --require-hashes \
    -r "${PROJECT_DIR}/requirements-dev.txt" 2>&1 | tee "${PIP_LOG}" | show_pip_progress "${total}"; then
    tail -n 20 "${PIP_LOG}" >&2
    fail "pip install failed or took over 30 minutes (the end of its output above, all of it in ${PIP_LOG})"
  fi
}

install_project() {
  # No dependencies (the lock brought them) and no build isolation: the build backend is the
  # lock's setuptools, so nothing unpinned is downloaded to build it.
  log "installing the project (editable): venv/bin/vllm-gcp"
  timeout 300 "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-deps --no-build-isolation --editable "${PROJECT_DIR}"
}

compile_project() {
  # Once here rather than in every test worker and every tool process: Python reads these even
  # where it is told not to write them (PYTHONDONTWRITEBYTECODE).
  log "compiling the project's modules"
  (cd "${PROJECT_DIR}" &&
    timeout 120 "${VENV}/bin/python" -m compileall -q -j 0 __main__.py components tools tests benchmarks)
}

main() {
  local version=""
  if ! venv_ready; then
    version="$(check_python)"
    log "using $(command -v "${PYTHON}"), Python ${version}"
  fi
  install_system_packages
  if [[ -n "${version}" ]]; then
    create_venv "${version}"
  fi
  install_locked_packages
  install_project
  compile_project
  log "done: run the tests with venv/bin/pytest, the tools with venv/bin/vllm-gcp --help"
}

main "$@"
