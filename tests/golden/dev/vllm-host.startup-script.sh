#!/usr/bin/env bash
# vllm-gcp GPU host startup script: GCE runs it as root at every boot (metadata "startup-script").
#
# Contract with the remote steps (paths from components/host_paths.py):
#   READY_MARKER          written last, only when `nvidia-smi` lists all the machine's GPUs and
#                         Docker runs a `--gpus all` container; removed first thing at every boot,
#                         so its presence means "this boot's setup is complete". By then Docker
#                         (with the NVIDIA runtime) and Nginx (enabled, no site) are running and
#                         CACHE_DIR is mounted (on the local NVMe SSD where the machine has one).
#   STARTUP_FAILED_MARKER written on any failure, holding the reason (the first one this boot,
#                         the most specific); no READY_MARKER then.
#   STATE_DIR/rebooting   written just before the one reboot a freshly installed driver needs, so
#                         a remote step whose SSH session the reboot cuts knows to wait for the
#                         next boot; removed first thing at every boot.
#   STARTUP_LOG           this script's log, commands' output included. Its own lines also go to
#                         the journal (`journalctl -t vllm-gcp-startup`) and to stderr, which
#                         google_metadata_script_runner copies to the serial console.
#
# Idempotent: a second boot installs nothing and finishes in seconds. It installs only what is
# missing: the NVIDIA driver only when `nvidia-smi` fails (the default image carries it), Docker
# (Ubuntu's docker.io), NVIDIA's container toolkit, Nginx, the Google Cloud Ops Agent (where
# observability is enabled; stopped and disabled where it is not), and on NVSwitch machines (8 or more
# GPUs) the fabric manager matching the driver. It reboots only when a driver it just installed
# cannot load without one, and at most once. It keeps unattended-upgrades away from the NVIDIA
# driver and Docker packages, which must not change under a running server.
#
# Mirrors (components/mirror.py): with an apt mirror, the Ubuntu archive comes from Artifact
# Registry (the image's own sources are moved aside; NVIDIA's repository, which no mirror
# serves, is still added when the toolkit is missing). With a Docker registry host, Docker logs
# in there before pulling the check image. Both authenticate with the VM's access token from
# the metadata server, which is never logged nor put on a command line.
#
# Every network or long operation has a time limit of its own (the shared library's `bounded`,
# or curl's --max-time), so no boot hangs on one: a limit that hits is logged with what it cut off,
# and the operation is retried or the boot fails with its reason.
#
# Tests run it with stand-ins for the system commands and VLLM_GCP_ROOT prefixed to every path.
set -Eeuo pipefail

# The shared host library (log, fail and bounded): log and fail are redefined below, so that this
# script's lines also reach its log file and the journal, and a failure writes its marker.
# shellcheck shell=bash
# vllm-gcp host library: the pieces every host script shares. Not run on its own: the renderer
# (components/render.py) puts this file in place of a script's "# vllm-gcp:include host_lib.sh"
# line, so each script the host receives is complete in itself.
#
#   step_begin NAME [stderr]  names the step in every line it prints ("[NAME] ..."), on stdout
#                             (or stderr), and installs the time-limit trap (TERM, HUP).
#   log MESSAGE...            "[NAME] MESSAGE".
#   fail MESSAGE...           "[NAME] MESSAGE" on stderr, then exit 1.
#   doing WHAT                names what the step is doing now (a wait, a phase): the trap's message.
#   bounded [--root] [--output FILE] SECONDS WHAT COMMAND [ARGS...]
#                             runs COMMAND (a program, not a shell function) under its own time
#                             limit with GNU timeout; when the limit hits it prints "[NAME] timed out
#                             after SECONDS s: WHAT" and returns 124. --root: through `sudo -n`, with
#                             timeout inside sudo so the limit reaches the command's own children.
#                             --output: COMMAND's stdout and stderr appended to FILE. stdin passes on.
#   without_secrets ENV_FILE  a filter: stdin less every line that holds a value of ENV_FILE (an
#                             env file read as root, into a pipe, never into an argument).
#   bounded_capture VAR SECONDS WHAT COMMAND [ARGS...]
#                             the same, COMMAND's stdout into the variable VAR (never for secrets: it
#                             passes through a temporary file).
#
# The step's overall limit: host_step (components/remote_access.py) runs each remote step's script
# under `timeout` with VLLM_GCP_STEP_LIMIT_SECONDS set. pulumi-command never stops a command running
# on the host (custom_timeouts bound only its dialing), so this is what ends a hung step. At the
# limit `timeout` sends TERM; the trap stops the operation in flight and prints "[NAME] timed out
# after N s (this step's time limit): WHAT". A script may define `on_stop SIGNAL` to act first (it
# may exit: wait_host_ready.sh explains a reboot that way).
#
# Call `bounded` from the script's own shell, not inside $(...) or a pipeline: an operation run in a
# subshell escapes the trap (use bounded_capture for output).
# For tests: VLLM_GCP_OPERATION_LIMIT_SECONDS caps every operation's limit.

_step_name="vllm-gcp"
_log_fd=1
_operation="running the step's script"
_bounded_pid=""
# After the TERM at an operation's limit, what it gets to exit before KILL.
readonly _BOUNDED_KILL_AFTER_SECONDS=10

step_begin() {
  _step_name=$1
  if [[ ${2:-} == stderr ]]; then
    _log_fd=2
  fi
  trap '_step_stopped TERM 15' TERM
  trap '_step_stopped HUP 1' HUP
}

log() {
  printf '[%s] %s\n' "$_step_name" "$*" >&"$_log_fd"
}

fail() {
  log "$@" >&2
  exit 1
}

doing() {
  _operation="$*"
}

