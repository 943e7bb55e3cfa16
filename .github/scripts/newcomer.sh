#!/usr/bin/env bash
# The README's first journey, after `nix run .#up` (ci.yml, job newcomer):
#
#   newcomer.sh seed    the README's two curl calls, verbatim, through the published port, and
#                       their answers checked
#   newcomer.sh down    `docker compose down -v` in the checkout, then no container, volume or
#                       network of the project is left
#   newcomer.sh logs    the stack's state and logs (for a failed run)
set -euo pipefail

project="$(docker compose config --format json | jq -r .name)"

seed() {
  local created fetched
  # The README's commands exactly (curl without -f: the body is checked instead).
  created="$(curl -X POST "localhost:80/create_user?userid=1&username=John")"
  echo "POST /create_user -> $created"
  fetched="$(curl "localhost:80/get_user?userid=1")"
  echo "GET /get_user -> $fetched"
  jq -e '. == {"userid": 1, "username": "John"}' <<<"$created" >/dev/null
  jq -e '. == {"userid": 1, "username": "John"}' <<<"$fetched" >/dev/null
}

down() {
  local left
  docker compose down -v
  left="$(
    docker ps -aq --filter "label=com.docker.compose.project=$project"
    docker volume ls -q --filter "label=com.docker.compose.project=$project"
    docker network ls -q --filter "label=com.docker.compose.project=$project"
  )"
  if [ -n "$left" ]; then
    echo "::error::docker compose down -v left objects of project $project behind:"
    echo "$left"
    return 1
  fi
  echo "project $project: nothing left"
}

logs() {
  docker compose ps -a || true
  docker compose logs --no-color --timestamps || true
}

case "${1:-}" in
  seed | down | logs) "$1" ;;
  *)
    sed -n '2,9p' "$0" >&2
    exit 2
    ;;
esac
