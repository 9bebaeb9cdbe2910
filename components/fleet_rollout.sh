#!/usr/bin/env bash
# vllm-gcp: waits, on the machine that runs `pulumi up`, until the fleet's managed instance group
# runs the new instance template on every replica and is stable (every replica healthy, nothing
# being created, repaired or replaced), and when it is not within the deadline, says which
# replica and why. Stable means serving: with autohealing, a new replica's currentAction stays
# VERIFYING until its health check (vLLM ready behind Nginx) has answered HEALTHY once, and only
# then becomes NONE (the Compute API, ManagedInstance.currentAction, VERIFYING). Rendered by
# components/fleet.py and run by a pulumi_command local.Command after each change of the group's
# template, or of its fixed size. An autoscaled group's size is the autoscaler's: stable then
# includes a resize it has under way.
#
# Why not the provider's own wait: it reports only "timeout while waiting for state", never the
# replica nor its error (resource_compute_region_instance_group_manager.go,
# computeRIGMWaitForInstanceStatus). This asks the Compute API the way an operator would:
# `gcloud compute instance-groups managed wait-until` and `list-instances` (the Google Cloud CLI,
# authenticated: `gcloud auth login`). Portable to macOS's bash 3.2.
# For tests: VLLM_GCP_GCLOUD names the gcloud to run.
set -euo pipefail

readonly GROUP={{ shell:GROUP }}
readonly REGION={{ shell:REGION }}
readonly PROJECT={{ shell:PROJECT }}
readonly DEADLINE_SECONDS={{ shell:DEADLINE_SECONDS }}
readonly GCLOUD="${VLLM_GCP_GCLOUD:-gcloud}"
# What `list-instances` shows of each replica when the rollout does not finish.
readonly REPLICA_FORMAT='table(instance.basename(),zone.basename(),instanceStatus,currentAction,version.instanceTemplate.basename():label=TEMPLATE,instanceHealth[0].detailedHealthState:label=HEALTH,lastAttempt.errors.errors[0].code:label=LAST_ERROR,lastAttempt.errors.errors[0].message:label=MESSAGE)'

log() {
  printf '[fleet rollout] %s\n' "$*"
}

fail() {
  printf '[fleet rollout] %s\n' "$*" >&2
  exit 1
}

group() {
  "$GCLOUD" compute instance-groups managed "$@" "$GROUP" --region "$REGION" --project "$PROJECT"
}

report_replicas() {
  {
    log "the replicas of ${GROUP} now:"
    group list-instances --format "$REPLICA_FORMAT" || log "(gcloud could not list them)"
  } >&2
}

main() {
  if ! command -v "$GCLOUD" >/dev/null 2>&1; then
    fail "a fleet's rollout is watched with the Google Cloud CLI, and ${GCLOUD} is not on PATH: install it (cloud.google.com/sdk), run \`gcloud auth login\`, then \`pulumi up\` again"
  fi
  local started=$SECONDS remaining
  log "waiting up to ${DEADLINE_SECONDS} s for ${GROUP} (${REGION}) to run its new template on every replica"
  if ! group wait-until --version-target-reached --timeout "$DEADLINE_SECONDS"; then
    report_replicas
    fail "${GROUP} did not put its new template on every replica within ${DEADLINE_SECONDS} s (see MESSAGE above: capacity, quota, or a replica that never becomes healthy)"
  fi
  remaining=$((DEADLINE_SECONDS - (SECONDS - started)))
  if ((remaining < 60)); then
    remaining=60
  fi
  log "every replica runs the new template; waiting up to ${remaining} s for the group to be stable"
  if ! group wait-until --stable --timeout "$remaining"; then
    report_replicas
    fail "${GROUP} was not stable within ${DEADLINE_SECONDS} s: a replica is still being created, repaired or replaced (see above)"
  fi
  log "${GROUP} is stable on its new template after $((SECONDS - started)) s"
}

main "$@"
