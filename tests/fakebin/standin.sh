#!/usr/bin/env bash
# A recording stand-in for the system commands scripts/startup.sh and scripts/letsencrypt.sh
# call. The tests link it under each command's name in a directory put first on PATH; it acts on
# the name it was called by.
#
# Every call is appended to $FAKE_STATE/calls.log as "name args...". The host's state lives in
# $FAKE_STATE (installed packages, enabled and active units, pulled images, driver, active
# arrays, superblocks, filesystems, mounts, certificates), so a second run sees what the first
# did. Knobs:
#   FAKE_GPUS   GPUs nvidia-smi lists (default 2); from 8 they sit on an NVSwitch fabric, which
#               nvidia-smi -q reports "Completed" once nvidia-fabricmanager is active
#   FAKE_FABRIC_STATE  the fabric state nvidia-smi -q reports instead
#   FAKE_FAIL   a glob over "name args..."; a matching call fails with exit 1
#   FAKE_FAIL_TIMES  with FAKE_FAIL: only the first this many matching calls fail
#   FAKE_HANG   a glob over "name args..."; a matching call hangs (a network that never answers)
#   FAKE_HANG_TIMES  with FAKE_HANG: only the first this many matching calls hang
#   FAKE_DRIVER_LOADS_AT_ONCE=1  a driver ubuntu-drivers installs works without a reboot
#   FAKE_RESOLVES_TO  the IPv4 address getent gives every name (default 1.2.3.4)
set -euo pipefail

name="${0##*/}"
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

if [[ -n "${FAKE_HANG:-}" ]]; then
  # shellcheck disable=SC2053
  if [[ "$name $*" == $FAKE_HANG ]]; then
    hangs="$(cat "${state}/hangs" 2>/dev/null || echo 0)"
    if [[ -z "${FAKE_HANG_TIMES:-}" ]] || ((hangs < FAKE_HANG_TIMES)); then
      echo $((hangs + 1)) >"${state}/hangs"
      # The real sleep: `sleep` may be this stand-in. exec: the limit's TERM reaches it directly.
      exec /bin/sleep 30
    fi
  fi
fi

listed() {
  [[ -f "${state}/$1" ]] && grep -qxF -- "$2" "${state}/$1"
}

remember() {
  printf '%s\n' "$2" >>"${state}/$1"
}

forget() {
  if [[ -f "${state}/$1" ]]; then
    grep -vxF -- "$2" "${state}/$1" >"${state}/$1.tmp" || true
    mv -f "${state}/$1.tmp" "${state}/$1"
  fi
}

driver_state() {
  cat "${state}/driver" 2>/dev/null || echo absent
}

FAKE_DRIVER_VERSION="580.95.05"

apt_get() {
  local installing=false
  local arg package
  for arg in "$@"; do
    if [[ "$arg" == install ]]; then
      installing=true
    elif [[ "$installing" == true && "$arg" != -* ]]; then
      package="${arg%%=*}"
      remember installed "$package"
      case "$package" in
        nginx)
          mkdir -p "${root}/etc/nginx/sites-enabled"
          ln -sf ../sites-available/default "${root}/etc/nginx/sites-enabled/default"
          ;;
        # The package puts the command on PATH: here, next to this stand-in's other names.
        certbot) ln -sf "$(readlink -f "$0")" "$(dirname "$0")/certbot" ;;
        *) ;;
      esac
    fi
  done
}

# The archive carries the fabric manager for an older driver, the one in use and a newer one.
apt_cache() {
  [[ "$1" == madison ]] || return 0
  local version
  for version in 580.82.07 "$FAKE_DRIVER_VERSION" 580.159.03; do
    printf ' %s | %s | %s\n' "$2" "${version}-0ubuntu0.24.04.1" \
      "http://archive.ubuntu.com/ubuntu noble-updates/multiverse amd64 Packages"
  done
}

