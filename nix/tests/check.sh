#!/usr/bin/env bash
# nix/tests/check.sh: what a machine without a Nix store or binary cache can prove about the
# flake (see nix/README.md). Needs nix-instantiate and nix >= 2.18 (tests/run puts Nix 2.34 from
# the tests' Debian forky root first on PATH: tests/harness/toolchain.py);
# installs nothing. Uses python3 with PyYAML and shellcheck when present, and says when not.
#
#   1. every git-tracked .nix file parses (nix-instantiate --parse);
#   2. flake.lock is a version 7 lock pinning only nixpkgs (github NixOS/nixpkgs, nixos-26.05);
#   3. every output (packages, apps, checks and the dev shell on both Linux systems; the
#      formatter on all four systems) evaluates to a derivation against the stand-in for nixpkgs in
#      nix/tests/stand-in (`--override-input nixpkgs`), which rejects unknown arguments, missing
#      attributes and missing files, and what real nixpkgs rejects (see its pkgs.nix header);
#      then `nix flake check --no-build`; notes nixos-26.05's x86_64-darwin warning;
#   4. the images' config against nix/contract.json, docker-compose.yml and nginx.conf's
#      includes (nix/tests/image_contract.py, the script checks.<system>.image-config runs
#      under Nix); every k8s overlay renders (kubectl kustomize, when installed) from the source
#      checks.<system>.k8s-manifests gets as from the work tree;
#   5. bash -n and shellcheck on the app scripts, shellcheck on db/*.sh (what the Nix build of
#      those runs);
#   6. mutations, each applied to a scratch clone, must make step 3 fail for their own reason: a
#      misspelt argument, a missing file, a missing output, an unknown image config key, a
#      Python package nixpkgs lacks, and
#      (issue 12) checks made through callPackage, an `env` entry repeating a derivation
#      attribute, an input unavailable on the system, lib.getExe without meta.mainProgram, a
#      stale cargoLock.outputHashes entry and a crate from an unknown registry.
#
# Evaluates the flake as Nix sees it: git-tracked files only (uncommitted edits to tracked files
# included). Set NIX_CHECK_SKIP_MUTATIONS=1 to skip step 6.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(git -C "$here" rev-parse --show-toplevel)"
stand_in="$here/stand-in"

linux_systems=(x86_64-linux aarch64-linux)
all_systems=(x86_64-linux aarch64-linux x86_64-darwin aarch64-darwin)
packages=(user-api api-image proxy-image db-image prometheus-image grafana-image nginx-exporter-image mysqld-exporter-image default)
apps=(load up deploy)
checks=(user-api clippy rustfmt nginx-config image-config db-scripts k8s-manifests api-image proxy-image db-image prometheus-image grafana-image nginx-exporter-image mysqld-exporter-image load-app up-app deploy-app)

passed=0
failed=0
ok() {
  passed=$((passed + 1))
  echo "ok   $*"
}
bad() {
  failed=$((failed + 1))
  echo "FAIL $*" >&2
}
skip() { echo "skip $*"; }

for tool in nix-instantiate nix git; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "check.sh: '$tool' is not on PATH. Install Nix first (on Debian: apt-get install -y nix-bin)." >&2
    exit 2
  fi
done

tmp="$(mktemp -d)"
# (a private store's files are read-only: make them writable to delete them)
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

# A private cache (fetcher and evaluation caches), and a private store when /nix is not ours.
export XDG_CACHE_HOME="$tmp/cache"
store_opts=()
if [ -w /nix/store ] || { [ ! -e /nix/store ] && [ -w /nix ]; } || [ -w /nix/var/nix/daemon-socket/socket ]; then
  :
else
  echo "note: /nix is not writable here; evaluating into a private store under $tmp"
  store_opts=(--store "$tmp/store")
fi
nix_opts=(--extra-experimental-features "nix-command flakes" --option eval-cache false "${store_opts[@]}")
nixc() { nix "${nix_opts[@]}" "$@"; }
inst() { nix-instantiate "${store_opts[@]}" "$@"; }

# ---- 1. parse ------------------------------------------------------------------------------------
while IFS= read -r -d '' file; do
  if inst --parse "$repo/$file" >/dev/null 2>"$tmp/parse.err"; then
    ok "parse $file"
  else
    bad "parse $file: $(cat "$tmp/parse.err")"
  fi