bounded() {
  local as_root=false output="" seconds what status=0 outer=$_operation
  while [[ $1 == --* ]]; do
    case "$1" in
      --root) as_root=true ;;
      --output)
        output=$2
        shift
        ;;
      *) fail "bounded: unknown option $1" ;;
    esac
    shift
  done
  seconds=$1
  what=$2
  shift 2
  local cap=${VLLM_GCP_OPERATION_LIMIT_SECONDS:-}
  if [[ $cap =~ ^[0-9]+$ ]] && ((cap < seconds)); then
    seconds=$cap
  fi
  local runner=(timeout --kill-after="$_BOUNDED_KILL_AFTER_SECONDS" "$seconds")
  if $as_root; then
    runner=(sudo -n "${runner[@]}")
  fi
  _operation="${what} (its own limit: ${seconds} s)"
  # In the background so that `wait` returns at once when the step's limit hits (the trap then
  # runs); an explicit redirection keeps stdin, which a background command would otherwise lose.
  if [[ -n $output ]]; then
    "${runner[@]}" "$@" <&0 >>"$output" 2>&1 &
  else
    "${runner[@]}" "$@" <&0 &
  fi
  _bounded_pid=$!
  wait "$_bounded_pid" || status=$?
  _bounded_pid=""
  _operation=$outer
  # 124: the limit hit; 137: the command ignored the TERM and was killed.
  if ((status == 124 || status == 137)); then
    log "timed out after ${seconds} s: ${what}" >&2
    return 124
  fi
  return "$status"
}

bounded_capture() {
  local variable=$1 captured status=0
  shift
  captured=$(mktemp)
  bounded "$@" >"$captured" || status=$?
  printf -v "$variable" '%s' "$(cat "$captured")"
  rm -f -- "$captured"
  return "$status"
}

_secret_values() {
  # The env file's non-empty values, one a line.
  sudo -n sed -n 's/^[A-Za-z_][A-Za-z0-9_]*=\(..*\)$/\1/p' "$1" 2>/dev/null || true
}

without_secrets() {
  # vLLM before PR #52523 could print the key in its "non-default args" line: drop such lines.
  grep --fixed-strings --invert-match --file=<(_secret_values "$1") || true
}

_step_stopped() {
  local signal=$1 number=$2 limit=${VLLM_GCP_STEP_LIMIT_SECONDS:-} status
  # Ignored, not reset to the default: `timeout` sends its TERM twice (to the script, then to
  # its process group: coreutils src/timeout.c, cleanup), and the second one under the default
  # action would end the script here, before it stops the operation in flight or says why.
  trap '' TERM HUP
  if [[ -n $_bounded_pid ]]; then
    kill -TERM "$_bounded_pid" 2>/dev/null || true
  fi
  if declare -F on_stop >/dev/null; then
    on_stop "$signal"
  fi
  if [[ $signal == TERM && $limit =~ ^[0-9]+$ ]] && ((SECONDS + 2 >= limit)); then
    log "timed out after ${limit} s (this step's time limit): ${_operation}" >&2
    status=124
  else
    log "stopped by SIG${signal} after ${SECONDS} s: ${_operation}" >&2
    status=$((128 + number))
  fi
  if [[ -n $_bounded_pid ]]; then
    wait "$_bounded_pid" 2>/dev/null || true
  fi
  exit "$status"
}
# --- end of host_lib.sh

