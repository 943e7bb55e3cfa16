#!/usr/bin/env bash
# A rolling deploy of the api service: every running replica replaced, one at a time, by one on
# the image the compose file names now (API_IMAGE, or a new image loaded under the same tag).
# For each old replica: start one new replica beside it, wait until the engine reports it healthy
# (it listens only once its database pool is up and migrations ran, so nginx cannot hand it a
# request before: a connection it refuses is retried on another replica), wait until nginx has
# re-resolved `api` (nginx/resolver.conf: valid=2s), then stop the old one with SIGTERM (it stops
# accepting and finishes what it has; `stop_grace_period`), and remove it.
#
#   nix run .#deploy                                  # the stack of ./ (as `nix run .#up` made it)
#   bash nix/deploy.sh -f docker-compose.yml [-p NAME] [--project-directory DIR]
#
# Arguments are `docker compose`'s own (which project); the replica count stays as it is. If a new
# replica does not get healthy within DEPLOY_HEALTHY_TIMEOUT seconds (default 120), it is removed,
# the old ones keep serving, and the script exits 1.
set -euo pipefail

compose=(docker compose "$@")
healthy_timeout="${DEPLOY_HEALTHY_TIMEOUT:-120}"
resolve_wait=3   # > valid=2s in nginx/resolver.conf
stop_timeout=15  # the api's stop_grace_period in docker-compose.yml

say() { echo "deploy: $*" >&2; }
die() {
  say "$*"
  exit 1
}

replicas() { "${compose[@]}" ps -q api | sort; }

mapfile -t old < <(replicas)
((${#old[@]})) || die "no api replica is running: start the stack first (docker compose up -d --wait)"
count=${#old[@]}
say "replacing ${count} api replica(s), one at a time"

for id in "${old[@]}"; do
  before="$(replicas)"
  "${compose[@]}" up -d --no-deps --no-recreate --scale "api=$((count + 1))" api
  new="$(comm -13 <(printf '%s\n' "$before") <(replicas))"
  [[ -n "$new" && "$new" != *$'\n'* ]] || die "expected one new api container, found: ${new:-none}"

  deadline=$((SECONDS + healthy_timeout))
  while :; do
    state="$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$new")"
    [[ "$state" == "running healthy" ]] && break
    if [[ "$state" == exited* || "$state" == dead* || "$state" == *unhealthy ]] || ((SECONDS >= deadline)); then
      docker logs --tail 20 "$new" >&2 || true
      docker rm -f "$new" >/dev/null
      die "the new replica ${new:0:12} did not get healthy (${state}); it is removed, the old ones keep serving"
    fi
    sleep 1
  done
  say "new replica ${new:0:12} healthy; draining ${id:0:12}"
  sleep "$resolve_wait"
  docker stop --time "$stop_timeout" "$id" >/dev/null
  docker rm "$id" >/dev/null
  say "replaced ${id:0:12} by ${new:0:12}"
done
say "done: $(replicas | wc -l) api replica(s) on $(docker inspect -f '{{.Config.Image}}' "$new")"
