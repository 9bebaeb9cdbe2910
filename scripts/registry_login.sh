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