ROOT="${VLLM_GCP_ROOT:-}"
readonly ROOT
readonly GPU_COUNT='1'
readonly DRIVER_BRANCH='580'
readonly GPU_CHECK_IMAGE='ubuntu:24.04'
readonly DOCKER_REGISTRY_HOST=''
readonly APT_SOURCES_MODE='internet'
readonly APT_MIRROR_HOST=''
readonly APT_MIRROR_SOURCES_B64=''
readonly STATE_DIR="${ROOT}"'/var/lib/vllm-gcp'
readonly READY_MARKER="${ROOT}"'/var/lib/vllm-gcp/host-ready'
readonly STARTUP_FAILED_MARKER="${ROOT}"'/var/lib/vllm-gcp/startup-failed'
readonly STARTUP_LOG="${ROOT}"'/var/log/vllm-gcp-startup.log'
readonly CACHE_DIR="${ROOT}"'/var/lib/vllm-cache'
readonly DRIVER_REBOOT_MARKER="${STATE_DIR}/driver-reboot-done"
readonly REBOOTING_MARKER="${ROOT}"'/var/lib/vllm-gcp/rebooting'
readonly REGISTRY_LOGIN="${ROOT}"'/usr/local/libexec/vllm-gcp/registry-login'
readonly UNATTENDED_UPGRADES_CONFIG="${ROOT}/etc/apt/apt.conf.d/52vllm-gcp-unattended"
# What a prepared image (`vllm-gcp image build`, scripts/prepare_image.sh) holds: KEY=value lines,
# read here, never sourced. Outside /etc/vllm-gcp, which holds a stack's secrets and no image may.
readonly PREPARED_IMAGE_MARKER="${ROOT}"'/usr/lib/vllm-gcp/prepared-image.env'
readonly LOCAL_SSD_GLOB="${ROOT}/dev/disk/by-id/google-local-nvme-ssd-*"
readonly CACHE_ARRAY="${ROOT}/dev/md/vllm-cache"
readonly CACHE_LABEL="vllm-cache"
readonly DOCKER_DAEMON_CONFIG="${ROOT}/etc/docker/daemon.json"
readonly NGINX_DEFAULT_SITE="${ROOT}/etc/nginx/sites-enabled/default"
readonly APT_KEYRINGS="${ROOT}/etc/apt/keyrings"
readonly APT_SOURCES="${ROOT}/etc/apt/sources.list.d"
readonly APT_IMAGE_SOURCES=("${APT_SOURCES}/ubuntu.sources" "${ROOT}/etc/apt/sources.list")
readonly APT_ASIDE_DIR="${STATE_DIR}/apt-sources-aside"
readonly APT_MIRROR_SOURCES="${APT_SOURCES}/vllm-gcp-mirror.sources"
readonly APT_MIRROR_AUTH="${ROOT}/etc/apt/auth.conf.d/vllm-gcp-mirror.conf"
readonly METADATA_TOKEN_URL="http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
# NVIDIA container toolkit repository (docs.nvidia.com/datacenter/cloud-native/container-toolkit,
# "Installing with Apt"); its list file is written here rather than downloaded.
readonly NVIDIA_TOOLKIT_REPO="https://nvidia.github.io/libnvidia-container"
readonly NVIDIA_TOOLKIT_KEYRING="/etc/apt/keyrings/nvidia-container-toolkit.gpg"
# The Google Cloud Ops Agent (observability.enabled): metrics and logs to Cloud Monitoring and
# Cloud Logging, its configuration rendered by components/host_bundle.py (ops_agent_config).
# Google's apt repository, as add-google-cloud-ops-agent-repo.sh writes it, pinned to one major
# version (REPO_SUFFIX): google-cloud-ops-agent-<codename>-2 holds the 2.*.* releases only.
readonly OBSERVABILITY='enabled'
readonly OPS_AGENT_CONFIG="${ROOT}"'/etc/google-cloud-ops-agent/config.yaml'
readonly OPS_AGENT_CONFIG_B64='IyB2bGxtLWdjcDogdGhlIEdvb2dsZSBDbG91ZCBPcHMgQWdlbnQncyBjb25maWd1cmF0aW9uIChjb21wb25lbnRzL2hvc3RfYnVuZGxlLnB5LAojIG9wc19hZ2VudF9jb25maWcpLCB3cml0dGVuIGJ5IHRoZSBzdGFydHVwIHNjcmlwdDsgdGhlIGFnZW50IG1lcmdlcyBpdCB3aXRoIGl0cyBvd24uCm1ldHJpY3M6CiAgcmVjZWl2ZXJzOgogICAgdmxsbV9nY3BfdmxsbToKICAgICAgdHlwZTogcHJvbWV0aGV1cwogICAgICBjb25maWc6CiAgICAgICAgc2NyYXBlX2NvbmZpZ3M6CiAgICAgICAgLSBqb2JfbmFtZTogdmxsbQogICAgICAgICAgc2NyYXBlX2ludGVydmFsOiAzMHMKICAgICAgICAgIG1ldHJpY3NfcGF0aDogL21ldHJpY3MKICAgICAgICAgIHN0YXRpY19jb25maWdzOgogICAgICAgICAgLSB0YXJnZXRzOgogICAgICAgICAgICAtIDEyNy4wLjAuMTo4MDAwCiAgICAgICAgICAgIGxhYmVsczoKICAgICAgICAgICAgICB2bGxtX2djcF9zdGFjazogZGV2CiAgc2VydmljZToKICAgIHBpcGVsaW5lczoKICAgICAgdmxsbV9nY3BfdmxsbToKICAgICAgICByZWNlaXZlcnM6CiAgICAgICAgLSB2bGxtX2djcF92bGxtCmxvZ2dpbmc6CiAgcmVjZWl2ZXJzOgogICAgdmxsbV9nY3BfbmdpbnhfYWNjZXNzOgogICAgICB0eXBlOiBmaWxlcwogICAgICBpbmNsdWRlX3BhdGhzOgogICAgICAtIC92YXIvbG9nL25naW54L3ZsbG0tZ2NwLWFjY2Vzcy5sb2cKICAgIHZsbG1fZ2NwX25naW54X2Vycm9yOgogICAgICB0eXBlOiBuZ2lueF9lcnJvcgogICAgICBpbmNsdWRlX3BhdGhzOgogICAgICAtIC92YXIvbG9nL25naW54L2Vycm9yLmxvZwogICAgdmxsbV9nY3Bfam91cm5hbDoKICAgICAgdHlwZTogc3lzdGVtZF9qb3VybmFsZAogIHByb2Nlc3NvcnM6CiAgICB2bGxtX2djcF9uZ2lueF9hY2Nlc3NfZmllbGRzOgogICAgICB0eXBlOiBwYXJzZV9yZWdleAogICAgICByZWdleDogXig/PHJlbW90ZV9hZGRyPlxTKykgXFsoPzx0aW1lX2xvY2FsPlteXF1dKylcXSAiKD88bWV0aG9kPlxTKykgKD88cGF0aD5bXiJdKikgKD88cHJvdG9jb2w+W14iIF0rKSIgKD88c3RhdHVzPlxkezN9KSAoPzxib2R5X2J5dGVzX3NlbnQ+XGQrKSAoPzxyZXF1ZXN0X2xlbmd0aD5cZCspICg/PHJlcXVlc3RfdGltZT5bXGQuXSspICg/PHVwc3RyZWFtX3Jlc3BvbnNlX3RpbWU+XFMrKD86LCBcUyspKikgIig/PHVzZXJfYWdlbnQ+W14iXSopIiQKICAgICAgdGltZV9rZXk6IHRpbWVfbG9jYWwKICAgICAgdGltZV9mb3JtYXQ6ICclZC8lYi8lWTolSDolTTolUyAleicKICAgIHZsbG1fZ2NwX2pvdXJuYWxfZ3VhcmQ6CiAgICAgIHR5cGU6IGV4Y2x1ZGVfbG9ncwogICAgICBtYXRjaF9hbnk6CiAgICAgIC0ganNvblBheWxvYWQuTUVTU0FHRSA9fiAiKD9pKShhdXRob3JpemF0aW9ufGJlYXJlcnxhcGlbXy1dP2tleXxoZl90b2tlbikiCiAgICAgIC0ganNvblBheWxvYWQuX1NZU1RFTURfVU5JVCA9ICJ2bGxtLnNlcnZpY2UiIEFORCBqc29uUGF5bG9hZC5NRVNTQUdFID1+ICJHRVQgL21ldHJpY3MgIgogIHNlcnZpY2U6CiAgICBwaXBlbGluZXM6CiAgICAgIGRlZmF1bHRfcGlwZWxpbmU6CiAgICAgICAgcmVjZWl2ZXJzOiBbXQogICAgICB2bGxtX2djcF9uZ2lueDoKICAgICAgICByZWNlaXZlcnM6CiAgICAgICAgLSB2bGxtX2djcF9uZ2lueF9hY2Nlc3MKICAgICAgICBwcm9jZXNzb3JzOgogICAgICAgIC0gdmxsbV9nY3BfbmdpbnhfYWNjZXNzX2ZpZWxkcwogICAgICB2bGxtX2djcF9uZ2lueF9lcnJvcjoKICAgICAgICByZWNlaXZlcnM6CiAgICAgICAgLSB2bGxtX2djcF9uZ2lueF9lcnJvcgogICAgICB2bGxtX2djcF9qb3VybmFsOgogICAgICAgIHJlY2VpdmVyczoKICAgICAgICAtIHZsbG1fZ2NwX2pvdXJuYWwKICAgICAgICBwcm9jZXNzb3JzOgogICAgICAgIC0gdmxsbV9nY3Bfam91cm5hbF9ndWFyZAo='
readonly OPS_AGENT_PACKAGE="google-cloud-ops-agent"
readonly OPS_AGENT_SERVICE="google-cloud-ops-agent"
readonly OPS_AGENT_MAJOR=2
readonly OPS_AGENT_REPO="https://packages.cloud.google.com/apt"
readonly OPS_AGENT_KEYRING="/etc/apt/keyrings/google-cloud-ops-agent.gpg"
readonly OS_RELEASE="${ROOT}/etc/os-release"
# The 8- and 16-GPU A100/H100 machines (a2-highgpu-8g, a2-ultragpu-8g, a2-megagpu-16g,
# a3-highgpu-8g) connect their GPUs through NVSwitches: CUDA cannot initialise there (error 802)
# until nvidia-fabricmanager, at exactly the driver's version, has registered them in the fabric.
# Ubuntu's package for the 580 branch: nvidia-fabricmanager-580 (noble multiverse).
readonly NVSWITCH_MIN_GPUS=8
readonly FABRIC_MANAGER_PACKAGE="nvidia-fabricmanager-${DRIVER_BRANCH}"
readonly FABRIC_MANAGER_SERVICE="nvidia-fabricmanager"
readonly FABRIC_WAIT_ATTEMPTS=30
readonly FABRIC_WAIT_SECONDS=10
readonly LOG_TAG="vllm-gcp-startup"
readonly DOCKER_TIMEOUT_SECONDS=900
# Limits of the other operations that use the network or may hang. apt waits up to 600 s for its
# lock (DPkg::Lock::Timeout) before it downloads anything.
readonly APT_UPDATE_SECONDS=900
readonly APT_INSTALL_SECONDS=1800
readonly DRIVER_INSTALL_SECONDS=1800
readonly KEY_DOWNLOAD_SECONDS=360
readonly DOCKER_LOGIN_SECONDS=120
readonly SERVICE_SECONDS=300
# Downloads are retried for about ten minutes: mirror grants made alongside the VM take minutes
# to propagate, and a first boot's network can be briefly flaky.
readonly DOWNLOAD_ATTEMPTS=20
readonly RETRY_SECONDS=30

