#!/usr/bin/env bash
# db/healthcheck.sh: container healthcheck of the user-api MariaDB image (installed as
# /bin/healthcheck.sh). Same name and options as the official mariadb image's script, so one
# compose healthcheck works with both:  healthcheck.sh --connect --innodb_initialized
#
#   --connect             the real server accepts TCP connections on 127.0.0.1:3306. The temporary
#                         server that db-entrypoint runs during the first start listens on the unix
#                         socket only (--skip-networking), so it never looks healthy.
#   --innodb_initialized  InnoDB is up (information_schema.ENGINES reports it usable).
#
# Credentials: the 'healthcheck' login (USAGE only, local hosts only) that db-entrypoint writes to
# /var/lib/mysql/.my-healthcheck.cnf on the first start (the official image writes the same file).
# Without that file (a data directory initialised some other way) both checks fall back to
# `mariadb-admin ping` over TCP, which exits 0 as soon as the server answers, even with
# "Access denied": enough for liveness, and the server opens its TCP port only after its storage
# engines (InnoDB included) are initialised.
#
# Exit status: 0 healthy, 1 not (the first failing check is printed on stderr).
set -uo pipefail

CNF=${HEALTHCHECK_CNF:-/var/lib/mysql/.my-healthcheck.cnf}
HOST=127.0.0.1
PORT=${HEALTHCHECK_PORT:-3306}
TIMEOUT=5

fail() { echo "healthcheck: $*" >&2; exit 1; }

[[ $# -gt 0 ]] || set -- --connect --innodb_initialized

have_cnf=0
[[ -r "$CNF" ]] && have_cnf=1

# TCP on 127.0.0.1 explicitly: --protocol=tcp and -h after --defaults-file, so that nothing in the
# file can turn this into a socket connection.
client() {
  mariadb --defaults-file="$CNF" --protocol=tcp -h "$HOST" -P "$PORT" \
    --connect-timeout="$TIMEOUT" --batch --skip-column-names "$@"
}

ping_tcp() {
  mariadb-admin --no-defaults --protocol=tcp -h "$HOST" -P "$PORT" --connect-timeout="$TIMEOUT" \
    ping >/dev/null 2>&1
}

for arg in "$@"; do
  case "$arg" in
    --connect)
      if ((have_cnf)); then
        client -e 'SELECT 1' >/dev/null 2>&1 || fail "cannot log in over TCP at $HOST:$PORT"
      else
        ping_tcp || fail "no server answering over TCP at $HOST:$PORT"
      fi
      ;;
    --innodb_initialized)
      if ((have_cnf)); then
        out="$(client -e "SELECT 1 FROM information_schema.ENGINES WHERE engine = 'InnoDB' AND support IN ('YES', 'DEFAULT', 'ENABLED')" 2>/dev/null)" \
          || fail "cannot query information_schema.ENGINES over TCP"
        [[ "$out" == 1 ]] || fail "InnoDB is not initialised"
      else
        ping_tcp || fail "no server answering over TCP at $HOST:$PORT"
      fi
      ;;
    --su=*|--su-mysql|--no-defaults|--defaults-file=*|--defaults-extra-file=*|--datadir=*)
      # accepted for compatibility with the official script; nothing to do here
      ;;
    *)
      fail "unsupported option '$arg' (supported: --connect, --innodb_initialized)"
      ;;
  esac
done
exit 0