done < <(git -C "$repo" ls-files -z -- '*.nix')

if [ -n "$(git -C "$repo" status --porcelain -- flake.nix flake.lock nix docker-compose.yml docker-compose.acme.yml nginx db Cargo.toml Cargo.lock src migrations tests)" ]; then
  echo "note: the work tree has uncommitted changes; the flake sees tracked files only (new files need git add)"
fi

# ---- 2. lock file -------------------------------------------------------------------------------
# shellcheck disable=SC2016  # Nix code in single quotes, on purpose
lock_check="$(inst --eval --strict --expr '
  let
    lock = builtins.fromJSON (builtins.readFile '"$repo"'/flake.lock);
    n = lock.nodes.nixpkgs or { };
  in
    if lock.version != 7 then "lock version is ${toString lock.version}, not 7"
    else if lock.nodes.${lock.root}.inputs != { nixpkgs = "nixpkgs"; } then "the root has inputs other than nixpkgs"
    else if builtins.attrNames lock.nodes != [ "nixpkgs" "root" ] then "nodes other than nixpkgs and root"
    else if n.original != { type = "github"; owner = "NixOS"; repo = "nixpkgs"; ref = "nixos-26.05"; } then "nixpkgs is not github:NixOS/nixpkgs/nixos-26.05"
    else if n.locked.type != "github" || n.locked.owner != "NixOS" || n.locked.repo != "nixpkgs" then "the locked nixpkgs is not on github NixOS/nixpkgs"
    else if builtins.match "[0-9a-f]{40}" n.locked.rev == null then "the locked rev is not a commit hash"
    else if builtins.match "sha256-[A-Za-z0-9+/]{43}=" n.locked.narHash == null then "the narHash is not a sha256 SRI hash"
    else if !(builtins.isInt n.locked.lastModified) then "lastModified is not an integer"
    else "ok ${n.locked.rev} ${n.locked.narHash}"
' 2>&1)" || true
case "$lock_check" in
  '"ok '*)
    lock_check="${lock_check#\"ok }"
    ok "flake.lock: nixpkgs pinned to ${lock_check%\"}"
    ;;
  *) bad "flake.lock: $lock_check" ;;
esac

# ---- 3. structural evaluation ------------------------------------------------------------------
# One `nix eval` per output kind: maps every attribute to its drvPath (or, for apps, the type
# and program), which forces the whole derivation, i.e. every argument and every file.
# A value that is not a derivation fails with the words `nix flake check` uses.
drv_map='outs: builtins.mapAttrs (system: set: builtins.mapAttrs (name: d:
  if builtins.isAttrs d && (d.type or null) == "derivation" then d.drvPath
  else throw "flake attribute '"'"'${system}.${name}'"'"' is not a derivation") set) outs'
app_map='outs: builtins.mapAttrs (system: set: builtins.mapAttrs (name: a: { inherit (a) type program; }) set) outs'

evaluate() { # flake-dir kind apply-fn -> JSON on stdout; errors in $tmp/eval.err (and all.err)
  local status=0
  nixc eval --json --override-input nixpkgs "path:$stand_in" "$1#$2" --apply "$3" 2>"$tmp/eval.err" || status=$?
  cat "$tmp/eval.err" >>"$tmp/all.err"
  return "$status"
}

# present JSON system name: whether the evaluated output set has that attribute.
present() {
  inst --eval --expr \
    "builtins.hasAttr \"$3\" ((builtins.fromJSON (builtins.readFile $1)).\"$2\" or { })" \
    2>/dev/null | grep -qx true
}

# expect JSON kind "systems..." "names...": one ok/FAIL line per expected output.
expect() {
  local system name
  for system in $3; do
    for name in $4; do
      if present "$1" "$system" "$name"; then ok "$2.$system.$name"; else bad "$2.$system.$name is missing"; fi
    done
  done
}

# all_expected: every expected output is there (quiet).
all_expected() {
  local kind system name
  for kind in packages checks apps devShells; do
    local systems="${linux_systems[*]}" names
    case "$kind" in
      packages) names="${packages[*]}" ;;
      checks) names="${checks[*]}" ;;
      apps) names="${apps[*]}" ;;
      devShells) names=default ;;
    esac
    for system in $systems; do
      for name in $names; do
        present "$tmp/$kind.json" "$system" "$name" || return 1
      done
    done
  done
}

