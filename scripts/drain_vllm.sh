#!/usr/bin/env bash
# vllm-gcp drain: the first ExecStop of vllm.service (scripts/vllm.service), so it runs on
# `systemctl stop`/`restart`, on a shutdown (an autoscaler's scale-in, a group's update, a VM
# deletion) and before `docker stop`. Installed by the run step (scripts/install_vllm.sh).
#
#   drain-vllm MARKER METRICS_URL SETTLE_SECONDS LIMIT_SECONDS POLL_SECONDS
#
# 1. Writes MARKER: Nginx then refuses new API requests (single VM) or fails the load balancer's
#    health route, so the load balancer sends this replica nothing new (fleet).
# 2. Waits until vLLM has no request running or waiting (vllm:num_requests_running and
#    vllm:num_requests_waiting on its loopback /metrics, every POLL_SECONDS) and SETTLE_SECONDS
#    have passed (the load balancer's health check needs that long to see the failure, and
#    sends requests until then), or until LIMIT_SECONDS, whichever comes first.
# 3. Exits 0 whatever happened: the unit's next ExecStop stops the container. vLLM not
#    answering means there is nothing left to finish.
#
# Lines go to stderr, which systemd puts in the unit's journal. No secret passes through here:
# /metrics answers without the API key.
set -euo pipefail

readonly LOG_TAG="vllm-gcp-drain"
readonly REQUEST_SECONDS=5

log() {
  printf '%s: %s\n' "$LOG_TAG" "$*" >&2
}

# Requests in flight (running plus waiting, over every series), from the Prometheus text on
# stdin; nothing when neither metric is there. Labels go first: a label value may hold a space.
in_flight() {
  awk '
    /^vllm:num_requests_(running|waiting)[{ ]/ {
      line = $0
      sub(/\{.*\}/, "", line)
      split(line, field, " ")
      total += field[2]
      seen = 1
    }
    END { if (seen) printf "%d\n", total }'
}

main() {
  if (($# != 5)); then
    log "usage: drain-vllm MARKER METRICS_URL SETTLE_SECONDS LIMIT_SECONDS POLL_SECONDS"
    exit 2
  fi
  local marker=$1 url=$2 settle=$3 limit=$4 poll=$5 metrics count
  mkdir -p -- "$(dirname -- "$marker")"
  : >"$marker"
  log "draining: new requests are refused from now on (${marker}); waiting up to ${limit} s for the ones in flight"
  while :; do
    if ! metrics="$(curl -fsS --max-time "$REQUEST_SECONDS" "$url" 2>/dev/null)"; then
      log "vLLM does not answer on ${url}: nothing left to finish"
      return 0
    fi
    count="$(in_flight <<<"$metrics")"
    if [[ -z $count ]]; then
      log "${url} has no vllm:num_requests_running or vllm:num_requests_waiting: not waiting"
      return 0
    fi
    if ((count == 0 && SECONDS >= settle)); then
      log "drained after ${SECONDS} s: no request running or waiting"
      return 0
    fi
    if ((SECONDS >= limit)); then
      log "drain limit of ${limit} s reached with ${count} request(s) in flight: stopping anyway"
      return 0
    fi
    sleep "$poll"
  done
}

main "$@"
