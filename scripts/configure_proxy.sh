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

# vllm-gcp:include host_lib.sh

readonly SITE_PATH={{ shell:SITE_PATH }}
readonly SITE_ENABLED_PATH={{ shell:SITE_ENABLED_PATH }}
readonly DEFAULT_SITE_ENABLED_PATH={{ shell:DEFAULT_SITE_ENABLED_PATH }}
readonly CERTIFICATE_PATH={{ shell:CERTIFICATE_PATH }}
readonly CERTIFICATE_KEY_PATH={{ shell:CERTIFICATE_KEY_PATH }}
readonly ACME_WEBROOT={{ shell:ACME_WEBROOT }}
readonly NGINX_CONF={{ shell:NGINX_CONF }}
readonly WORKER_CONNECTIONS={{ shell:WORKER_CONNECTIONS }}
readonly WORKER_RLIMIT_NOFILE={{ shell:WORKER_RLIMIT_NOFILE }}
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
