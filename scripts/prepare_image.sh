#!/usr/bin/env bash
# vllm-gcp image builder: GCE runs it once as root on the throwaway VM that `vllm-gcp image build`
# (tools/image_build.py) creates from the default accelerator image. It installs what the startup
# script installs (Docker, the NVIDIA container toolkit, Nginx, the Google Cloud Ops Agent) with
# the startup script's own functions (the rendered scripts/startup.sh, sourced: it then defines its
# functions and runs nothing), pulls the pinned vLLM image and the GPU check image, writes the
# marker that says what the image holds, and removes everything that must not be imaged. The builder has no GPU: the startup script's GPU checks run at every boot of
# the real host anyway, and the accelerator image already carries the driver, so nothing here
# needs one.
#
# Progress and outcome go to the instance's guest attributes, namespace vllm-gcp-image (the
# build command polls them): `phase` (install, pull, clean), then `contents` (the marker's
# lines) and `status` (done, or "failed: <reason>"). Lines also go to the serial console.
#
# Nothing secret is ever on the builder: it runs without a service account (no token), logs in
# to no registry, and receives no key of any stack. The clean step removes what makes an instance
# itself (SSH host keys, machine-id, cloud-init and guest agent instance state, authorized_keys)
# and the logs.
#
# Tests run it with stand-ins for the system commands (curl answering as the metadata server) and
# VLLM_GCP_ROOT prefixed to every path.
set -Eeuo pipefail

readonly STARTUP_SCRIPT_B64={{ shell:STARTUP_SCRIPT_B64 }}
BUILD_DIR="$(mktemp -d)"
readonly BUILD_DIR
base64 -d <<<"$STARTUP_SCRIPT_B64" >"${BUILD_DIR}/startup.sh"
# shellcheck source=/dev/null
source "${BUILD_DIR}/startup.sh"

readonly VLLM_IMAGE={{ shell:VLLM_IMAGE }}
readonly CONFIG_DIR="${ROOT}"{{ shell:CONFIG_DIR }}
readonly METADATA_URL="http://metadata.google.internal/computeMetadata/v1"
readonly ATTRIBUTES_URL="${METADATA_URL}/instance/guest-attributes/vllm-gcp-image"
# The Ops Agent's buffers and state (ops-agent cmd/google_cloud_ops_agent_engine, -state).
readonly OPS_AGENT_STATE_DIR="${ROOT}/var/lib/google-cloud-ops-agent"
# A first pull of a ~12 GB vLLM image (scripts/install_vllm.sh allows the same).
readonly PULL_SECONDS=1800
readonly JOURNAL_SECONDS=120
readonly ATTRIBUTE_ATTEMPTS=3

built=false

# set_attribute KEY: the guest attribute vllm-gcp-image/KEY, its value on stdin. Best effort: a
# lost progress line only delays the build command's next one.
set_attribute() {
  local key=$1 value attempt
  value="$(cat)"
  for ((attempt = 1; attempt <= ATTRIBUTE_ATTEMPTS; attempt++)); do
    if curl -fsS --max-time 10 -X PUT -H "Metadata-Flavor: Google" --data-binary @- \
      "${ATTRIBUTES_URL}/${key}" <<<"$value" >/dev/null; then
      return 0
    fi
    sleep 2
  done
  printf 'could not set the guest attribute vllm-gcp-image/%s\n' "$key" >&2
}

phase() {
  step "image-$1"
  set_attribute phase <<<"$1"
}

package_version() {
  dpkg-query -W -f='${Version}' "$1" 2>/dev/null || printf 'none'
}

# The driver's version from its kernel module's file: without a GPU the module does not load.
driver_version() {
  modinfo -F version nvidia 2>/dev/null || printf 'unknown'
}

base_image() {
  curl -fsS --max-time 10 -H "Metadata-Flavor: Google" "${METADATA_URL}/instance/image" |
    sed 's|.*/||' || printf 'unknown'
}

install_software() {
  phase install
  hold_back_unattended_upgrades
  configure_apt_sources
  ensure_packages
  configure_docker
  configure_nginx
  stop_ops_agent
}

# The agent's package starts it, and its configuration is the stack's (configure_ops_agent writes
# it at the host's first boot): in the image it is installed, stopped and disabled.
stop_ops_agent() {
  step "ops-agent"
  run_bounded "$SERVICE_SECONDS" "stopping ${OPS_AGENT_SERVICE}" \
    systemctl disable --now "$OPS_AGENT_SERVICE"
}

