#!/usr/bin/env bash
# The local stack's certificate: a CA made for it, and a certificate for localhost, 127.0.0.1 and
# ::1 signed by that CA, as the compose file secrets tls_cert and tls_key. Run by `nix run .#up`
# (like the passwords, only when they are missing, or when one this script made expires within 30
# days or does not match its key), by the tests, and by hand (OpenSSL >= 1.1.1):
#
#   bash nix/local-tls.sh secrets     # -> secrets/tls_cert.pem, secrets/tls_key.pem, secrets/local-ca.pem
#   curl --cacert secrets/local-ca.pem https://localhost/get_user?userid=1
#
# A certificate it did not make (yours) is never replaced: the script stops with one line when it
# has expired, when its key is missing or is not its key, and warns within 30 days of expiry.
#
# The CA's key is deleted as soon as the certificate is signed: a browser or system that trusts
# local-ca.pem trusts this one certificate and nothing else anyone could sign later. A new
# certificate therefore comes with a new CA. ECDSA P-256 keys; 397 days, under the 398 that
# browsers accept for a server certificate. The files are written in place (a running proxy's bind
# mount keeps seeing them), 0644 inside a 0700 directory, like the passwords (the proxy's uid 65534
# reads them through compose's bind mounts).
set -euo pipefail

dir="${1:?usage: local-tls.sh DIR}"
cert="$dir/tls_cert.pem"
key="$dir/tls_key.pem"
ca="$dir/local-ca.pem"
month=$((30 * 86400))

fail() {
  echo "local-tls.sh: $*" >&2
  exit 1
}

# The public key of the certificate and of the key, in the same (DER) form, compared.
key_matches() {
  local from_cert from_key
  from_cert="$(openssl x509 -in "$cert" -noout -pubkey | openssl pkey -pubin -outform DER 2>/dev/null | od -An -tx1)" || return 1
  from_key="$(openssl pkey -in "$key" -passin pass: -pubout -outform DER 2>/dev/null | od -An -tx1)" || return 1
  [ -n "$from_key" ] && [ "$from_cert" = "$from_key" ]
}

if [ -e "$cert" ] || [ -e "$key" ]; then
  [ -s "$cert" ] || fail "$key is there without its certificate $cert: put the certificate beside it, or delete the key to get a local pair"
  issuer="$(openssl x509 -in "$cert" -noout -issuer 2>/dev/null)" || fail "$cert is not a PEM certificate"
  ends="$(openssl x509 -in "$cert" -noout -enddate | cut -d= -f2)"
  case "$issuer" in
    *"user-api local CA"*)
      # Ours: kept while it is good for 30 more days and matches its key, else made anew.
      if [ -s "$key" ] && key_matches && openssl x509 -in "$cert" -noout -checkend "$month" >/dev/null; then
        exit 0
      fi
      ;;
    *)
      # Yours: never replaced. Refused when it cannot work, so that the stack does not start
      # serving a certificate every client rejects.
      [ -s "$key" ] || fail "$cert is there without its key $key: put the key beside it"
      openssl x509 -in "$cert" -noout -checkend 0 >/dev/null ||
        fail "$cert expired on $ends: put a valid certificate there, or delete it and its key to get a local one"
      key_matches || fail "$key is not the key of $cert (or it is encrypted: nginx needs it unencrypted)"
      if ! openssl x509 -in "$cert" -noout -checkend "$month" >/dev/null; then
        echo "local-tls.sh: warning: $cert expires on $ends, within 30 days: renew it" >&2
      fi
      exit 0
      ;;
  esac
fi

[ -d "$dir" ] || install -d -m 0700 "$dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# openssl's progress and errors, shown only when it fails.
quietly() {
  "$@" 2>"$work/openssl.log" || { cat "$work/openssl.log" >&2; fail "openssl failed: $*"; }
}

quietly openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 398 \
  -subj "/CN=user-api local CA $(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign" \
  -keyout "$work/ca.key" -out "$work/ca.pem"
quietly openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$work/key.pem" -out "$work/request.pem"
printf '%s\n' \
  "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" \
  "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" >"$work/extensions"
quietly openssl x509 -req -in "$work/request.pem" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -set_serial "0x$(openssl rand -hex 16)" -days 397 -extfile "$work/extensions" \
  -out "$work/cert.pem"

# In place (cat >, not a new file): a running proxy's bind mount of the old file sees the new
# content once nginx reloads (`nix run .#up` recreates the proxy when the certificate changed).
for pair in "ca.pem:$ca" "key.pem:$key" "cert.pem:$cert"; do
  (umask 022 && cat "$work/${pair%%:*}" >"${pair#*:}")
  chmod 0644 "${pair#*:}"
done
echo "created $cert and $key for localhost, signed by the local CA $ca (its key is gone)" >&2
