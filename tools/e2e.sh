#!/usr/bin/env bash
# End-to-end test on a real GCP project: a short-lived stack from the dev configuration,
# `pulumi up`, the smoke test, `pulumi destroy`, and the stack removed, also when a step fails.
#
#   GCP_PROJECT=my-project SSH_CIDR=203.0.113.7/32 vllm-gcp e2e
#
# (`vllm-gcp e2e` runs this script; `bash tools/e2e.sh` is the same.) It creates billable
# resources (the dev stack's GPU VM) for the length of the run; the summary at the end prints
# the machine type, whether it was Spot, and the elapsed time. After `pulumi up` it reads the
# first start's phases from the host over SSH (VM booted, host ready, vLLM image present, weights
# loaded, serving), each in seconds after `pulumi up` began (docs/prepared-image.md).
# Environment: GCP_PROJECT and SSH_CIDR (required); VLLM_GCP, the vllm-gcp command that runs the
# smoke test (default: the project's venv/bin/vllm-gcp, else vllm-gcp on PATH).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="e2e-$(date -u +%Y%m%d-%H%M%S)-${RANDOM}"
readonly REPO_DIR STACK
readonly SOURCE_STACK="dev"
readonly SOURCE_FILE="${REPO_DIR}/stacks/Pulumi.${SOURCE_STACK}.yaml"
readonly STACK_FILE="${REPO_DIR}/stacks/Pulumi.${STACK}.yaml"

stack_created=false
machine_type="unknown"
provisioning="unknown"
deploy_started=0
timeline="not recorded"
# Read on the host as root, printing "<phase> <epoch seconds or unknown>" lines only (never a log
# line: journal lines may hold what the host must keep). The paths are components/host_paths.py's
# (READY_MARKER, the prepared image's marker) and the container's name host_bundle.CONTAINER_NAME.
# vLLM logs "Model loading took ..." once the weights are on the GPUs and uvicorn "Application
# startup complete." once it serves.
# shellcheck disable=SC2016
readonly TIMELINE_PROBE='
epoch() {
  local at=0
  [[ -z $1 ]] || at="$(date -u -d "$1" +%s 2>/dev/null)" || at=0
  if ((at > 0)); then echo "${at}"; else echo unknown; fi
}
first_journal() {
  local at
  at="$(journalctl -u vllm.service -o short-unix --no-pager 2>/dev/null | grep -m1 -F "$1" | cut -d" " -f1)"
  echo "${at%.*}"
}
echo "booted $(awk "/^btime/ { print \$2 }" /proc/stat)"
echo "host_ready $(epoch "$(sed -n "s/^ready \([^ ]*\) .*/\1/p" /var/lib/vllm-gcp/host-ready 2>/dev/null)")"
image="$(docker inspect -f "{{.Config.Image}}" vllm 2>/dev/null)"
echo "image_present $(epoch "$(docker image inspect -f "{{.Metadata.LastTagTime}}" "$image" 2>/dev/null)")"
echo "weights_loaded $(first_journal "Model loading took")"
echo "serving $(first_journal "Application startup complete")"
echo "prepared $([[ -f /usr/lib/vllm-gcp/prepared-image.env ]] && echo yes || echo no)"
'

log() {
  printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2
}

die() {
  log "error: $*"
  exit 2
}

usage() {
  cat <<EOF
usage: ${VLLM_GCP_PROG:-tools/e2e.sh} [-h]

End-to-end test on a real GCP project: a short-lived stack (e2e-<UTC time>-<random>) with the
dev stack's configuration, pulumi up, the smoke test, pulumi destroy, and the stack removed, also
when a step fails. It bills the dev stack's GPU VM while it runs (allow up to an hour).

environment:
  GCP_PROJECT  the GCP project to test in (required)
  SSH_CIDR     your public address, e.g. 203.0.113.7/32 (required)
  VLLM_GCP     the vllm-gcp command that runs the smoke test (default: venv/bin/vllm-gcp)

Exit code: 0 when every step passed, else that of the first failure (2: bad arguments).
EOF
}

default_cli() {
  if [[ -x "${REPO_DIR}/venv/bin/vllm-gcp" ]]; then
    printf '%s\n' "${REPO_DIR}/venv/bin/vllm-gcp"
  else
    printf '%s\n' vllm-gcp
  fi
}

parse_args() {
  case "${1:-}" in
    "") ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      die "unexpected argument: $1 (the run takes its settings from the environment)"
      ;;
  esac
}

check_requirements() {
  [[ -n "${GCP_PROJECT:-}" ]] || die "set GCP_PROJECT to the GCP project to test in"
  [[ -n "${SSH_CIDR:-}" ]] || die "set SSH_CIDR to your public address, e.g. 203.0.113.7/32"
  command -v pulumi >/dev/null || die "the pulumi CLI is not on PATH"
  [[ -f "${SOURCE_FILE}" ]] || die "${SOURCE_FILE} is missing"
}

