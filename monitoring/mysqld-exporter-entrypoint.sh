#!/bin/sh
# monitoring/mysqld-exporter-entrypoint.sh: entrypoint of the user-api-mysqld-exporter image
# (installed as /bin/mysqld-exporter-entrypoint; /bin/sh is busybox).
#
# mysqld_exporter reads its database login from a my.cnf (--config.my-cnf) or, since 0.15,
# its password from the environment variable MYSQLD_EXPORTER_PASSWORD: a value that would show
# in `docker inspect` and /proc/*/environ. This script writes the my.cnf into /tmp (a tmpfs in
# compose, 0600, never on disk) from the password *file* (a compose secret), then execs the
# exporter with the arguments it was given. Both the Debian build (0.14) and nixpkgs' (0.15+)
# read user, password, host and port from the [client] section.
#
# Environment:
#   EXPORTER_PASSWORD_FILE   file holding the exporter account's password (required)
#   EXPORTER_USER            the account (default exporter; db/entrypoint.sh creates it)
#   EXPORTER_DB_ADDRESS      host:port of MariaDB (default db:3306)
set -eu

die() {
  echo "mysqld-exporter-entrypoint: $*" >&2
  exit 1
}

file="${EXPORTER_PASSWORD_FILE:-}"
[ -n "$file" ] || die "EXPORTER_PASSWORD_FILE is not set (the path of the db_exporter_password secret)"
[ -r "$file" ] || die "EXPORTER_PASSWORD_FILE=$file is missing or not readable (secret files must be 0644 in a 0700 directory on the host)"
# Shell builtins only: the image has busybox as /bin/sh and /bin/wget, no other applets.
# Like db/entrypoint.sh, trailing line breaks are dropped; a second line of text is refused.
password="" extra=""
while IFS= read -r line || [ -n "$line" ]; do
  if [ -z "$password" ] && [ -z "$extra" ]; then password="$line"; else extra="$extra$line"; fi
done <"$file"
[ -n "$password" ] || die "EXPORTER_PASSWORD_FILE=$file is empty (or starts with an empty line)"
[ -z "$extra" ] || die "EXPORTER_PASSWORD_FILE=$file holds more than one line"
# The exporter parses my.cnf with go-ini, which cuts a plain value at '#' or ';' (an inline
# comment) even inside double quotes; a value in backquotes is read verbatim up to the next
# backquote. So backquotes, and a password may hold anything but a backquote.
case "$password" in
  *'`'*) die "the exporter password may not contain a backquote" ;;
esac

address="${EXPORTER_DB_ADDRESS:-db:3306}"
host="${address%:*}"
port="${address##*:}"
[ "$host" != "$address" ] || port=3306

cnf=/tmp/my.cnf
umask 077
# shellcheck disable=SC2016  # the backquotes are go-ini's quoting, not a command substitution
printf '[client]\nuser=%s\npassword=`%s`\nhost=%s\nport=%s\n' \
  "${EXPORTER_USER:-exporter}" "$password" "$host" "$port" >"$cnf"
unset password

exec /bin/mysqld_exporter --config.my-cnf="$cnf" "$@"