structural() { # flake-dir -> 0 when every expected output evaluates
  local dir="$1" status=0 kind
  : >"$tmp/all.err"
  for kind in packages checks devShells; do
    if evaluate "$dir" "$kind" "$drv_map" >"$tmp/$kind.json"; then :; else
      echo "FAIL evaluating $kind:" >&2
      tail -n 25 "$tmp/eval.err" >&2
      status=1
    fi
  done
  if evaluate "$dir" formatter 'outs: builtins.mapAttrs (system: f: f.drvPath) outs' >"$tmp/formatter.json"; then :; else
    echo "FAIL evaluating formatter:" >&2
    tail -n 25 "$tmp/eval.err" >&2
    status=1
  fi
  if evaluate "$dir" apps "$app_map" >"$tmp/apps.json"; then :; else
    echo "FAIL evaluating apps:" >&2
    tail -n 25 "$tmp/eval.err" >&2
    status=1
  fi
  # What the real pipeline runs first (there with --all-systems off and builds on).
  if nixc flake check --no-build --override-input nixpkgs "path:$stand_in" "$dir" >"$tmp/flake-check.log" 2>&1; then :; else
    echo "FAIL nix flake check --no-build:" >&2
    tail -n 15 "$tmp/flake-check.log" >&2
    status=1
  fi
  cat "$tmp/flake-check.log" >>"$tmp/all.err"
  return "$status"
}

if structural "$repo"; then
  ok "every output evaluates against the stand-in"
else
  bad "structural evaluation"
fi
expect "$tmp/packages.json" packages "${linux_systems[*]}" "${packages[*]}"
expect "$tmp/checks.json" checks "${linux_systems[*]}" "${checks[*]}"
expect "$tmp/apps.json" apps "${linux_systems[*]}" "${apps[*]}"
expect "$tmp/devShells.json" devShells "${linux_systems[*]}" default
if [ -s "$tmp/formatter.json" ]; then
  for system in "${all_systems[@]}"; do
    if grep -q "\"$system\"" "$tmp/formatter.json"; then ok "formatter.$system"; else bad "formatter.$system is missing"; fi
  done
