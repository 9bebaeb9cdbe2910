#!/usr/bin/env bash
# letsencrypt mode: obtains (or keeps) a Let's Encrypt certificate for the domain with certbot,
# HTTP-01 through Nginx on port 80 (webroot). Fails first, and clearly, when the domain does not
# resolve to the endpoint's address. Renewal: certbot's systemd timer, reloading Nginx after each
# new certificate. The certificate's lineage is named after the domain, so every renewal updates
# /etc/letsencrypt/live/<domain>/, where Nginx reads it. Runs as root (rendered by
# components/tls_proxy.py, run through sudo), under the step's time limit
# (components/remote_access.py); each network operation has its own.
set -euo pipefail

# vllm-gcp:include host_lib.sh

readonly DOMAIN={{ shell:DOMAIN }}
readonly EMAIL={{ shell:EMAIL }}
readonly ADDRESS={{ shell:ADDRESS }}
readonly ACME_WEBROOT={{ shell:ACME_WEBROOT }}
readonly BOOTSTRAP_SITE_PATH={{ shell:BOOTSTRAP_SITE_PATH }}
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
