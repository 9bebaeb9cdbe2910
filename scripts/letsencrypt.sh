#!/usr/bin/env bash
# letsencrypt mode: obtains (or keeps) a Let's Encrypt certificate for the domain with certbot,
# HTTP-01 through Nginx on port 80 (webroot). Fails first, and clearly, when the domain does not
# resolve to the endpoint's address. Renewal: certbot's systemd timer, reloading Nginx after each
# new certificate. Runs as root (rendered by components/tls_proxy.py, run through sudo).
set -euo pipefail

readonly DOMAIN="{{ DOMAIN }}"
readonly EMAIL="{{ EMAIL }}"
readonly ADDRESS="{{ ADDRESS }}"
readonly ACME_WEBROOT="{{ ACME_WEBROOT }}"
readonly BOOTSTRAP_SITE_PATH="{{ BOOTSTRAP_SITE_PATH }}"

log() {
  echo "letsencrypt: $*" >&2
}

check_domain_resolves_to_address() {
  local resolved
  resolved="$(getent ahostsv4 "$DOMAIN" | awk '{ print $1 }' | sort -u | tr '\n' ' ' || true)"
  if [[ " $resolved " != *" $ADDRESS "* ]]; then
    log "tls.domain $DOMAIN resolves to '${resolved% }', not to this endpoint's address $ADDRESS."
    log "Point an A record for $DOMAIN at $ADDRESS, wait for it to propagate, run pulumi up again."
    exit 1
  fi
  log "$DOMAIN resolves to $ADDRESS"
}

install_certbot() {
  if command -v certbot >/dev/null; then
    return 0
  fi
  log "installing certbot"
  apt-get -o DPkg::Lock::Timeout=300 update -q
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q certbot
}

reload_nginx() {
  nginx -t
  systemctl reload-or-restart nginx
}

# Until the vllm-gcp site exists (it needs this certificate), a minimal port-80 site for the
# domain serves the challenges; the vllm-gcp site serves them itself for renewals.
serve_challenges() {
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
  certbot certonly --non-interactive --agree-tos --email "$EMAIL" \
    --webroot --webroot-path "$ACME_WEBROOT" --domain "$DOMAIN" \
    --keep-until-expiring --deploy-hook "systemctl reload nginx"
}

enable_renewal() {
  systemctl enable --now certbot.timer
  log "renewal: certbot.timer, deploy hook 'systemctl reload nginx'"
}

main() {
  check_domain_resolves_to_address
  install_certbot
  serve_challenges
  trap stop_serving_challenges EXIT
  obtain_certificate
  enable_renewal
}

main "$@"