current_step="start"

log() {
  local line
  # The time in UTC from bash's own printf: no process per line.
  TZ=UTC0 printf -v line '%(%Y-%m-%dT%H:%M:%SZ)T %s: %s' -1 "$LOG_TAG" "$*"
  printf '%s\n' "$line" >>"$STARTUP_LOG"
  printf '%s\n' "$line" >&2
  logger -t "$LOG_TAG" -- "$*" || true
}

# Runs a command with its output in the log only, so the console shows just the steps.
run() {
  log "run: $*"
  "$@" >>"$STARTUP_LOG" 2>&1
}

# run_bounded SECONDS WHAT COMMAND...: `run` with a time limit; a limit that hits is logged, naming
# WHAT, and the command fails (124).
run_bounded() {
  local seconds=$1 what=$2
  shift 2
  log "run: $*"
  bounded --output "$STARTUP_LOG" "$seconds" "$what" "$@"
}

# The first failure of a boot names it: a `fail` inside a command substitution exits only that
# subshell, and the ERR trap the failed assignment then fires must not replace its reason.
fail() {
  trap - ERR
  local reason="$1"
  mkdir -p "$STATE_DIR"
  rm -f "$READY_MARKER"
  if [[ ! -s "$STARTUP_FAILED_MARKER" ]]; then
    printf '%s\n' "$reason" >"$STARTUP_FAILED_MARKER"
  fi
  log "FAILED: ${reason} (full log: ${STARTUP_LOG})"
  exit 1
}

on_error() {
  fail "step '${current_step}' failed at line $1 (exit $2): $3"
}

step() {
  current_step="$1"
  log "step: $1"
}

# Runs "$@" until it succeeds, DOWNLOAD_ATTEMPTS times at most.
with_retries() {
  local attempt
  for ((attempt = 1; attempt <= DOWNLOAD_ATTEMPTS; attempt++)); do
    if "$@"; then
      return 0
    fi
    log "attempt ${attempt}/${DOWNLOAD_ATTEMPTS} failed; retrying in ${RETRY_SECONDS}s"
    sleep "$RETRY_SECONDS"
  done
  return 1
}

begin_boot() {
  mkdir -p "$STATE_DIR" "$(dirname "$STARTUP_LOG")"
  chmod 0755 "$STATE_DIR"
  # Markers describe this boot only: a remote step must never see the last boot's verdict.
  rm -f "$READY_MARKER" "$STARTUP_FAILED_MARKER" "$REBOOTING_MARKER"
  log "boot setup begins (expecting ${GPU_COUNT} GPU(s))"
}

# Prints the VM service account's access token, for a pipe or a variable only.
metadata_token() {
  local response token
  response="$(curl -fsS --retry 5 --connect-timeout 5 --max-time 10 -H "Metadata-Flavor: Google" \
    "$METADATA_TOKEN_URL")" || return 1
  token="$(sed -n 's/.*"access_token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' <<<"$response")"
  [[ -n "$token" ]] || return 1
  printf '%s' "$token"
}

# Writes stdin to a file only when its content changes.
write_if_changed() {
  local target="$1"
  local pending="${target}.tmp"
  cat >"$pending"
  if cmp -s "$pending" "$target"; then
    rm -f "$pending"
    return
  fi
  mv -f "$pending" "$target"
  log "wrote ${target}"
}

# unattended-upgrades must not replace the NVIDIA userspace under a loaded kernel module (every
# later `--gpus` container then fails on the library/driver mismatch until a reboot) nor Docker,
# containerd or runc (restarting Docker stops vllm.service). These are updated by rebooting or
# replacing the VM, not under a running server. Entries are Python regular expressions matched
# at the start of the package name (re.match in unattended-upgrade), so each is a prefix.
hold_back_unattended_upgrades() {
  step "unattended-upgrades"
  mkdir -p "$(dirname "$UNATTENDED_UPGRADES_CONFIG")"
  write_if_changed "$UNATTENDED_UPGRADES_CONFIG" <<'EOF'
// vllm-gcp: updated by reboot or VM replacement, never under the running server.
Unattended-Upgrade::Package-Blacklist {
    "nvidia-";
    "libnvidia-";
    "linux-modules-nvidia-";
    "docker.io";
    "containerd";
    "runc";
};
EOF
}