systemctl_cmd() {
  local verb="$1"
  shift
  local units=()
  local arg now=false
  for arg in "$@"; do
    case "$arg" in
      --now) now=true ;;
      -*) ;;
      *) units+=("$arg") ;;
    esac
  done
  local unit
  case "$verb" in
    is-active) listed active "${units[0]}" ;;
    is-enabled) listed enabled "${units[0]}" ;;
    enable)
      for unit in "${units[@]}"; do
        listed enabled "$unit" || remember enabled "$unit"
        if [[ "$now" == true ]] && ! listed active "$unit"; then
          remember active "$unit"
        fi
      done
      ;;
    disable)
      for unit in "${units[@]}"; do
        forget enabled "$unit"
        if [[ "$now" == true ]]; then
          forget active "$unit"
        fi
      done
      ;;
    start | restart | reload-or-restart)
      for unit in "${units[@]}"; do
        listed active "$unit" || remember active "$unit"
      done
      ;;
    *) ;;
  esac
}

nvidia_smi() {
  if [[ "$(driver_state)" != present ]]; then
    echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2
    exit 9
  fi
  local gpus="${FAKE_GPUS:-2}"
  local index
  case "${1:-}" in
    --list-gpus)
      for ((index = 0; index < gpus; index++)); do
        echo "GPU ${index}: NVIDIA A100-SXM4-80GB (UUID: GPU-0000000${index})"
      done
      ;;
    --query-gpu=driver_version)
      for ((index = 0; index < gpus; index++)); do
        echo "$FAKE_DRIVER_VERSION"
      done
      ;;
    -q)
      local fabric="N/A"
      if ((gpus >= 8)); then
        fabric="Not Started"
        listed active nvidia-fabricmanager && fabric="Completed"
      fi
      fabric="${FAKE_FABRIC_STATE:-$fabric}"
      echo "Driver Version                            : ${FAKE_DRIVER_VERSION}"
      for ((index = 0; index < gpus; index++)); do
        printf 'GPU 00000000:00:%02X.0\n    Product Name : NVIDIA A100-SXM4-80GB\n' "$index"
        printf '    Fabric\n        State : %s\n        Status : N/A\n' "$fabric"
      done
      ;;
    *)
      echo "NVIDIA-SMI ${FAKE_DRIVER_VERSION}    Driver Version: ${FAKE_DRIVER_VERSION}" \
        "   CUDA Version: 13.0"
      ;;
  esac
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

# Active arrays are lines "<device without the root prefix> <mdadm name>" in $FAKE_STATE/arrays.
mdadm_cmd() {
  local array="${2:-}"
  case "$1" in
    --examine) listed superblocks "$2" ;;
    --detail)
      if [[ -f "${state}/arrays" ]]; then
        local device array_name
        while read -r device array_name; do
          echo "ARRAY ${device} metadata=1.2 name=${array_name}" \
            "UUID=3b1f0f4e:5d0c1b2a:9e8f7a6b:1c2d3e4f"
        done <"${state}/arrays"
      fi
      ;;
    --create)
      shift 2
      local arg
      for arg in "$@"; do
        [[ "$arg" == -* ]] || remember superblocks "$arg"
      done
      mkdir -p "$(dirname "$array")" && touch "$array"
      remember arrays "${array#"$root"} vllm-host:$(basename "$array")"
      ;;
    --assemble)
      if [[ -s "${state}/arrays" ]]; then
        echo "mdadm: Found some drive for an array that is already active: ${array}" >&2
        echo "mdadm: ${array}: device or resource busy" >&2
        exit 1
      fi
      mkdir -p "$(dirname "$array")" && touch "$array"
      remember arrays "${array#"$root"} vllm-host:$(basename "$array")"
      ;;
    *) ;;
  esac
}

# What letsencrypt.sh needs of certbot: a lineage under /etc/letsencrypt/live/<--cert-name>.
certbot_cmd() {
  local name=""
  while (($# > 0)); do
    if [[ "$1" == --cert-name ]]; then
      name="$2"
    fi
    shift
  done
  [[ -n "$name" ]] || name="lineage-without-a-name"
  mkdir -p "${root}/etc/letsencrypt/live/${name}"
  touch "${root}/etc/letsencrypt/live/${name}/fullchain.pem"
}

case "$name" in
  apt-get) apt_get "$@" ;;
  apt-cache) apt_cache "$@" ;;
  systemctl) systemctl_cmd "$@" ;;
  certbot) certbot_cmd "$@" ;;
  getent) echo "${FAKE_RESOLVES_TO:-1.2.3.4}    STREAM ${*: -1}" ;;
  nginx) ;;
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
  logger | modprobe | udevadm | sleep) ;;
  *)
    echo "standin: no behaviour for ${name}" >&2
    exit 127
    ;;
esac
