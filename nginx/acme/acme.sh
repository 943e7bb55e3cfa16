#!/bin/sh
# The acme image's /bin/acme (docker-compose.acme.yml): certbot obtains and renews the proxy's
# certificate by HTTP-01, through the proxy's port 80 (webroot), and nginx is reloaded when it
# changes.
#
#   acme init      before the proxy starts: if the live pair is missing, put the local
#                  certificate there (compose secrets tls_cert/tls_key, nix/local-tls.sh), so
#                  that nginx has a pair to start with and can serve the challenge
#   acme run       obtain, then `certbot renew` every ACME_CHECK_INTERVAL seconds, forever
#   acme install   certbot's deploy hook: copy the new pair into the live directory, reload nginx
#   acme health    exit 0 once a certificate has been issued
#
# Environment: ACME_DOMAINS (required: names, comma- or space-separated), ACME_EMAIL (optional:
# the account's contact), ACME_SERVER (the directory URL, default Let's Encrypt's production
# one), ACME_CHECK_INTERVAL (43200), ACME_RETRY_INTERVAL (3600), ACME_RANDOM_SLEEP (true:
# certbot waits up to 8 minutes before a renewal, as Let's Encrypt asks of scheduled clients),
# ACME_FORCE_RENEWAL (false: certbot renews when a third of the lifetime is left; true renews
# at every check, to prove the renewal path against a test CA). REQUESTS_CA_BUNDLE is
# certbot's own: the CA file it trusts for the directory (tests: pebble's).
#
# Written for busybox sh: the image has no other shell. Every message is one line on stderr,
# prefixed `acme:`; certbot's own lines are above it.
set -eu

dir=${ACME_DIR:-/var/lib/acme}
live=$dir/live
state=$dir/certbot
webroot=$dir/webroot
name=user-api

log() { echo "acme: $*" >&2; }

# Both files written beside their final names, then renamed: nginx, reloading meanwhile, reads
# a whole old or whole new file, never half of one.
install_pair() {
  cert=$1 key=$2
  [ -s "$cert" ] || { log "no certificate at $cert"; return 1; }
  [ -s "$key" ] || { log "no key at $key"; return 1; }
  (umask 077 && cp "$key" "$live/.tls_key.pem.new" && cp "$cert" "$live/.tls_cert.pem.new")
  mv -f "$live/.tls_key.pem.new" "$live/tls_key.pem"
  mv -f "$live/.tls_cert.pem.new" "$live/tls_cert.pem"
}

# The acme service shares the proxy's PID namespace (`pid: service:proxy`), where the nginx
# master is PID 1: SIGHUP is nginx's graceful reload. Anything else as PID 1 means the service
# was started without it, and a signal would reach the wrong process.
reload_nginx() {
  comm=$(cat /proc/1/comm 2>/dev/null || echo unknown)
  if [ "$comm" != nginx ]; then
    log "cannot reload nginx: PID 1 is $comm; the acme service needs pid: \"service:proxy\""
    return 1
  fi
  kill -HUP 1
}

case "${1:-}" in
  init)
    if [ -s "$live/tls_cert.pem" ] && [ -s "$live/tls_key.pem" ]; then
      log "the live certificate is there; nothing to do"
    else
      install_pair /run/secrets/tls_cert /run/secrets/tls_key
      log "no certificate issued yet: the proxy starts with the local one until the first issuance"
    fi
    ;;

  install)
    # certbot sets RENEWED_LINEAGE (the live/<name> directory) and RENEWED_DOMAINS for its hooks.
    install_pair "${RENEWED_LINEAGE:?}/fullchain.pem" "$RENEWED_LINEAGE/privkey.pem"
    reload_nginx
    log "installed the certificate for ${RENEWED_DOMAINS:-?} and reloaded nginx"
    ;;

  health)
    [ -s "$state/live/$name/fullchain.pem" ]
    ;;

  run)
    # One name per word; blanks alone are no names.
    domains=$(echo "${ACME_DOMAINS:-}" | tr ',' ' ' | xargs)
    if [ -z "$domains" ]; then
      log "ACME_DOMAINS is empty: set it to the names this proxy answers (e.g. ACME_DOMAINS=api.example.com)"
      exit 64
    fi
    # certbot keeps its account, certificates and renewal settings in the state volume; its logs
    # go to stderr (and a copy in /tmp, a tmpfs).
    set -- --non-interactive --config-dir "$state" --work-dir /tmp/certbot \
      --logs-dir /tmp/certbot-logs --deploy-hook "/bin/acme install"
    renew_flags=
    if [ "${ACME_RANDOM_SLEEP:-true}" = false ]; then renew_flags=--no-random-sleep-on-renew; fi
    if [ "${ACME_FORCE_RENEWAL:-false}" = true ]; then renew_flags="$renew_flags --force-renewal"; fi

    while :; do
      if [ -s "$state/live/$name/fullchain.pem" ]; then
        action=renew
        # shellcheck disable=SC2086 # renew_flags: zero, one or two flags
        certbot renew "$@" $renew_flags && ok=1 || ok=0
      else
        action=obtain
        contact=--register-unsafely-without-email
        if [ -n "${ACME_EMAIL:-}" ]; then contact="--email=$ACME_EMAIL"; fi
        certbot certonly "$@" --agree-tos "$contact" --cert-name "$name" \
          --server "${ACME_SERVER:-https://acme-v02.api.letsencrypt.org/directory}" \
          --webroot --webroot-path "$webroot" --domains "$(echo "$domains" | tr ' ' ',')" && ok=1 || ok=0
      fi
      if [ "$ok" = 1 ]; then
        sleep "${ACME_CHECK_INTERVAL:-43200}"
      else
        log "could not $action the certificate for $domains (certbot's lines above); the one in use stays; next try in ${ACME_RETRY_INTERVAL:-3600} s"
        sleep "${ACME_RETRY_INTERVAL:-3600}"
      fi
    done
    ;;

  *)
    log "usage: acme init|run|install|health"
    exit 64
    ;;
esac
