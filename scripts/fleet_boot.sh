#!/usr/bin/env bash
# vllm-gcp fleet replica boot: GCE runs it as root at every boot (the instance template's
# metadata "startup-script", components/fleet.py). It does on the replica what the single VM's
# `pulumi up` does over SSH, with the same files: the host setup (scripts/startup.sh), then the
# secrets, run, proxy and serving steps, each the very script the single VM's remote step runs,
# each under its time limit.
#
# Where the files come from: the scripts and the systemd unit are instance metadata attributes
# (nothing in them is secret); the env file (the API key, the Hugging Face token) and the proxy's
# bundle (the Nginx site, which holds the API key, and the TLS key) are Secret Manager secret
# versions, read with the replica's own service account, which may read exactly those two. The
# secrets travel on pipes only: never an argument, a file outside the root-only ones the steps
# write, or a log line.
#
# Idempotent: every step is (the single VM re-runs them on changes), so a reboot or a repair
# brings the replica back as it was. A failure stops the boot with the step's message in the
# journal (`journalctl -t vllm-gcp-fleet-boot`) and the serial console; the group's health check
# then keeps the replica out of the load balancer and autohealing recreates it.
#
# Tests run it with stand-ins for curl, logger, sleep and the steps; VLLM_GCP_METADATA_URL and
# VLLM_GCP_SECRET_MANAGER_URL point it at them, VLLM_GCP_ROOT at a directory standing for /.
set -euo pipefail

# vllm-gcp:include host_lib.sh

readonly ROOT="${VLLM_GCP_ROOT:-}"
readonly READY_MARKER="${ROOT}"{{ shell:READY_MARKER }}
readonly REBOOTING_MARKER="${ROOT}"{{ shell:REBOOTING_MARKER }}
readonly METADATA_URL="${VLLM_GCP_METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}"
readonly SECRET_MANAGER_URL="${VLLM_GCP_SECRET_MANAGER_URL:-https://secretmanager.googleapis.com/v1}"
readonly ENV_SECRET_VERSION={{ shell:ENV_SECRET_VERSION }}
readonly PROXY_SECRET_VERSION={{ shell:PROXY_SECRET_VERSION }}
readonly HOST_SETUP_SECONDS={{ shell:HOST_SETUP_SECONDS }}
readonly SECRETS_SECONDS={{ shell:SECRETS_SECONDS }}
readonly RUN_SECONDS={{ shell:RUN_SECONDS }}
readonly PROXY_SECONDS={{ shell:PROXY_SECONDS }}
readonly SERVING_SECONDS={{ shell:SERVING_SECONDS }}
readonly LOG_TAG="vllm-gcp-fleet-boot"
readonly REQUEST_SECONDS=30
# Grants made with the template take minutes to reach a new replica's first boot.
readonly SECRET_ATTEMPTS=20
readonly RETRY_SECONDS=30

work_dir=""

cleanup() {
  if [[ -n $work_dir ]]; then
    rm -rf -- "$work_dir"
  fi
}

journal() {
  logger -t "$LOG_TAG" -- "$*" || true
}

# A metadata attribute of this instance (a script or the unit), to stdout.
attribute() {
  bounded "$REQUEST_SECONDS" "reading the instance attribute $1" \
    curl -fsS --retry 5 --retry-connrefused --max-time 10 -H "Metadata-Flavor: Google" \
    "${METADATA_URL}/instance/attributes/$1"
}

# The service account's access token, to stdout (a pipe or a variable only).
access_token() {
  local response token
  response="$(curl -fsS --retry 5 --retry-connrefused --max-time 10 \
    -H "Metadata-Flavor: Google" "${METADATA_URL}/instance/service-accounts/default/token")" ||
    return 1
  token="$(sed -n 's/.*"access_token"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' <<<"$response")"
  [[ -n $token ]] || return 1
  printf '%s' "$token"
}

# One attempt to read a secret version's payload into the file $2 (root-only). The token goes to
# curl as a header file on a pipe; the answer stays in a variable and reaches Python's json and
# base64 modules on a pipe (printf is a builtin: no argument list holds it).
secret_attempt() {
  local version=$1 target=$2 token response
  token="$(access_token)" || return 1
  response="$(curl -fsS --max-time 20 --header @<(printf 'Authorization: Bearer %s\n' "$token") \
    "${SECRET_MANAGER_URL}/${version}:access")" || return 1
  printf '%s' "$response" | python3 -c 'import base64, json, sys
sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)["payload"]["data"]))' >"$target"
}

read_secret() {
  local version=$1 target=$2 attempt
  doing "reading ${version} from Secret Manager"
  for ((attempt = 1; attempt <= SECRET_ATTEMPTS; attempt++)); do
    if secret_attempt "$version" "$target"; then
      return 0
    fi
    log "could not read ${version} (attempt ${attempt}/${SECRET_ATTEMPTS}: the grant may still be propagating); retrying in ${RETRY_SECONDS}s" >&2
    sleep "$RETRY_SECONDS"
  done
  fail "could not read ${version} from Secret Manager: does this replica's service account have roles/secretmanager.secretAccessor on it?"
}

# Runs the script in the attribute $2 as step $1 under its limit $3, with stdin from the file $4
# (or nothing), as the single VM's remote steps run it (components/remote_access.py).
run_step() {
  local name=$1 key=$2 limit=$3 input=${4:-/dev/null} script
  script="${work_dir}/${key}.sh"
  attribute "$key" >"$script"
  log "${name}: running (limit ${limit} s)"
  journal "${name}: running"
  doing "the ${name} step"
  if ! bounded "$limit" "the ${name} step" \
    env VLLM_GCP_STEP_LIMIT_SECONDS="$limit" bash "$script" <"$input"; then
    journal "${name}: failed"
    fail "the ${name} step failed (its lines above, and in the journal)"
  fi
  journal "${name}: done"
}

# The host setup ends with the host ready, or with a reboot to load a driver it installed (the
# boot then starts again, and this time finds the driver loaded).
host_is_ready() {
  if [[ -f $READY_MARKER ]]; then
    return 0
  fi
  if [[ -f $REBOOTING_MARKER ]]; then
    log "the host setup is rebooting the replica to load the NVIDIA driver; the boot continues after it"
    journal "rebooting for the driver"
    return 1
  fi
  fail "the host setup ended without marking the host ready (${READY_MARKER})"
}

main() {
  step_begin "fleet boot"
  work_dir="$(mktemp -d)"
  chmod 0700 "$work_dir"
  trap cleanup EXIT
  journal "boot begins"
  run_step "host setup" vllm-gcp-host-setup "$HOST_SETUP_SECONDS"
  host_is_ready || return 0
  read_secret "$ENV_SECRET_VERSION" "${work_dir}/secrets.env"
  run_step "secrets" vllm-gcp-step-secrets "$SECRETS_SECONDS" "${work_dir}/secrets.env"
  rm -f -- "${work_dir}/secrets.env"
  attribute vllm-gcp-unit >"${work_dir}/vllm.service"
  run_step "run" vllm-gcp-step-run "$RUN_SECONDS" "${work_dir}/vllm.service"
  read_secret "$PROXY_SECRET_VERSION" "${work_dir}/proxy.bundle"
  run_step "proxy" vllm-gcp-step-proxy "$PROXY_SECONDS" "${work_dir}/proxy.bundle"
  rm -f -- "${work_dir}/proxy.bundle"
  run_step "serving" vllm-gcp-step-serving "$SERVING_SECONDS"
  log "replica ready: vLLM serves behind Nginx"
  journal "replica ready"
}

main "$@"
