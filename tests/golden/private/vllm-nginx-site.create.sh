# vllm-gcp remote step: the script below, run under GNU timeout (last line).
VLLM_GCP_STEP_SCRIPT=$(cat <<'VLLM_GCP_STEP_SCRIPT_END'
#!/usr/bin/env bash
# Installs the vllm-gcp Nginx site (and its certificate and key, where given) from stdin, checks
# the result with `nginx -t` and reloads Nginx. A configuration that fails the check is rolled
# back, so the running proxy stays as it was, and the step fails with nginx's message.
# It also sizes Nginx's workers in the distribution's nginx.conf, which the site cannot do (it is
# included inside `http {}`): worker_connections (events {}) and worker_rlimit_nofile, in place.
#
# stdin: one line per file, "<name> <base64 of the content>"; names: site (required),
# certificate, private_key. Nothing read from stdin is echoed: the site holds the API token.
# Runs as root (rendered by components/tls_proxy.py, run through sudo), under the step's time
# limit (components/remote_access.py); the reload of Nginx has its own.
set -euo pipefail
umask 077

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

readonly SITE_PATH='/etc/nginx/sites-available/vllm-gcp.conf'
readonly SITE_ENABLED_PATH='/etc/nginx/sites-enabled/vllm-gcp.conf'
readonly DEFAULT_SITE_ENABLED_PATH='/etc/nginx/sites-enabled/default'
readonly CERTIFICATE_PATH='/etc/vllm-gcp/tls/server.crt'
readonly CERTIFICATE_KEY_PATH='/etc/vllm-gcp/tls/server.key'
readonly ACME_WEBROOT='/var/www/vllm-gcp-acme'
readonly NGINX_CONF='/etc/nginx/nginx.conf'
readonly WORKER_CONNECTIONS='8192'
readonly WORKER_RLIMIT_NOFILE='16384'
readonly RELOAD_SECONDS=120

STAGING_DIR="$(mktemp -d)"
BACKUP_DIR="$(mktemp -d)"
readonly STAGING_DIR BACKUP_DIR
trap 'rm -rf -- "$STAGING_DIR" "$BACKUP_DIR"' EXIT
# True between installing the new files and nginx -t accepting them.
unchecked=false

destination_of() {
  case "$1" in
    site) echo "$SITE_PATH" ;;
    certificate) echo "$CERTIFICATE_PATH" ;;
    private_key) echo "$CERTIFICATE_KEY_PATH" ;;
    *) return 1 ;;
  esac
}

read_files_from_stdin() {
  local name payload
  doing "reading the site and its certificate from stdin"
  while read -r name payload || [[ -n "${name:-}" ]]; do
    if [[ -z "$name" ]]; then
      continue
    fi
    if ! destination_of "$name" >/dev/null; then
      fail "unknown file '$name' on stdin (expected site, certificate, private_key)"
    fi
    if ! printf '%s' "$payload" | base64 --decode >"$STAGING_DIR/$name"; then
      fail "the $name on stdin is not valid base64"
    fi
    name=""
  done
  if [[ ! -s "$STAGING_DIR/site" ]]; then
    fail "no site on stdin"
  fi
}

# Every path this step may change: the staged files' destinations and the enabled-site links.
managed_paths() {
  local staged
  for staged in "$STAGING_DIR"/*; do
    destination_of "$(basename "$staged")"
  done
  echo "$SITE_ENABLED_PATH"
  echo "$DEFAULT_SITE_ENABLED_PATH"
  echo "$NGINX_CONF"
}

backup_managed_paths() {
  local path index=0
  while read -r path; do
    if [[ -e "$path" || -L "$path" ]]; then
      cp -a -- "$path" "$BACKUP_DIR/$index"
    fi
    echo "$path" >"$BACKUP_DIR/$index.path"
    index=$((index + 1))
  done < <(managed_paths)
}

restore_managed_paths() {
  local record path
  for record in "$BACKUP_DIR"/*.path; do
    path="$(cat "$record")"
    rm -f -- "$path"
    if [[ -e "${record%.path}" || -L "${record%.path}" ]]; then
      cp -a -- "${record%.path}" "$path"
    fi
  done
}

install_staged_files() {
  local staged destination
  doing "installing the site"
  unchecked=true
  for staged in "$STAGING_DIR"/*; do
    destination="$(destination_of "$(basename "$staged")")"
    mkdir -p -- "$(dirname "$destination")"
    install -m 0600 "$staged" "$destination"
    log "installed $destination"
  done
  ln -sfn "$SITE_PATH" "$SITE_ENABLED_PATH"
  # The distribution's default site also claims port 80 as the default server.
  rm -f -- "$DEFAULT_SITE_ENABLED_PATH"
  # Served by Nginx's workers: readable by all, unlike everything else this step writes.
  (umask 022 && mkdir -p -- "$ACME_WEBROOT")
}

readonly NUMBER='[0-9]+'

# Checked before anything is installed: a failure then leaves the host as it was.
require_sizable_nginx_conf() {
  if ! grep -Eq "^[[:space:]]*worker_connections[[:space:]]+$NUMBER;" "$NGINX_CONF"; then
    fail "$NGINX_CONF has no 'worker_connections N;' line in its events block to size"
  fi
}

# Slow clients hold a worker connection each until client_header_timeout: the distribution's
# 768 per worker is raised, and each worker may open a file per connection and as many again.
size_nginx_workers() {
  doing "sizing Nginx's workers in $NGINX_CONF"
  sed -E -i "s/^([[:space:]]*)worker_connections[[:space:]]+$NUMBER;/\1worker_connections $WORKER_CONNECTIONS;/" "$NGINX_CONF"
  if grep -Eq "^[[:space:]]*worker_rlimit_nofile[[:space:]]+$NUMBER;" "$NGINX_CONF"; then
    sed -E -i "s/^([[:space:]]*)worker_rlimit_nofile[[:space:]]+$NUMBER;/\1worker_rlimit_nofile $WORKER_RLIMIT_NOFILE;/" "$NGINX_CONF"
  else
    sed -i "1i worker_rlimit_nofile $WORKER_RLIMIT_NOFILE;" "$NGINX_CONF"
  fi
  log "nginx workers: $WORKER_CONNECTIONS connections, $WORKER_RLIMIT_NOFILE files each"
}

# Called by the library's trap when the step's limit stops it: files not yet checked go back.
on_stop() {
  if $unchecked; then
    restore_managed_paths
  fi
}

check_or_roll_back() {
  local output
  if output="$(nginx -t 2>&1)"; then
    unchecked=false
    log "nginx -t: configuration is valid"
    return 0
  fi
  restore_managed_paths
  log "nginx -t rejected the new configuration; the previous one is back in place:"
  echo "$output" >&2
  exit 1
}

reload_nginx() {
  systemctl enable --quiet nginx
  bounded "$RELOAD_SECONDS" "reloading nginx" systemctl reload-or-restart nginx
  log "nginx reloaded with the vllm-gcp site"
}

main() {
  step_begin "configure proxy" stderr
  read_files_from_stdin
  require_sizable_nginx_conf
  backup_managed_paths
  install_staged_files
  size_nginx_workers
  check_or_roll_back
  reload_nginx
}

main "$@"
VLLM_GCP_STEP_SCRIPT_END
) && exec sudo -n timeout --kill-after=20 540 env VLLM_GCP_STEP_LIMIT_SECONDS=540 bash -c "$VLLM_GCP_STEP_SCRIPT"
