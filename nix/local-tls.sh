#!/usr/bin/env bash
# The local stack's certificate: a CA made for it, and a certificate for localhost, 127.0.0.1 and
# ::1 signed by that CA, as the compose file secrets tls_cert and tls_key. Run by `nix run .#up`
# (like the passwords, only when they are missing, or when one this script made expires within 30
# days), by the tests, and by hand:
#
#   bash nix/local-tls.sh secrets     # -> secrets/tls_cert.pem, secrets/tls_key.pem, secrets/local-ca.pem
#   curl --cacert secrets/local-ca.pem https://localhost/get_user?userid=1
#
# The CA's key is deleted as soon as the certificate is signed: a browser or system that trusts
# local-ca.pem trusts this one certificate and nothing else anyone could sign later. A new
# certificate therefore comes with a new CA. ECDSA P-256 keys; 397 days, the longest lifetime
# browsers accept for a server certificate. The files are 0644 inside the 0700 directory, like the
# passwords (the proxy's uid 65534 reads them through compose's bind mounts).
set -euo pipefail

dir="${1:?usage: local-tls.sh DIR}"
cert="$dir/tls_cert.pem"
key="$dir/tls_key.pem"
ca="$dir/local-ca.pem"

month=$((30 * 86400))
if [ -s "$cert" ] && [ -s "$key" ]; then
  ends="$(openssl x509 -in "$cert" -noout -enddate | cut -d= -f2)"
  if ! openssl x509 -in "$cert" -noout -issuer | grep -q "CN *= *user-api local CA"; then
    # Your own certificate: never replaced here. Refused when it cannot work, so that the stack
    # does not start serving a certificate every client rejects.
    if ! openssl x509 -in "$cert" -noout -checkend 0 >/dev/null; then
      echo "local-tls.sh: $cert expired on $ends: put a valid certificate there, or delete it and its key to get a local one" >&2
      exit 1
    fi
    if [ "$(openssl x509 -in "$cert" -noout -pubkey)" != "$(openssl pkey -in "$key" -pubout 2>/dev/null)" ]; then
      echo "local-tls.sh: $key is not the key of $cert" >&2
      exit 1
    fi
    if ! openssl x509 -in "$cert" -noout -checkend "$month" >/dev/null; then
      echo "local-tls.sh: warning: $cert expires on $ends, within 30 days: renew it" >&2
    fi
    exit 0
  fi
  if openssl x509 -in "$cert" -noout -checkend "$month" >/dev/null; then
    exit 0
  fi
fi

mkdir -p "$dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -days 398 \
  -subj "/CN=user-api local CA $(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -subj "/CN=localhost" \
  -keyout "$work/key.pem" -out "$work/request.pem" 2>/dev/null
printf '%s\n' \
  "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" \
  "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" >"$work/extensions"
openssl x509 -req -in "$work/request.pem" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -set_serial "0x$(openssl rand -hex 16)" -days 397 -extfile "$work/extensions" \
  -out "$work/cert.pem" 2>/dev/null

install -m 0644 "$work/ca.pem" "$ca"
install -m 0644 "$work/key.pem" "$key"
install -m 0644 "$work/cert.pem" "$cert"
echo "created $cert and $key for localhost, signed by the local CA $ca (its key is gone)" >&2