configure_apt_sources() {
  step "apt-sources"
  case "$APT_SOURCES_MODE" in
    internet)
      log "apt uses the image's own sources"
      ;;
    mirror)
      mkdir -p "$APT_SOURCES" "$APT_ASIDE_DIR"
      local source
      for source in "${APT_IMAGE_SOURCES[@]}"; do
        if [[ -f "$source" ]]; then
          mv -f "$source" "${APT_ASIDE_DIR}/$(basename "$source")"
          log "moved ${source} aside: the Ubuntu archive comes from ${APT_MIRROR_HOST}"
        fi
      done
      base64 -d <<<"$APT_MIRROR_SOURCES_B64" >"${APT_MIRROR_SOURCES}.tmp"
      mv -f "${APT_MIRROR_SOURCES}.tmp" "$APT_MIRROR_SOURCES"
      ;;
    *)
      fail "apt sources mode '${APT_SOURCES_MODE}' is not supported"
      ;;
  esac
}

# apt's basic-auth credentials for the mirror: a fresh token (they last about an hour).
refresh_apt_mirror_token() {
  local token
  token="$(metadata_token)" || return 1
  mkdir -p "$(dirname "$APT_MIRROR_AUTH")"
  (
    umask 077
    printf 'machine %s login oauth2accesstoken password %s\n' "$APT_MIRROR_HOST" "$token" \
      >"$APT_MIRROR_AUTH"
  )
}

# apt-daily and unattended-upgrades may hold apt's locks at boot: the lock timeout covers the
# dpkg lock, the retries (with_retries) also cover the package lists' lock `update` takes.
apt_update_attempt() {
  if [[ "$APT_SOURCES_MODE" == mirror ]]; then
    refresh_apt_mirror_token || return 1
  fi
  run_bounded "$APT_UPDATE_SECONDS" "apt-get update" apt-get -q -o DPkg::Lock::Timeout=600 update
}

apt_attempt() {
  apt_update_attempt &&
    run_bounded "$APT_INSTALL_SECONDS" "apt-get install $*" \
      apt-get -y -q -o DPkg::Lock::Timeout=600 install --no-install-recommends "$@"
}

apt_install() {
  with_retries apt_attempt "$@" || fail "apt could not install: $*"
}

package_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

nvidia_smi_works() {
  nvidia-smi >>"$STARTUP_LOG" 2>&1
}

ensure_nvidia_driver() {
  step "nvidia-driver"
  if nvidia_smi_works; then
    rm -f "$DRIVER_REBOOT_MARKER"
    log "NVIDIA driver present, nothing to install"
    return
  fi
  if [[ -f "$DRIVER_REBOOT_MARKER" ]]; then
    fail "nvidia-smi still fails after installing the driver and rebooting; see ${STARTUP_LOG}"
  fi
  log "nvidia-smi fails: installing the ${DRIVER_BRANCH}-server driver"
  if ! package_installed ubuntu-drivers-common; then
    apt_install ubuntu-drivers-common
  fi
  # Canonical's precompiled, signed kernel modules: they load under Secure Boot
  # (ubuntu.com/server/docs/nvidia-drivers-installation); nvidia-smi comes with the utils.
  # ubuntu-drivers runs apt itself, without a lock timeout: retried like apt.
  with_retries run_bounded "$DRIVER_INSTALL_SECONDS" "installing the NVIDIA driver (ubuntu-drivers)" \
    ubuntu-drivers install --gpgpu "nvidia:${DRIVER_BRANCH}-server" ||
    fail "ubuntu-drivers could not install the ${DRIVER_BRANCH}-server driver"
  apt_install "nvidia-utils-${DRIVER_BRANCH}-server"
  if run modprobe nvidia && nvidia_smi_works; then
    log "NVIDIA driver loaded without a reboot"
    return
  fi
  touch "$DRIVER_REBOOT_MARKER"
  printf 'rebooting %s to load the NVIDIA driver\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    >"$REBOOTING_MARKER"
  log "the new driver needs a reboot; rebooting once, setup continues at the next boot"
  run systemctl reboot
  exit 0
}

# add_apt_key WHAT REPO KEY_PATH KEYRING [WAY_OUT]: REPO's signing key (at REPO/KEY_PATH),
# dearmored into KEYRING, or the boot fails saying what it could not download (and WAY_OUT).
add_apt_key() {
  local what=$1 repo=$2 key_path=$3 keyring=$4 way_out=${5:-}
  mkdir -p "$APT_KEYRINGS" "$APT_SOURCES"
  bounded "$KEY_DOWNLOAD_SECONDS" "downloading ${what}'s apt key" \
    curl -fsSL --retry 5 --connect-timeout 20 --max-time 60 "${repo}/${key_path}" |
    gpg --batch --yes --dearmor -o "${ROOT}${keyring}" ||
    fail "could not download ${what}'s apt key from ${repo}${way_out:+ (${way_out})}"
}

add_nvidia_toolkit_repository() {
  add_apt_key "the NVIDIA container toolkit" "$NVIDIA_TOOLKIT_REPO" gpgkey "$NVIDIA_TOOLKIT_KEYRING"
  # $(ARCH) is apt's own substitution, not the shell's.
  # shellcheck disable=SC2016
  printf 'deb [signed-by=%s] %s/stable/deb/$(ARCH) /\n' \
    "$NVIDIA_TOOLKIT_KEYRING" "$NVIDIA_TOOLKIT_REPO" \
    >"${APT_SOURCES}/nvidia-container-toolkit.list"
}

# The release's codename (noble), which names the Ops Agent's repository.
os_codename() {
  if [[ -f "$OS_RELEASE" ]]; then
    sed -n 's/^VERSION_CODENAME=//p' "$OS_RELEASE" | tr -d '"' | head -n 1
  fi
}

# Reached directly, never through the apt mirror: Artifact Registry's apt remote repositories
# take no custom upstream (components/mirror.py), so a host without internet needs a prepared
# image that carries the agent.
add_ops_agent_repository() {
  local codename
  codename="$(os_codename)"
  [[ -n "$codename" ]] || fail "no VERSION_CODENAME in ${OS_RELEASE}: cannot name the Ops Agent's repository"
  # Google's documented key (cloud.google.com/sdk/docs/install, "Debian/Ubuntu").
  add_apt_key "the Ops Agent" "$OPS_AGENT_REPO" doc/apt-key.gpg "$OPS_AGENT_KEYRING" \
    "a host without internet needs a prepared image that carries ${OPS_AGENT_PACKAGE}, or observability.enabled false"
  printf 'deb [signed-by=%s] %s google-cloud-ops-agent-%s-%s main\n' \
    "$OPS_AGENT_KEYRING" "$OPS_AGENT_REPO" "$codename" "$OPS_AGENT_MAJOR" \
    >"${APT_SOURCES}/google-cloud-ops-agent.list"
}

