# vllm-gcp remote step: the script below, run under GNU timeout (last line).
VLLM_GCP_STEP_SCRIPT=$(cat <<'VLLM_GCP_STEP_SCRIPT_END'
#!/usr/bin/env bash
# letsencrypt mode: obtains (or keeps) a Let's Encrypt certificate for the domain with certbot,
# HTTP-01 through Nginx on port 80 (webroot). Fails first, and clearly, when the domain does not
# resolve to the endpoint's address. Renewal: certbot's systemd timer, reloading Nginx after each
# new certificate. The certificate's lineage is named after the domain, so every renewal updates
# /etc/letsencrypt/live/<domain>/, where Nginx reads it. Runs as root (rendered by
# components/tls_proxy.py, run through sudo), under the step's time limit
# (components/remote_access.py); each network operation has its own.
set -euo pipefail

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

readonly DOMAIN='llm.example.com'
readonly EMAIL='ops@example.com'
readonly ADDRESS='203.0.113.10'
readonly ACME_WEBROOT='/var/www/vllm-gcp-acme'
readonly BOOTSTRAP_SITE_PATH='/etc/nginx/sites-enabled/vllm-gcp-acme.conf'
# apt-daily starts right after the VM's startup script and holds apt's locks for minutes; the
# lock timeout does not cover the package lists' lock `apt-get update` takes, so the install is
# retried for about ten minutes.
readonly APT_ATTEMPTS=20
readonly APT_RETRY_SECONDS=30
# Each apt-get run: the lock timeout (600 s) and the downloads. An interrupted install leaves dpkg
# to be finished (dpkg --configure -a), so the limit is generous; the step's own ends the retries.
readonly APT_SECONDS=900
readonly RESOLVE_SECONDS=30
readonly CERTBOT_SECONDS=600
readonly RELOAD_SECONDS=120

check_domain_resolves_to_address() {
  local answer="" resolved
  bounded_capture answer "$RESOLVE_SECONDS" "resolving ${DOMAIN}" getent ahostsv4 "$DOMAIN" || true
  resolved="$(awk '{ print $1 }' <<<"$answer" | sort -u | tr '\n' ' ')"
  if [[ " $resolved " != *" $ADDRESS "* ]]; then
    log "tls.domain $DOMAIN resolves to '${resolved% }', not to this endpoint's address $ADDRESS."
    fail "Point an A record for $DOMAIN at $ADDRESS, wait for it to propagate, run pulumi up again."
  fi
  log "$DOMAIN resolves to $ADDRESS"
}

apt_install_certbot() {
  bounded "$APT_SECONDS" "apt-get update" apt-get -o DPkg::Lock::Timeout=600 update -q &&
    bounded "$APT_SECONDS" "installing certbot with apt-get" \
      env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q certbot
}

install_certbot() {
  if command -v certbot >/dev/null; then
    log "certbot present"
    return 0
  fi
  local attempt
  for ((attempt = 1; attempt <= APT_ATTEMPTS; attempt++)); do
    log "installing certbot (attempt ${attempt}/${APT_ATTEMPTS})"
    if apt_install_certbot; then
      return 0
    fi
    if ((attempt < APT_ATTEMPTS)); then
      log "apt failed (its locks may be held by apt-daily); retrying in ${APT_RETRY_SECONDS}s"
      sleep "$APT_RETRY_SECONDS"
    fi
  done
  fail "could not install certbot with apt after ${APT_ATTEMPTS} attempts"
}

reload_nginx() {
  nginx -t
  bounded "$RELOAD_SECONDS" "reloading nginx" systemctl reload-or-restart nginx
}

# Until the vllm-gcp site exists (it needs this certificate), a minimal port-80 site for the
# domain serves the challenges; the vllm-gcp site serves them itself for renewals.
serve_challenges() {
  doing "serving the ACME challenges for ${DOMAIN} on port 80"
  (umask 022 && mkdir -p -- "$ACME_WEBROOT")
  cat >"$BOOTSTRAP_SITE_PATH" <<EOF
server {
    listen 80;
    server_name $DOMAIN;
    server_tokens off;
    location /.well-known/acme-challenge/ {
        root $ACME_WEBROOT;
    }
    location / {
        return 404;
    }
}
EOF
  reload_nginx
}

stop_serving_challenges() {
  rm -f -- "$BOOTSTRAP_SITE_PATH"
  reload_nginx
}

obtain_certificate() {
  log "requesting a certificate for $DOMAIN (kept if current)"
  bounded "$CERTBOT_SECONDS" "obtaining a certificate for ${DOMAIN} from Let's Encrypt (HTTP-01)" \
    certbot certonly --non-interactive --agree-tos --email "$EMAIL" \
    --cert-name "$DOMAIN" --webroot --webroot-path "$ACME_WEBROOT" --domain "$DOMAIN" \
    --keep-until-expiring --deploy-hook "systemctl reload nginx"
}

enable_renewal() {
  systemctl enable --now certbot.timer
  log "renewal: certbot.timer, deploy hook 'systemctl reload nginx'"
}

main() {
  step_begin "letsencrypt" stderr
  check_domain_resolves_to_address
  install_certbot
  serve_challenges
  trap stop_serving_challenges EXIT
  obtain_certificate
  enable_renewal
}

main "$@"
VLLM_GCP_STEP_SCRIPT_END
) && exec sudo -n timeout --kill-after=20 1140 env VLLM_GCP_STEP_LIMIT_SECONDS=1140 bash -c "$VLLM_GCP_STEP_SCRIPT"