# The new stack gets the dev stack's configuration. Plain values are appended to the stack file
# `pulumi stack init` wrote (keeping its encryption settings); secrets are encrypted per stack, so
# a dev file holding any is copied with `pulumi config cp`, which needs the dev stack to exist.
copy_dev_config() {
  if grep -q 'secure:' "${SOURCE_FILE}"; then
    log "copying the ${SOURCE_STACK} stack's configuration, secrets included (pulumi config cp)"
    pulumi config cp --stack "${SOURCE_STACK}" --dest "${STACK}"
    return
  fi
  if [[ -f "${STACK_FILE}" ]] && grep -q '^config:' "${STACK_FILE}"; then
    die "${STACK_FILE} already has a config block"
  fi
  log "copying ${SOURCE_FILE#"${REPO_DIR}/"} into ${STACK_FILE#"${REPO_DIR}/"}"
  sed -n '/^config:/,$p' "${SOURCE_FILE}" >>"${STACK_FILE}"
}

create_stack() {
  log "creating stack ${STACK}"
  pulumi stack init "${STACK}" --non-interactive
  stack_created=true
  copy_dev_config
  pulumi config set --stack "${STACK}" gcp:project "${GCP_PROJECT}"
  pulumi config set --stack "${STACK}" --path 'vllm-gcp:access.sshCidrs[0]' "${SSH_CIDR}"
  machine_type="$(pulumi config get --stack "${STACK}" --path 'vllm-gcp:host.machineType')"
  provisioning="$(pulumi config get --stack "${STACK}" --path 'vllm-gcp:host.provisioning')"
  log "machine type ${machine_type}, provisioning ${provisioning}"
}

deploy() {
  deploy_started="$(date -u +%s)"
  log "pulumi up (a first start downloads the model: allow up to an hour)"
  pulumi up --stack "${STACK}" --yes --skip-preview --non-interactive
}

# "+<seconds after pulumi up began>", or the reason there is none.
since_deploy() {
  case "$1" in
    "" | unknown) printf 'unknown' ;;
    *) printf '%+ds' "$(($1 - deploy_started))" ;;
  esac
}

# Best effort: a host it cannot reach leaves the run's result alone.
record_timeline() {
  local address user work probe phase at
  address="$(pulumi stack output --stack "${STACK}" publicIp 2>/dev/null || true)"
  user="$(pulumi stack output --stack "${STACK}" sshUser 2>/dev/null || true)"
  if [[ -z "${address}" || "${address}" == null || -z "${user}" ]]; then
    timeline="not recorded (no publicIp or sshUser output to reach the host)"
    return 0
  fi
  work="$(mktemp -d)"
  chmod 0700 "${work}"
  # The stack's key, only for this connection; the host's key is new: trusted on first use.
  if ! pulumi stack output --stack "${STACK}" --show-secrets sshPrivateKey >"${work}/key" 2>/dev/null; then
    rm -rf -- "${work}"
    timeline="not recorded (no sshPrivateKey output)"
    return 0
  fi
  chmod 0600 "${work}/key"
  log "reading the first start's phases from ${user}@${address}"
  if ! probe="$(ssh -i "${work}/key" -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=20 \
    -o ServerAliveInterval=10 -o ServerAliveCountMax=3 -o StrictHostKeyChecking=accept-new \
    -o UserKnownHostsFile="${work}/known_hosts" "${user}@${address}" sudo -n bash -s \
    <<<"${TIMELINE_PROBE}")"; then
    rm -rf -- "${work}"
    timeline="not recorded (ssh to ${address} failed)"
    return 0
  fi
  rm -rf -- "${work}"
  timeline=""
  while read -r phase at; do
    case "${phase}" in
      booted) timeline+="VM booted $(since_deploy "${at}"), " ;;
      host_ready) timeline+="host ready $(since_deploy "${at}"), " ;;
      image_present) timeline+="image present $(since_deploy "${at}"), " ;;
      weights_loaded) timeline+="weights loaded $(since_deploy "${at}"), " ;;
      serving) timeline+="serving $(since_deploy "${at}"), " ;;
      prepared) timeline+="prepared image ${at}" ;;
      *) ;;
    esac
  done <<<"${probe}"
  log "timeline: ${timeline}"
}

smoke_test() {
  local cli
  cli="${VLLM_GCP:-$(default_cli)}"
  log "smoke test"
  (cd "${REPO_DIR}" && "${cli}" smoke --stack "${STACK}")
}

# Destroys and removes the stack; keeps it (and says how to finish) when destroy fails, since
# removing a stack that still has resources would orphan them.
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ "${stack_created}" == true ]]; then
    log "destroying stack ${STACK}"
    if pulumi destroy --stack "${STACK}" --yes --skip-preview --non-interactive; then
      pulumi stack rm --stack "${STACK}" --yes --non-interactive || status=1
      rm -f "${STACK_FILE}"
    else
      log "destroy failed: finish with 'pulumi destroy --stack ${STACK}' and 'pulumi stack rm ${STACK}'"
      status=1
    fi
  fi
  log "timeline after pulumi up began: ${timeline}"
  log "summary: stack ${STACK}, machine type ${machine_type}, spot $([[ "${provisioning}" == spot ]] && echo yes || echo no), elapsed $((SECONDS / 60))m$((SECONDS % 60))s, $([[ ${status} -eq 0 ]] && echo passed || echo "failed (exit ${status})")"
  exit "${status}"
}

main() {
  parse_args "$@"
  check_requirements
  cd "${REPO_DIR}"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  create_stack
  deploy
  record_timeline
  smoke_test
}

main "$@"
