#!/usr/bin/env bash
# One command: bench/run.sh [bench.py options]   (bench/run.sh --help)
# Builds the release user-api (unless USER_API_BIN names one), then runs a
# throwaway MariaDB, the API and nginx as local processes on free loopback
# ports and drives them with wrk. MariaDB and nginx are production's versions,
# from the Debian forky root the tests use (tests/harness/toolchain.py, built
# on first use, as root); USER_API_TOOLCHAIN=path runs PATH's instead. On Debian:
#   apt-get install wrk python3 mmdebstrap
# Results: a table on stdout and bench/results/<timestamp>.json.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

missing=()
for tool in wrk python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]} (Debian: apt-get install wrk python3)" >&2
  exit 2
fi
export USER_API_TOOLCHAIN=${USER_API_TOOLCHAIN:-forky}
if [ "$USER_API_TOOLCHAIN" = forky ]; then
  (cd "$repo/tests" && python3 -m harness toolchain >/dev/null)
fi
(cd "$repo/tests" && python3 -m harness versions)

if [ -n "${USER_API_BIN:-}" ]; then
  bin=$USER_API_BIN
else
  (cd "$repo" && cargo build --release --quiet)
  bin=$repo/target/release/user-api
fi
export PATH="$PATH:/usr/sbin:/usr/local/sbin:/sbin"
exec python3 "$here/bench.py" --bin "$bin" "$@"
