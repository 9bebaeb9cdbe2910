#!/usr/bin/env bash
# Stand-ins for what tools/setup-dev.sh calls: python3 (and the venv's python, with its pip),
# apt-get, sudo and id. tests/test_setup_dev.py links this script under each name in a
# directory put first on PATH; it acts on the name it was called by, answers only the calls the
# real command documents (anything else is an error), and appends each call to
# $FAKE_STATE/calls.log. Knobs:
#   FAKE_PYTHON_VERSION  what `python3 --version` reports (default 3.11.7)
#   FAKE_NO_ENSUREPIP=1  `python3 -m venv` fails as on Debian/Ubuntu without python3.X-venv,
#                        until apt-get has installed that package
#   FAKE_UID             what `id -u` prints (default 1000)
#   FAKE_SUDO_NOPASSWD=1 `sudo -n` runs commands; otherwise it wants a password and refuses
#   FAKE_PIP_FAIL=1      `pip install -r` fails on a hash, as pip does
#   FAKE_PIP_UNPACK_S    seconds pip spends, silent, unpacking what it collected (default 0)
#   FAKE_PIP_FROM_FILES=1  pip finds the wheels in a local directory ("Processing FILE")
set -euo pipefail

name="$(basename "$0")"
state="${FAKE_STATE:?FAKE_STATE must name the stand-ins state directory}"
printf '%s\n' "${name} $*" >>"${state}/calls.log"

unexpected() {
  echo "stand-in ${name}: unexpected arguments: $*" >&2
  exit 2
}

python_version() {
  echo "Python ${FAKE_PYTHON_VERSION:-3.11.7}"
}

# python -m venv [--clear] DIR, as CPython's venv module (with Debian's ensurepip patch).
make_venv() {
  [[ "${1:-}" == --clear ]] && shift
  [[ $# -eq 1 ]] || unexpected "-m venv $*"
  local dir="$1" version="${FAKE_PYTHON_VERSION:-3.11.7}"
  mkdir -p "${dir}/bin"
  rm -f "${dir}/pip-installed"
  ln -sf "$0" "${dir}/bin/python"
  local package="python${version%.*}-venv"
  if [[ "${FAKE_NO_ENSUREPIP:-}" == 1 ]] && ! grep -qxF "${package}" "${state}/apt-installed" 2>/dev/null; then
    # Debian's message, as its patch to the venv module words and wraps it.
    cat <<EOF
The virtual environment was not created successfully because ensurepip is not
available.  On Debian/Ubuntu systems, you need to install the python3-venv
package using the following command.

    apt install ${package}

You may need to use sudo with that command.  After installing the python3-venv
package, recreate your virtual environment.

Failing command: ${dir}/bin/python3

EOF
    exit 1
  fi
  touch "${dir}/pip-installed"
}

# pip install, as pip prints it: a "Collecting" line per requirement, then the install.
pip_install() {
  local requirements="" quiet="" arg names=()
  while [[ $# -gt 0 ]]; do
    arg="$1"
    shift
    case "${arg}" in
      -r) requirements="$1" && shift ;;
      --editable) names+=("vllm-gcp-0.1.0") && shift ;;
      --quiet) quiet=1 ;;
      --disable-pip-version-check | --require-hashes | --no-deps | --no-build-isolation) ;;
      --progress-bar) [[ "$1" == off || "$1" == on ]] || unexpected "--progress-bar $1" && shift ;;
      *) unexpected "install ${arg}" ;;
    esac
  done
  if [[ -n "${quiet}" ]]; then
    exec >/dev/null
  fi
  if [[ -n "${requirements}" ]]; then
    local line
    while IFS= read -r line; do
      [[ "${line}" =~ ^([A-Za-z0-9][A-Za-z0-9._-]*==[^ ]*) ]] || continue
      if [[ "${FAKE_PIP_FROM_FILES:-}" == 1 ]]; then
        echo "Processing /opt/wheels/${BASH_REMATCH[1]/==/-}-py3-none-any.whl (from -r ${requirements} (line 1))"
      else
        echo "Collecting ${BASH_REMATCH[1]} (from -r ${requirements} (line 1))"
        echo "  Using cached ${BASH_REMATCH[1]/==/-}-py3-none-any.whl (10 kB)"
      fi
      names+=("${BASH_REMATCH[1]/==/-}")
      if [[ "${FAKE_PIP_FAIL:-}" == 1 ]]; then
        echo "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE." >&2
        exit 1
      fi
    done <"${requirements}"
    echo "Installing collected packages: ${names[*]}"
    sleep "${FAKE_PIP_UNPACK_S:-0}"
  fi
  echo "Successfully installed ${names[*]}"
}

venv_pip() {
  local venv
  venv="$(dirname "$(dirname "$0")")"
  if [[ ! -f "${venv}/pip-installed" ]]; then
    echo "${venv}/bin/python: No module named pip" >&2
    exit 1
  fi
  case "${1:-}" in
    --version) echo "pip 24.0 from ${venv}/lib/python3/site-packages/pip (python 3)" ;;
    install) shift && pip_install "$@" ;;
    *) unexpected "-m pip $*" ;;
  esac
}

case "${name}" in
  python3 | python)
    case "${1:-}" in
      --version) python_version ;;
      -m)
        case "${2:-}" in
          venv) shift 2 && make_venv "$@" ;;
          pip) shift 2 && venv_pip "$@" ;;
          # Byte-compiles the named files and directories, relative to the working directory.
          compileall)
            shift 2
            for arg in "$@"; do
              [[ "${arg}" == -* || "${arg}" =~ ^[0-9]+$ || -e "${arg}" ]] ||
                { echo "Can't list '${arg}'" >&2 && exit 1; }
            done
            ;;
          *) unexpected "$@" ;;
        esac
        ;;
      *) unexpected "$@" ;;
    esac
    ;;
  apt-get)
    [[ "$(id -u)" -eq 0 ]] || {
      echo "E: Could not open lock file /var/lib/dpkg/lock-frontend - open (13: Permission denied)" >&2
      exit 100
    }
    case "${1:-}" in
      update) ;;
      install)
        shift
        for arg in "$@"; do
          [[ "${arg}" == -* ]] || printf '%s\n' "${arg}" >>"${state}/apt-installed"
        done
        ;;
      *) unexpected "$@" ;;
    esac
    ;;
  sudo)
    [[ "${1:-}" == -n ]] || unexpected "$@"
    shift
    if [[ "${FAKE_SUDO_NOPASSWD:-}" != 1 ]]; then
      echo "sudo: a password is required" >&2
      exit 1
    fi
    FAKE_UID=0 exec "$@"
    ;;
  id)
    [[ "${1:-}" == -u ]] || unexpected "$@"
    echo "${FAKE_UID:-1000}"
    ;;
  *)
    unexpected "$@"
    ;;
esac
