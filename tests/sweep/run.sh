#!/usr/bin/env bash
# Bad-input sweep generated from the OpenAPI document: schemathesis (PyPI)
# against the real stack on free loopback ports: a throwaway MariaDB, the
# release user-api and, with --nginx, nginx with the project's config.
#
#   tests/sweep/run.sh [--nginx]      (USER_API_BIN=path skips the build;
#                                      SWEEP_SCHEMA=file uses that document)
#
# Checks: all of schemathesis' (no 5xx; every status, content type, header
# and body as documented; invalid input rejected, valid input accepted; a
# deleted user is gone) except unsupported_method: Rocket answers a method
# it does not know at all (e.g. QUERY) 400, where that check wants 405. Bounded: SWEEP_MAX_EXAMPLES
# cases per operation (default 200), a fixed seed (SWEEP_SEED), a 10 s
# per-request timeout, SWEEP_TIMEOUT (170 s) for the whole schemathesis run. Prints "N passed, M failed" last; exits non-zero on any
# failure. Needs: mariadb-server, mariadb-client, nginx (for --nginx),
# python3 with venv; schemathesis is installed into a venv under
# ${XDG_CACHE_HOME:-~/.cache}/user-api-sweep on first use.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
via_nginx=false
for arg in "$@"; do
  case $arg in
    --nginx) via_nginx=true ;;
    *) echo "usage: $0 [--nginx]" >&2; exit 2 ;;
  esac
done
export PATH="$PATH:/usr/sbin:/usr/local/sbin:/sbin"

need() {
  command -v "$1" >/dev/null || { echo "$1 not found (apt-get install $2)" >&2; exit 2; }
}
need mariadbd mariadb-server
need mariadb-install-db mariadb-server
need mariadb mariadb-client
need python3 python3
$via_nginx && need nginx nginx

# ---------------------------------------------------------------- schemathesis
cache=${XDG_CACHE_HOME:-$HOME/.cache}/user-api-sweep
venv=$cache/venv-schemathesis-$SCHEMATHESIS_VERSION
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $venv" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION"
fi

# ------------------------------------------------------------------ the binary
if [ -n "${USER_API_BIN:-}" ]; then
  bin=$(realpath "$USER_API_BIN")
else
  (cd "$repo" && cargo build --release --quiet)
  bin=$repo/target/release/user-api
fi

# --------------------------------------------------------------------- cleanup
tmp=$(mktemp -d "${TMPDIR:-/tmp}/user-api-sweep.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for() { # URL-or-port, pid, what
  local _
  for _ in $(seq 1 600); do
    kill -0 "$2" 2>/dev/null || { echo "$3 exited early; log:" >&2; cat "$tmp/$3.log" >&2; exit 1; }
    if [[ $1 == http* ]]; then
      python3 -c "import sys,urllib.request; sys.exit(urllib.request.urlopen('$1', timeout=2).status != 200)" 2>/dev/null && return 0
    else
      (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    fi
    sleep 0.1
  done
  echo "$3 not ready after 60 s; log:" >&2
  cat "$tmp/$3.log" >&2
  exit 1
}

# --------------------------------------------------------------------- MariaDB
db_port=$(free_port)
user=$(id -un)
mariadb-install-db --no-defaults --datadir="$tmp/data" --auth-root-authentication-method=normal \
  --skip-test-db --user="$user" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log" >&2; exit 1; }
mariadbd --no-defaults --datadir="$tmp/data" --socket="$tmp/mysqld.sock" \
  --pid-file="$tmp/mysqld.pid" --port="$db_port" --bind-address=127.0.0.1 --user="$user" \
  --skip-log-bin --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=2 \
  >"$tmp/mariadb.log" 2>&1 &
pids+=($!)
wait_for "$db_port" "$!" mariadb
mariadb -h127.0.0.1 -P"$db_port" -uroot -e 'CREATE DATABASE sweep'

# --------------------------------------------------------------------- the API
api_port=$(free_port)
(
  cd "$tmp"
  unset "${!ROCKET_@}" "${!DATABASE_@}"
  ROCKET_ADDRESS=127.0.0.1 ROCKET_PORT=$api_port ROCKET_ACCESS_LOG=false \
    DATABASE_URL="mysql://root@127.0.0.1:$db_port/sweep" exec "$bin"
) >"$tmp/api.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$api_port/readyz" "$!" api
# Some users to find, rename and delete (ids the generator also likes).
mariadb -h127.0.0.1 -P"$db_port" -uroot sweep \
  -e "INSERT INTO users (userid, username) VALUES (1,'one'),(2,'two'),(3,'three'),(2147483647,'max')"

target=http://127.0.0.1:$api_port
if $via_nginx; then
  ngx=$tmp/nginx
  mkdir "$ngx"
  ngx_port=$(free_port)
  status_port=$(free_port)
  # The project's config with only the instance-specific lines changed (as in
  # the tests and bench/): ports, pid file, temp paths.
  sed -e "s/^\(\s*listen\s\+\)8080\b/\1$ngx_port/" \
      -e "s/^\(\s*listen\s\+\)8081\b/\1$status_port/" \
      -e "s|^pid\s\+/tmp/nginx.pid;|pid $ngx/nginx.pid;|" \
      -e "s|/tmp/nginx-|$ngx/nginx-|" \
      "$repo/nginx/nginx.conf" >"$ngx/nginx.conf"
  echo "server 127.0.0.1:$api_port;" >"$ngx/upstream.conf"
  # The sweep sends hundreds of requests a second from one address.
  echo '127.0.0.1 "";' >"$ngx/rate_limit_exempt.conf"
  nginx -e stderr -c "$ngx/nginx.conf" >"$tmp/nginx.log" 2>&1 &
  pids+=($!)
  wait_for "http://127.0.0.1:$status_port/healthz" "$!" nginx
  target=http://127.0.0.1:$ngx_port
fi

# ---------------------------------------------------------------- the sweep
# The document the API serves; SWEEP_SCHEMA=file tries an edited one first.
location=("$target/openapi.json")
if [ -n "${SWEEP_SCHEMA:-}" ]; then
  location=("$(realpath "$SWEEP_SCHEMA")" --url "$target")
fi
echo "sweep: schemathesis $SCHEMATHESIS_VERSION against $target" >&2
set +e
(
  cd "$tmp"
  # A hard stop besides schemathesis' own bounds.
  timeout --signal=INT --kill-after=10 "${SWEEP_TIMEOUT:-170}" \
  "$venv/bin/schemathesis" run "${location[@]}" \
    --checks "${SWEEP_CHECKS:-all}" \
    --exclude-checks "${SWEEP_EXCLUDE_CHECKS:-unsupported_method}" \
    --max-examples "${SWEEP_MAX_EXAMPLES:-200}" \
    --seed "${SWEEP_SEED:-20261128}" \
    --workers 1 \
    --request-timeout 10 \
    --no-color \
    --report junit --report-junit-path "$tmp/junit.xml"
)
code=$?
set -e
python3 - "$tmp/junit.xml" "$code" <<'PY'
import sys, xml.etree.ElementTree as ET
path, code = sys.argv[1], int(sys.argv[2])
try:
    cases = list(ET.parse(path).getroot().iter("testcase"))
except (OSError, ET.ParseError) as e:
    print(f"no report ({e})")
    cases = []
failed = sum(1 for c in cases if c.find("failure") is not None or c.find("error") is not None)
passed = len(cases) - failed
if code != 0 and failed == 0:
    failed = 1  # schemathesis itself failed (schema unreachable, crash, ...)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
