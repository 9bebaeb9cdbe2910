#!/usr/bin/env bash
# A recording stand-in for the system commands scripts/startup.sh calls. The tests link it under
# each command's name in a directory put first on PATH; it acts on the name it was called by.
#
# Every call is appended to $FAKE_STATE/calls.log as "name args...". The host's state lives in
# $FAKE_STATE (installed packages, pulled images, driver, arrays, filesystems, mounts), so a
# second run sees what the first did. Knobs:
#   FAKE_GPUS   GPUs nvidia-smi lists (default 2)
#   FAKE_FAIL   a glob over "name args..."; a matching call fails with exit 1
#   FAKE_FAIL_TIMES  with FAKE_FAIL: only the first this many matching calls fail
#   FAKE_DRIVER_LOADS_AT_ONCE=1  a driver ubuntu-drivers installs works without a reboot
set -euo pipefail

name="$(basename "$0")"
state="${FAKE_STATE:?FAKE_STATE must name the stand-ins state directory}"
root="${VLLM_GCP_ROOT:-}"
printf '%s\n' "$name $*" >>"${state}/calls.log"

if [[ -n "${FAKE_FAIL:-}" ]]; then
  # shellcheck disable=SC2053
  if [[ "$name $*" == $FAKE_FAIL ]]; then
    failures="$(cat "${state}/failures" 2>/dev/null || echo 0)"
    if [[ -z "${FAKE_FAIL_TIMES:-}" ]] || ((failures < FAKE_FAIL_TIMES)); then
      echo $((failures + 1)) >"${state}/failures"
      echo "${name}: failing as told (FAKE_FAIL)" >&2
      exit 1
    fi
  fi
fi

listed() {
  [[ -f "${state}/$1" ]] && grep -qxF -- "$2" "${state}/$1"
}

remember() {
  printf '%s\n' "$2" >>"${state}/$1"
}

driver_state() {
  cat "${state}/driver" 2>/dev/null || echo absent
}

apt_get() {
  local installing=false
  local arg
  for arg in "$@"; do
    if [[ "$arg" == install ]]; then
      installing=true
    elif [[ "$installing" == true && "$arg" != -* ]]; then
      remember installed "$arg"
      if [[ "$arg" == nginx ]]; then
        mkdir -p "${root}/etc/nginx/sites-enabled"
        ln -sf ../sites-available/default "${root}/etc/nginx/sites-enabled/default"
      fi
    fi
  done
}

nvidia_smi() {
  if [[ "$(driver_state)" != present ]]; then
    echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2
    exit 9
  fi
  if [[ "${1:-}" == --list-gpus ]]; then
    local index
    for ((index = 0; index < ${FAKE_GPUS:-2}; index++)); do
      echo "GPU ${index}: NVIDIA A100-SXM4-80GB (UUID: GPU-0000000${index})"
    done
  else
    echo "NVIDIA-SMI 580.95.05    Driver Version: 580.95.05    CUDA Version: 13.0"
  fi
}

docker_cmd() {
  case "$1" in
    login) cat >"${state}/docker-login-password" ;;
    image) listed images "$3" ;;
    pull) remember images "$2" ;;
    run) nvidia_smi ;;
    *) ;;
  esac
}

mdadm_cmd() {
  local array="$2"
  case "$1" in
    --examine) listed superblocks "$2" ;;
    --create)
      shift 2
      local arg
      for arg in "$@"; do
        [[ "$arg" == -* ]] || remember superblocks "$arg"
      done
      mkdir -p "$(dirname "$array")" && touch "$array"
      ;;
    --assemble) mkdir -p "$(dirname "$array")" && touch "$array" ;;
    *) ;;
  esac
}

case "$name" in
  apt-get) apt_get "$@" ;;
  dpkg-query)
    package="${*: -1}"
    listed installed "$package" || exit 1
    echo -n "install ok installed"
    ;;
  nvidia-smi) nvidia_smi "$@" ;;
  ubuntu-drivers)
    if [[ "${FAKE_DRIVER_LOADS_AT_ONCE:-}" == 1 ]]; then
      echo present >"${state}/driver"
    else
      echo installed >"${state}/driver"
    fi
    ;;
  nvidia-ctk)
    config="${*: -1}"
    config="${config#--config=}"
    mkdir -p "$(dirname "$config")"
    echo '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}' >"$config"
    ;;
  docker) docker_cmd "$@" ;;
  curl)
    if [[ "${*: -1}" == http://metadata.google.internal/* ]]; then
      [[ " $* " == *" Metadata-Flavor: Google "* ]] || exit 22
      echo '{"access_token":"ya29.fake-token","expires_in":3599,"token_type":"Bearer"}'
    else
      echo "fake armored key"
    fi
    ;;
  gpg)
    output="${*: -1}"
    cat >"$output"
    ;;
  mdadm) mdadm_cmd "$@" ;;
  blkid)
    listed filesystems "${*: -1}" || exit 2
    echo ext4
    ;;
  mkfs.ext4) remember filesystems "${*: -1}" ;;
  mount) remember mounts "${*: -1}" ;;
  mountpoint) listed mounts "${*: -1}" ;;
  systemctl | logger | modprobe | udevadm | sleep) ;;
  *)
    echo "standin: no behaviour for ${name}" >&2
    exit 127
    ;;
esac