ensure_packages() {
  step "packages"
  local wanted=(docker.io nvidia-container-toolkit nginx)
  if [[ "$OBSERVABILITY" == enabled ]]; then
    wanted+=("$OPS_AGENT_PACKAGE")
  fi
  local missing=()
  local package
  for package in "${wanted[@]}"; do
    if ! package_installed "$package"; then
      missing+=("$package")
    fi
  done
  if ((${#missing[@]} == 0)); then
    log "present, nothing to install: ${wanted[*]}"
    return
  fi
  if [[ " ${missing[*]} " == *" nvidia-container-toolkit "* ]]; then
    add_nvidia_toolkit_repository
  fi
  if [[ " ${missing[*]} " == *" ${OPS_AGENT_PACKAGE} "* ]]; then
    add_ops_agent_repository
  fi
  log "installing: ${missing[*]}"
  apt_install "${missing[@]}"
}

nvswitch_machine() {
  ((GPU_COUNT >= NVSWITCH_MIN_GPUS))
}

# The fabric manager must be the driver's exact version (it refuses to start otherwise), so the
# package version is the one the archive has for the running driver, not the newest.
ensure_fabric_manager() {
  nvswitch_machine || return 0
  step "fabric-manager"
  if ! package_installed "$FABRIC_MANAGER_PACKAGE"; then
    local driver version
    driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | awk 'NR == 1')"
    with_retries apt_update_attempt || fail "apt could not update its package lists"
    version="$(apt-cache madison "$FABRIC_MANAGER_PACKAGE" |
      awk -v wanted="${driver}-" 'index($3, wanted) == 1 { print $3; exit }')"
    if [[ -z "$version" ]]; then
      fail "no ${FABRIC_MANAGER_PACKAGE} for driver ${driver} in the archive"
    fi
    log "installing ${FABRIC_MANAGER_PACKAGE} ${version} for driver ${driver}"
    apt_install "${FABRIC_MANAGER_PACKAGE}=${version}"
  fi
  if ! systemctl is-active --quiet "$FABRIC_MANAGER_SERVICE"; then
    run_bounded "$SERVICE_SECONDS" "starting ${FABRIC_MANAGER_SERVICE}" \
      systemctl enable --now "$FABRIC_MANAGER_SERVICE"
  fi
}

configure_docker() {
  step "docker"
  if ! grep -qs '"nvidia"' "$DOCKER_DAEMON_CONFIG"; then
    run nvidia-ctk runtime configure --runtime=docker --config="$DOCKER_DAEMON_CONFIG"
    run systemctl enable docker
    run_bounded "$SERVICE_SECONDS" "restarting Docker" systemctl restart docker
  elif ! systemctl is-active --quiet docker; then
    run_bounded "$SERVICE_SECONDS" "starting Docker" systemctl enable --now docker
  fi
}

configure_nginx() {
  step "nginx"
  # Nothing listens until the proxy step writes the site: the package's default site goes.
  if [[ -e "$NGINX_DEFAULT_SITE" || -L "$NGINX_DEFAULT_SITE" ]]; then
    rm -f "$NGINX_DEFAULT_SITE"
    run systemctl enable nginx
    run_bounded "$SERVICE_SECONDS" "reloading nginx" systemctl reload-or-restart nginx
  elif ! systemctl is-active --quiet nginx; then
    run_bounded "$SERVICE_SECONDS" "starting nginx" systemctl enable --now nginx
  fi
}

# observability.enabled: the agent runs with the stack's configuration (restarted when it
# changes). Disabled: an agent installed earlier is stopped and disabled, and stays so.
configure_ops_agent() {
  step "ops-agent"
  if [[ "$OBSERVABILITY" != enabled ]]; then
    if package_installed "$OPS_AGENT_PACKAGE" &&
      { systemctl is-enabled --quiet "$OPS_AGENT_SERVICE" || systemctl is-active --quiet "$OPS_AGENT_SERVICE"; }; then
      run_bounded "$SERVICE_SECONDS" "stopping ${OPS_AGENT_SERVICE}" \
        systemctl disable --now "$OPS_AGENT_SERVICE"
      log "observability is disabled: ${OPS_AGENT_SERVICE} stopped and disabled"
    else
      log "observability is disabled: no agent runs"
    fi
    return
  fi
  mkdir -p "$(dirname "$OPS_AGENT_CONFIG")"
  local pending="${OPS_AGENT_CONFIG}.tmp"
  base64 -d <<<"$OPS_AGENT_CONFIG_B64" >"$pending"
  if cmp -s "$pending" "$OPS_AGENT_CONFIG" && systemctl is-active --quiet "$OPS_AGENT_SERVICE"; then
    rm -f "$pending"
    log "${OPS_AGENT_SERVICE} runs with the current configuration"
    return
  fi
  mv -f "$pending" "$OPS_AGENT_CONFIG"
  log "wrote ${OPS_AGENT_CONFIG}"
  run systemctl enable "$OPS_AGENT_SERVICE"
  # The agent's own configuration check runs when it starts (its unit's ExecStartPre): a refusal
  # costs the host its metrics and logs, never its serving, so it is logged, not fatal.
  if ! run_bounded "$SERVICE_SECONDS" "restarting ${OPS_AGENT_SERVICE}" \
    systemctl restart "$OPS_AGENT_SERVICE"; then
    log "warning: ${OPS_AGENT_SERVICE} did not start: no metrics or logs from this host (journalctl -u 'google-cloud-ops-agent*'); serving goes on"
  fi
}

local_ssds() {
  local devices=()
  local device
  for device in $LOCAL_SSD_GLOB; do
    [[ -e "$device" ]] && devices+=("$device")
  done
  if ((${#devices[@]} > 0)); then
    printf '%s\n' "${devices[@]}"
  fi
}

# The cache array if it is already running, under whatever name udev gave it at boot (often
# /dev/md127): `mdadm --assemble` would fail on its busy members. Its mdadm name is
# "<homehost>:vllm-cache" or "vllm-cache".
active_cache_array() {
  local array
  array="$(mdadm --detail --scan 2>>"$STARTUP_LOG" | awk -v name="$CACHE_LABEL" '
    $1 == "ARRAY" {
      for (i = 3; i <= NF; i++) {
        if ($i == "name=" name || ($i ~ /^name=/ && $i ~ (":" name "$"))) { print $2; exit }
      }
    }' || true)"
  if [[ -n "$array" ]]; then
    printf '%s\n' "${ROOT}${array}"
  fi
}

# One device for the cache: the single SSD, or a RAID 0 across several (their throughput adds
# up; the cache holds only what can be downloaded again).
cache_device() {
  local devices=("$@")
  if ((${#devices[@]} == 1)); then
    printf '%s\n' "${devices[0]}"
    return
  fi
  # udev may still be assembling an array found at boot.
  run udevadm settle
  local array
  array="$(active_cache_array)"
  if [[ -n "$array" ]]; then
    log "cache array already active as ${array}"
    printf '%s\n' "$array"
    return
  fi
  if mdadm --examine "${devices[0]}" >>"$STARTUP_LOG" 2>&1; then
    run mdadm --assemble "$CACHE_ARRAY" "${devices[@]}" ||
      fail "mdadm could not assemble the cache array from ${devices[*]}"
  else
    # Blank SSDs: first boot, or after a stop or preemption, which discards local SSD data.
    run mdadm --create "$CACHE_ARRAY" --level=0 --raid-devices="${#devices[@]}" --run \
      "${devices[@]}" || fail "mdadm could not create the cache array on ${devices[*]}"
  fi
  run udevadm settle
  printf '%s\n' "$CACHE_ARRAY"
}

prepare_cache() {
  step "cache-disk"
  mkdir -p "$CACHE_DIR"
  local devices=()
  mapfile -t devices < <(local_ssds)
  if ((${#devices[@]} == 0)); then
    log "no local SSD: the model cache stays on the boot disk at ${CACHE_DIR}"
    return
  fi
  if mountpoint -q "$CACHE_DIR"; then
    log "model cache already mounted at ${CACHE_DIR}"
    return
  fi
  local device
  device="$(cache_device "${devices[@]}")"
  if [[ -z "$(blkid -o value -s TYPE "$device" || true)" ]]; then
    run mkfs.ext4 -F -q -m 0 -L "$CACHE_LABEL" "$device"
    run udevadm settle
  fi
  # Mounted here at every boot rather than from fstab: the filesystem may first have to be
  # recreated on SSDs that came back blank, and nothing should mount them before that. By label:
  # the array's device name is udev's choice.
  run mount -o discard,noatime -L "$CACHE_LABEL" "$CACHE_DIR"
  log "model cache on ${#devices[@]} local SSD(s) at ${CACHE_DIR}"
}

check_gpus() {
  step "gpu-count"
  local listed seen
  listed="$(nvidia-smi --list-gpus 2>>"$STARTUP_LOG")" || fail "nvidia-smi --list-gpus failed"
  seen="$(grep -c '^GPU ' <<<"$listed" || true)"
  log "nvidia-smi lists ${seen} GPU(s)"
  if ((seen != GPU_COUNT)); then
    fail "nvidia-smi lists ${seen} GPU(s), the machine type has ${GPU_COUNT}"
  fi
}

# Where `nvidia-smi -q` reports a fabric state (NVSwitch machines), every GPU must be
# "Completed": registered by the fabric manager. "N/A" and "Not Supported" mean no fabric.
# Prints the other states seen, comma-separated.
fabric_states_pending() {
  nvidia-smi -q 2>>"$STARTUP_LOG" |
    awk '/^[[:space:]]*Fabric[[:space:]]*$/ { fabric = 1; next }
      fabric && /^[[:space:]]*State[[:space:]]*:/ {
        sub(/^[^:]*:[[:space:]]*/, ""); fabric = 0
        if ($0 != "Completed" && $0 != "N/A" && $0 != "Not Supported") print
      }' | sort -u | paste -sd ',' -
}

check_gpu_fabric() {
  nvswitch_machine || return 0
  step "gpu-fabric"
  local attempt pending
  for ((attempt = 1; attempt <= FABRIC_WAIT_ATTEMPTS; attempt++)); do
    pending="$(fabric_states_pending)"
    if [[ -z "$pending" ]]; then
      log "GPU fabric registration complete"
      return
    fi
    log "GPU fabric state '${pending}', not Completed; checking again in ${FABRIC_WAIT_SECONDS}s"
    sleep "$FABRIC_WAIT_SECONDS"
  done
  local reason="GPU fabric state is '${pending}', not Completed"
  fail "${reason}: see journalctl -u ${FABRIC_MANAGER_SERVICE}"
}

# The mirror's Docker login helper (scripts/registry_login.sh, token from the metadata server),
# used here before the check image's pull, then by the run step and the unit's pull of a missing
# image. Written at every boot, so a new version of the project reaches the host with it.
install_registry_login() {
  [[ -n "$DOCKER_REGISTRY_HOST" ]] || return 0
  step "registry-login"
  mkdir -p "$(dirname "$REGISTRY_LOGIN")"
  write_if_changed "$REGISTRY_LOGIN" <<'VLLM_GCP_REGISTRY_LOGIN'
#!/usr/bin/env bash
# Logs Docker in to an Artifact Registry Docker host with the VM service account's short-lived
# access token from the metadata server, so `docker pull` works through the mirror.
#
# Usage (as root, before each pull; tokens last about an hour):
#   registry_login.sh us-central1-docker.pkg.dev
#
# The token travels only on pipes (curl -> this shell -> docker's stdin): never on a command
# line, never printed. Safe to run again at any time: each run replaces the stored credential.
# Each network operation has a time limit (curl's own, `timeout` for docker login and getent): a
# limit that hits fails the login with what it was doing. Self-contained (it is installed as a file
# and run by the unit as well as by the run step), so it does not use scripts/host_lib.sh.
# VLLM_GCP_METADATA_TOKEN_URL overrides the metadata endpoint for tests.
set -euo pipefail

readonly TOKEN_URL="${VLLM_GCP_METADATA_TOKEN_URL:-http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token}"
# Only Artifact Registry Docker hosts: the token must never be sent anywhere else.
readonly REGISTRY_HOST_PATTERN='^[a-z0-9-]+-docker\.pkg\.dev$'
readonly DOCKER_LOGIN_SECONDS=60
readonly LOOKUP_SECONDS=10

log() {
  echo "registry-login: $*" >&2
}

fail() {
  log "error: $*"
  exit 1
}

check_host() {
  local host=$1
  [[ $host =~ $REGISTRY_HOST_PATTERN ]] ||
    fail "refusing ${host@Q}: not an Artifact Registry Docker host (REGION-docker.pkg.dev)"
}

# Prints the access token (to a pipe or a command substitution, never to the log).
access_token() {
  local response token status=0
  # At most about a minute and a half: 6 tries of 10 s, their pauses, and curl's retry budget.
  response=$(curl --fail --silent --show-error --retry 5 --retry-connrefused --retry-max-time 60 \
    --connect-timeout 5 --max-time 10 --header "Metadata-Flavor: Google" "$TOKEN_URL") ||
    status=$?
  if ((status == 28)); then
    fail "timed out asking the metadata server for a token (curl --max-time 10, 6 tries)"
  elif ((status != 0)); then
    fail "the metadata server gave no token (is a service account attached to the VM?)"
  fi
  token=$(sed -n 's/.*"access_token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' <<<"$response")
  [[ -n $token ]] || fail "the metadata server's answer has no access_token"
  printf '%s' "$token"
}

docker_login() {
  local host=$1 token
  local status=0
  token=$(access_token)
  printf '%s' "$token" |
    timeout "$DOCKER_LOGIN_SECONDS" docker login --username oauth2accesstoken --password-stdin \
      "https://${host}" >/dev/null || status=$?
  if ((status == 124)); then
    fail "timed out after ${DOCKER_LOGIN_SECONDS} s: docker login to ${host}"
  elif ((status != 0)); then
    fail "docker login to ${host} was refused (does the service account have roles/artifactregistry.reader there?)"
  fi
}

main() {
  [[ $# -eq 1 ]] || fail "usage: registry_login.sh REGION-docker.pkg.dev"
  local host=$1
  check_host "$host"
  # systemd starts units without HOME; docker keeps credentials under HOME, where the pull
  # that follows (falling back to the user's home directory) looks for them.
  if [[ -z ${HOME:-} ]]; then
    HOME=$(timeout "$LOOKUP_SECONDS" getent passwd "$(id -u)" | cut -d: -f6)
    export HOME
  fi
  log "logging Docker in to ${host} as the VM's service account"
  docker_login "$host"
  log "logged in to ${host}"
}

main "$@"
# --- end of registry_login.sh
VLLM_GCP_REGISTRY_LOGIN
  chmod 0755 "$REGISTRY_LOGIN"
}

docker_login_to_mirror() {
  bounded --output "$STARTUP_LOG" "$DOCKER_LOGIN_SECONDS" \
    "logging Docker in to ${DOCKER_REGISTRY_HOST}" "$REGISTRY_LOGIN" "$DOCKER_REGISTRY_HOST"
}

pull_attempt() {
  if [[ -n "$DOCKER_REGISTRY_HOST" ]]; then
    docker_login_to_mirror || return 1
  fi
  run_bounded "$DOCKER_TIMEOUT_SECONDS" "pulling ${GPU_CHECK_IMAGE}" docker pull "$GPU_CHECK_IMAGE"
}

check_gpu_container() {
  step "gpu-container"
  if ! docker image inspect "$GPU_CHECK_IMAGE" >/dev/null 2>&1; then
    with_retries pull_attempt || fail "could not pull ${GPU_CHECK_IMAGE}"
  fi
  run_bounded "$DOCKER_TIMEOUT_SECONDS" "running nvidia-smi in a --gpus all container" \
    docker run --rm --gpus all "$GPU_CHECK_IMAGE" nvidia-smi ||
    fail "a --gpus all container cannot run nvidia-smi"
}

# prepared_image_value KEY: the value of KEY in the prepared image's marker (empty when absent).
prepared_image_value() {
  sed -n "s/^$1=//p" "$PREPARED_IMAGE_MARKER" | head -n 1
}

# A prepared image already holds the software below and the images it names: each install
# function then finds its part present and installs nothing. The run step pulls model.image
# whatever the image holds: Docker fetches only the layers it does not have.
report_prepared_image() {
  step "prepared-image"
  if [[ ! -f "$PREPARED_IMAGE_MARKER" ]]; then
    log "not a prepared image (no ${PREPARED_IMAGE_MARKER}): installing what is missing"
    return
  fi
  log "prepared image built $(prepared_image_value BUILT_AT) from $(prepared_image_value BASE_IMAGE):" \
    "NVIDIA driver $(prepared_image_value NVIDIA_DRIVER), docker.io $(prepared_image_value DOCKER)," \
    "nvidia-container-toolkit $(prepared_image_value NVIDIA_CONTAINER_TOOLKIT)," \
    "nginx $(prepared_image_value NGINX), Ops Agent $(prepared_image_value OPS_AGENT)"
  log "prepared image holds $(prepared_image_value VLLM_IMAGE) and $(prepared_image_value GPU_CHECK_IMAGE);" \
    "a model.image other than $(prepared_image_value VLLM_IMAGE) is pulled by the run step" \
    "(only the layers this image lacks)"
}

mark_ready() {
  step "ready"
  local pending="${READY_MARKER}.tmp"
  printf 'ready %s gpus=%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$GPU_COUNT" >"$pending"
  mv -f "$pending" "$READY_MARKER"
  log "host ready: ${READY_MARKER}"
}

main() {
  export DEBIAN_FRONTEND=noninteractive
  # Docker keeps registry credentials under HOME, which the script runner may not set.
  export HOME="${HOME:-/root}"
  begin_boot
  trap 'on_error "$LINENO" "$?" "$BASH_COMMAND"' ERR
  report_prepared_image
  hold_back_unattended_upgrades
  configure_apt_sources
  ensure_nvidia_driver
  ensure_packages
  ensure_fabric_manager
  configure_docker
  install_registry_login
  configure_nginx
  configure_ops_agent
  prepare_cache
  check_gpus
  check_gpu_fabric
  check_gpu_container
  mark_ready
}

# Sourced (scripts/prepare_image.sh on the image builder), it only defines its functions.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