fi
if [ -s "$tmp/apps.json" ]; then
  if inst --eval --strict --expr "
      builtins.all (set: builtins.all (a: a.type == \"app\" && builtins.match \"/nix/store/[^/]+/bin/.+\" a.program != null)
        (builtins.attrValues set)) (builtins.attrValues (builtins.fromJSON (builtins.readFile $tmp/apps.json)))" \
      | grep -qx true; then
    ok "apps are { type = \"app\"; program = <store path>/bin/...; }"
  else
    bad "an app is not { type = \"app\"; program = \"/nix/store/.../bin/...\"; }"
  fi
fi

if grep -q '^error' "$tmp/flake-check.log"; then
  bad "nix flake check --no-build: $(tail -n 15 "$tmp/flake-check.log")"
else
  ok "nix flake check --no-build"
fi

# nixos-26.05 warns on every evaluation of its x86_64-darwin package set (so does the stand-in).
if grep -q 'last release to support x86_64-darwin' "$tmp/all.err"; then
  echo "note: the flake evaluates nixpkgs for x86_64-darwin, and nixos-26.05 warns that it is the last release to support it (see nix/README.md, \"x86_64-darwin\")"
fi
# Into a file first: `nix ... | grep -q` under pipefail fails whenever grep exits at the warning
# before nix has written the rest (SIGPIPE), which Nix 2.34 made a race lost now and then.
nixc eval --impure --expr "(builtins.getFlake \"path:$stand_in\").legacyPackages.x86_64-darwin ? lib" \
  >"$tmp/darwin.out" 2>&1 || true
if grep -q 'last release to support x86_64-darwin' "$tmp/darwin.out"; then
  ok "stand-in: x86_64-darwin prints nixos-26.05's deprecation warning"
else
  bad "stand-in: no x86_64-darwin deprecation warning"
fi
nix_version="$(nix --version | awk '{print $NF}')"
echo "note: this is Nix $nix_version; nixpkgs and the stand-in refuse Nix < 2.18 (lib/minver.nix)"

# ---- 4. image config vs contract and compose ----------------------------------------------------
if python3 -c 'import yaml' >/dev/null 2>&1; then
  if evaluate "$repo" checks.x86_64-linux.image-config.manifest 'm: m' >"$tmp/manifest.json"; then
    if python3 "$here/image_contract.py" --contract "$repo/nix/contract.json" --manifest "$tmp/manifest.json" \
      --compose "$repo/docker-compose.yml" "$repo/docker-compose.acme.yml" --nginx-conf "$repo/nginx/nginx.conf"; then
      ok "image config matches the contract and docker-compose.yml"
    else
      bad "image config vs contract / docker-compose.yml (above)"
    fi
  else
    bad "evaluating the image manifest: $(tail -n 15 "$tmp/eval.err")"
  fi
else
  skip "image config vs docker-compose.yml: needs python3 with PyYAML (apt-get install python3-yaml); checks.<system>.image-config runs it under Nix"
fi

# ---- 4b. what checks.<system>.k8s-manifests renders -------------------------------------------
# Its source (lib.fileset: k8s/ and nginx/) is copied to the store during evaluation: the overlays
# must render from that copy exactly as from the work tree (what tests/k8s renders), or the check
# would fail under Nix for a missing file. Its kubeconform run is proven by
# tests/k8s/test_k8s_nix_check.py (the same script on this machine, kubeconform replaced).
if command -v kubectl >/dev/null 2>&1; then
  if source_path="$(nixc eval --raw --override-input nixpkgs "path:$stand_in" \
    "$repo#checks.x86_64-linux.k8s-manifests.source" 2>"$tmp/eval.err")"; then
    [ "${#store_opts[@]}" -eq 0 ] || source_path="$tmp/store$source_path"
    for kustomization in "$repo"/k8s/overlays/*/kustomization.yaml; do
      overlay="$(basename "$(dirname "$kustomization")")"
      if ! kubectl kustomize "$source_path/k8s/overlays/$overlay" >"$tmp/k8s-check.yaml" 2>"$tmp/k8s.err"; then
        bad "k8s-manifests: k8s/overlays/$overlay does not render from the check's source: $(cat "$tmp/k8s.err")"
      elif kubectl kustomize "$repo/k8s/overlays/$overlay" | cmp -s - "$tmp/k8s-check.yaml"; then
        ok "k8s-manifests: k8s/overlays/$overlay renders from the check's source as from the work tree"
      else
        bad "k8s-manifests: k8s/overlays/$overlay renders differently from the check's source"
      fi
    done
  else
    bad "evaluating checks.x86_64-linux.k8s-manifests.source: $(tail -n 15 "$tmp/eval.err")"
  fi
else
  skip "k8s-manifests source: kubectl not installed (tests/k8s needs it too)"
fi

# ---- 5. scripts -----------------------------------------------------------------------------------
for app in "${apps[@]}"; do
  if nixc eval --raw --override-input nixpkgs "path:$stand_in" \
    "$repo#checks.x86_64-linux.$app-app.standInScript" >"$tmp/$app.sh" 2>"$tmp/eval.err"; then
    if bash -n "$tmp/$app.sh"; then ok "bash -n: $app app"; else bad "bash -n: $app app"; fi
    if command -v shellcheck >/dev/null 2>&1; then
      if shellcheck "$tmp/$app.sh"; then ok "shellcheck: $app app"; else bad "shellcheck: $app app (writeShellApplication would refuse it)"; fi
    else
      skip "shellcheck: $app app (shellcheck not installed; the Nix build runs it)"
    fi
  else
    bad "evaluating the $app app's script"
  fi
done
if command -v shellcheck >/dev/null 2>&1; then
  if shellcheck --severity=warning "$repo/db/entrypoint.sh" "$repo/db/healthcheck.sh" "$repo/db/backup.sh" "$repo/monitoring/mysqld-exporter-entrypoint.sh" "$repo/nix/deploy.sh" "$repo/nix/local-tls.sh"; then
    ok "shellcheck --severity=warning: db/entrypoint.sh db/healthcheck.sh db/backup.sh monitoring/mysqld-exporter-entrypoint.sh nix/deploy.sh nix/local-tls.sh"
  else
    bad "shellcheck: db scripts"
  fi
else
  skip "shellcheck: db scripts (shellcheck not installed; checks.<system>.db-scripts runs it)"
fi

# ---- 6. mutations: the evaluation must catch these -----------------------------------------------
# mutate description file sed-expression error-text: apply the edit to the scratch copy; the
# evaluation must fail with an error that names error-text (or, with error-text "", an expected
# output must be missing).
mutate() {
  local what="$1" file="$2" expr="$3" text="$4"
  git -C "$tmp/mutant" checkout -q -- .
  sed -i -e "$expr" "$tmp/mutant/$file"
  if git -C "$tmp/mutant" diff --quiet; then
    bad "mutation '$what' did not apply (has $file changed?)"
  elif [ -z "$text" ]; then
    if structural "$tmp/mutant" >/dev/null 2>&1 && all_expected; then
      bad "mutation '$what' was NOT caught"
    else
      ok "mutation caught: $what"
    fi
  elif structural "$tmp/mutant" >/dev/null 2>&1; then
    bad "mutation '$what' was NOT caught"
  elif grep -qF -- "$text" "$tmp/all.err"; then
    ok "mutation caught: $what"
  else
    bad "mutation '$what' failed, but not because of it: $(grep -m1 error: "$tmp/all.err")"
  fi
}

if [ "${NIX_CHECK_SKIP_MUTATIONS:-}" = 1 ]; then
  skip "mutations (NIX_CHECK_SKIP_MUTATIONS=1)"
else
  # A scratch copy of the tracked files, as the flake sees them.
  mkdir "$tmp/mutant"
  git -C "$repo" ls-files -z | (cd "$repo" && xargs -0 cp --parents -t "$tmp/mutant" 2>/dev/null) || true
  git -C "$tmp/mutant" init -q
  git -C "$tmp/mutant" add -A
  git -C "$tmp/mutant" -c user.name=check -c user.email=check@localhost commit -qm scratch
  mutate "misspelt streamLayeredImage argument" nix/images.nix \
    's/fakeRootCommands = /fakeRootCommand = /' "'fakeRootCommand'"
  mutate "misspelt buildRustPackage/mkDerivation argument" nix/rust.nix \
    's/nativeCheckInputs = /nativeCheckInput = /' nativeCheckInput
  mutate "misspelt image config key" nix/images.nix \
    '0,/Entrypoint = /s/Entrypoint = /EntryPoint = /' EntryPoint
  mutate "missing file" nix/checks.nix 's|../nginx/nginx.conf|../nginx/nginx.conff|' nginx.conff
  mutate "missing nixpkgs attribute" nix/default.nix 's/pkgs.mariadb_114/pkgs.mariadb_1140/' mariadb_1140
  mutate "a Python package nixpkgs does not have" nix/checks.nix \
    's|python3.pkgs.kubernetes-validate|python3.pkgs.kubernetes-validater|' kubernetes-validater
  mutate "missing output" nix/apps.nix 's/^    load = {/    loader = {/' ""
  # What real nixpkgs rejects and the stand-in now does too (issue 12):
  mutate "checks through callPackage (override/overrideDerivation among the checks)" nix/default.nix \
    's|checks = import ./checks.nix {|checks = pkgs.callPackage ./checks.nix {|' "is not a derivation"
  mutate "env repeating a derivation attribute" nix/rust.nix \
    's|env.SQLX_OFFLINE = "true";|env.SQLX_OFFLINE = "true"; env.version = version;|' \
    "The ‘env’ attribute set cannot contain any attributes passed to derivation"
  mutate "the dev shell offered on macOS (an input not available there)" flake.nix \
    's|devShells = forSystems linux|devShells = forSystems everywhere|' "is not available on the requested hostPlatform"
  mutate "lib.getExe of a package without meta.mainProgram" nix/apps.nix \
    's|^      ${lib.getExe load} "$@"$|      ${lib.getExe load} "$@"\n      ${lib.getExe coreutils} --version >/dev/null|' \
    "has no meta.mainProgram"
  mutate "a stale cargoLock.outputHashes entry" nix/rust.nix \
    's|cargoLock.lockFile = ../Cargo.lock;|cargoLock.lockFile = ../Cargo.lock; cargoLock.outputHashes."rocket-0.5.1" = lib.fakeHash;|' \
    "but there is no corresponding git dependency"
  mutate "a crate from a registry importCargoLock does not know" Cargo.lock \
    '0,/registry+https:\/\/github.com\/rust-lang\/crates.io-index/s//registry+https:\/\/registry.invalid\/index/' \
    "Cannot handle crate source: registry+https://registry.invalid/index"
fi

echo "check.sh: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