pull_into_image() {
  local image=$1
  log "pulling ${image} into the image"
  with_retries run_bounded "$PULL_SECONDS" "pulling ${image}" docker pull "$image" ||
    fail "could not pull ${image}"
}

write_marker() {
  step "marker"
  mkdir -p "$(dirname "$PREPARED_IMAGE_MARKER")"
  {
    printf 'BUILT_AT=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'BASE_IMAGE=%s\n' "$(base_image)"
    printf 'NVIDIA_DRIVER=%s\n' "$(driver_version)"
    printf 'DOCKER=%s\n' "$(package_version docker.io)"
    printf 'NVIDIA_CONTAINER_TOOLKIT=%s\n' "$(package_version nvidia-container-toolkit)"
    printf 'NGINX=%s\n' "$(package_version nginx)"
    printf 'OPS_AGENT=%s\n' "$(package_version "$OPS_AGENT_PACKAGE")"
    printf 'VLLM_IMAGE=%s\n' "$VLLM_IMAGE"
    printf 'GPU_CHECK_IMAGE=%s\n' "$GPU_CHECK_IMAGE"
  } >"${PREPARED_IMAGE_MARKER}.tmp"
  mv -f "${PREPARED_IMAGE_MARKER}.tmp" "$PREPARED_IMAGE_MARKER"
  log "wrote ${PREPARED_IMAGE_MARKER}"
}

# What makes this VM itself, and its logs: each instance made from the image creates its own at
# first boot (sshd's host keys by cloud-init and the guest agent, machine-id by systemd, which
# treats an empty file as a first boot: machine-id(5)).
clean_image() {
  phase clean
  rm -rf -- "$CONFIG_DIR" "$STATE_DIR"
  if [[ -d "$OPS_AGENT_STATE_DIR" ]]; then
    find "$OPS_AGENT_STATE_DIR" -mindepth 1 -delete
  fi
  rm -f -- "${ROOT}"/etc/ssh/ssh_host_* "${ROOT}/root/.docker/config.json" "$APT_MIRROR_AUTH" \
    "${ROOT}/root/.ssh/authorized_keys" "${ROOT}"/home/*/.ssh/authorized_keys \
    "${ROOT}/root/.bash_history"
  : >"${ROOT}/etc/machine-id"
  if [[ -f "${ROOT}/var/lib/dbus/machine-id" && ! -L "${ROOT}/var/lib/dbus/machine-id" ]]; then
    rm -f -- "${ROOT}/var/lib/dbus/machine-id"
  fi
  # The guest agent regenerates host keys when the instance id it recorded changes.
  if [[ -f "${ROOT}/etc/default/instance_configs.cfg" ]]; then
    sed -i '/^instance_id[[:space:]]*=/d' "${ROOT}/etc/default/instance_configs.cfg"
  fi
  run cloud-init clean --logs
  run apt-get clean
  run_bounded "$JOURNAL_SECONDS" "rotating the journal" journalctl --rotate
  run_bounded "$JOURNAL_SECONDS" "emptying the journal" journalctl --vacuum-time=1s
  # The journal's active files stay (journald writes them); every other log is emptied last,
  # this script's own log included.
  find "${ROOT}/var/log" -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
  find "${ROOT}/var/log" -path "${ROOT}/var/log/journal" -prune -o -type f \
    -exec truncate -s 0 {} +
}

report_outcome() {
  local status=$?
  rm -rf -- "$BUILD_DIR"
  if [[ $status -eq 0 && $built == true ]]; then
    set_attribute contents <"$PREPARED_IMAGE_MARKER"
    set_attribute status <<<"done"
    return
  fi
  local reason="exit ${status}"
  if [[ -s "$STARTUP_FAILED_MARKER" ]]; then
    reason="$(cat "$STARTUP_FAILED_MARKER")"
  fi
  set_attribute status <<<"failed: ${reason}"
}

prepare_main() {
  export DEBIAN_FRONTEND=noninteractive
  export HOME="${HOME:-/root}"
  trap report_outcome EXIT
  begin_boot
  trap 'on_error "$LINENO" "$?" "$BASH_COMMAND"' ERR
  install_software
  phase pull
  pull_into_image "$VLLM_IMAGE"
  pull_into_image "$GPU_CHECK_IMAGE"
  write_marker
  clean_image
  built=true
}

prepare_main "$@"
