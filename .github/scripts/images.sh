#!/usr/bin/env bash
# The pipeline's image steps (.github/workflows/ci.yml and release.yml), one subcommand each, so
# that the workflow `run:` blocks stay one line and this file is shellchecked as a whole
# (tests/ci/test_workflows.py).
#
#   images.sh build                 nix build the three images (stream scripts) into ./image-<name>
#   images.sh reproduce             rebuild every derivation of this repo in the images' closures
#                                   with `nix build --rebuild` (fails if any output differs),
#                                   stream each image before and after and compare the digests;
#                                   sizes and digests go to the job summary
#   images.sh login                 log in to REGISTRY's host (ghcr.io) as GITHUB_ACTOR with
#                                   GITHUB_TOKEN (skopeo), into $DOCKER_CONFIG/config.json
#                                   (~/.docker): skopeo, syft, cosign and buildx read it
#   images.sh tags                  the registry tags of this push (GITHUB_OUTPUT: tags, version)
#   images.sh push ARCH             push each image `build` made (./image-<name>) as
#                                   <registry>/<image>:<sha>-<ARCH> with skopeo (no daemon), SBOM
#                                   (syft) attested and signed with cosign; digests into
#                                   digests-<ARCH>.txt
#   images.sh manifest              one multi-arch index per image from the digests-*.txt files,
#                                   tagged with each word of TAGS (from `tags`); cosign signs each;
#                                   writes the production overlay's images, pinned to the indexes'
#                                   digests (k8s/overlays/production/release/kustomization.yaml)
#
# Signing is keyless (GitHub's OIDC token, Fulcio, Rekor) unless COSIGN_KEY names the private key
# of a cosign key pair (COSIGN_PASSWORD its password): for a registry of your own without
# Sigstore's public services, and for tests/e2e/test_95_release.py, which runs this script
# against a local registry. With a key nothing goes to a transparency log, so verify with
# `cosign verify --key cosign.pub --insecure-ignore-tlog`.
#
# Environment: REGISTRY (e.g. ghcr.io/owner, lowercase) for push and manifest; GITHUB_* as set by
# Actions. Needs nix (and docker's buildx plugin for manifest: `imagetools` talks to the registry
# itself, no daemon is used). skopeo, syft, cosign and jq come from the flake's own pinned
# nixpkgs (`nix shell --inputs-from .`), so their versions move with flake.lock, not with the
# runner image or a third-party action; IMAGES_SH_TOOLS=1 says they are on PATH already (the
# local release test takes Debian's).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# Runs this script again with the tools on PATH (once).
with_tools() {
  if [ "${IMAGES_SH_TOOLS:-}" != 1 ]; then
    exec nix --extra-experimental-features "nix-command flakes" shell --inputs-from . \
      nixpkgs#skopeo nixpkgs#syft nixpkgs#cosign nixpkgs#jq \
      --command env IMAGES_SH_TOOLS=1 "$0" "$@"
  fi
}

images=(api-image proxy-image db-image)
summary="${GITHUB_STEP_SUMMARY:-/dev/stdout}"
tmp="${RUNNER_TEMP:-/tmp}"

nix_() { nix --extra-experimental-features "nix-command flakes" "$@"; }

# The image reference (name:tag) a stream script writes: the name from nix/contract.json, the tag
# Cargo.toml's version (nix/contract.nix does the same).
version() { sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1; }
image_ref() { # attr (api-image, ...) -> name:tag
  echo "$(jq -r --arg s "${1%-image}" '.[$s].image' nix/contract.json):$(version)"
}

build() {
  local image
  for image in "${images[@]}"; do
    nix_ build -L --out-link "image-$image" ".#$image"
  done
}

# stream attr -> the stream script `build` linked (./image-<attr>): it writes the image as a
# docker-archive tar on stdout.
stream() {
  local script="./image-$1"
  if [ ! -x "$script" ]; then
    echo "no $script: run \`images.sh build\` first (in this job)" >&2
    return 1
  fi
  echo "$script"
}

# stream_digest attr -> "<bytes> <sha256 of the tar> <image id>" of the image the script writes
stream_digest() {
  local tar="$tmp/$1.tar" size sha id
  "$(stream "$1")" >"$tar"
  size="$(stat -c %s "$tar")"
  sha="$(sha256sum "$tar" | cut -d' ' -f1)"
  # The image id is the digest of its config blob: what `docker images` shows.
  id="sha256:$(skopeo inspect --config --raw "docker-archive:$tar" | sha256sum | cut -d' ' -f1)"
  rm -f "$tar"
  echo "$size $sha $id"
}

reproduce() {
  local image drv before after failed=0
  declare -A first
  for image in "${images[@]}"; do
    first[$image]="$(stream_digest "$image")"
  done
  # Every derivation of this repo in the images' build closures (the binary, its tests are not
  # in it, the layers, the proxy and db roots, the stream scripts): their names start with
  # user-api or stream-user-api. Everything else comes from cache.nixos.org.
  for image in "${images[@]}"; do
    nix_ path-info --derivation ".#$image"
  done | xargs nix-store --query --requisites | grep -E '^/nix/store/[a-z0-9]{32}-(stream-)?user-api[^/]*\.drv$' |
    sort -u >"$tmp/own-drvs.txt"
  echo "rebuilding $(wc -l <"$tmp/own-drvs.txt") derivations of this repo:"
  cat "$tmp/own-drvs.txt"
  while read -r drv; do
    # Fails with "... may not be deterministic: output ... differs" when the rebuild differs.
    if ! nix_ build -L --rebuild --no-link "$drv^*"; then
      echo "::error::$drv is not reproducible (nix build --rebuild found a different output)"
      failed=1
    fi
  done <"$tmp/own-drvs.txt"
  {
    echo "### Images ($(uname -m))"
    echo
    echo "| image | reference | size (bytes, uncompressed) | tar sha256 | image id |"
    echo "|---|---|---|---|---|"
  } >>"$summary"
  for image in "${images[@]}"; do
    before="${first[$image]}"
    after="$(stream_digest "$image")"
    read -r size sha id <<<"$after"
    echo "| $image | $(image_ref "$image") | $size | \`$sha\` | \`$id\` |" >>"$summary"
    if [ "$before" != "$after" ]; then
      echo "::error::$image: the stream differs between two runs ($before vs $after)"
      failed=1
    fi
  done
  echo >>"$summary"
  return "$failed"
}

tags() {
  local sha="${GITHUB_SHA:?}" version ref="${GITHUB_REF:?}"
  version="$(version)"
  case "$ref" in
    refs/tags/v*)
      if [ "${ref#refs/tags/v}" != "$version" ]; then
        echo "::error::tag ${ref#refs/tags/} does not match Cargo.toml's version $version"
        return 1
      fi
      echo "tags=$version $sha" >>"${GITHUB_OUTPUT:?}"
      ;;
    refs/heads/main)
      echo "tags=edge $sha" >>"${GITHUB_OUTPUT:?}"
      ;;
    *)
      echo "::error::images are published from main and from v* tags only, not $ref"
      return 1
      ;;
  esac
  echo "version=$version" >>"$GITHUB_OUTPUT"
}

login() {
  : "${REGISTRY:?REGISTRY: e.g. ghcr.io/owner}"
  local config="${DOCKER_CONFIG:-$HOME/.docker}/config.json"
  mkdir -p "$(dirname "$config")"
  skopeo login --authfile "$config" --username "${GITHUB_ACTOR:?}" --password-stdin "${REGISTRY%%/*}" \
    <<<"${GITHUB_TOKEN:?}"
  echo "REGISTRY_AUTH_FILE=$config" >>"${GITHUB_ENV:?}"
}

# cosign's flags for `sign` and `attest`: keyless, or the key pair of COSIGN_KEY (see the top).
signing=(--yes)
if [ -n "${COSIGN_KEY:-}" ]; then
  signing+=(--key "$COSIGN_KEY" --use-signing-config=false --tlog-upload=false)
fi

# name of the registry repository of an image attribute: api-image -> user-api, ...
repo_of() {
  local ref
  ref="$(image_ref "$1")"
  echo "${REGISTRY:?}/${ref%%:*}"
}

push() {
  local arch="${1:?arch}" image repo digest script
  : >"digests-$arch.txt"
  for image in "${images[@]}"; do
    repo="$(repo_of "$image")"
    script="$(stream "$image")"
    "$script" | skopeo copy --digestfile "$tmp/digest" docker-archive:/dev/stdin "docker://$repo:${GITHUB_SHA:?}-$arch"
    digest="$(cat "$tmp/digest")"
    echo "$repo $digest" >>"digests-$arch.txt"
    syft scan "registry:$repo@$digest" -o "spdx-json=$tmp/sbom.spdx.json"
    cosign attest "${signing[@]}" --type spdxjson --predicate "$tmp/sbom.spdx.json" "$repo@$digest"
    cosign sign "${signing[@]}" "$repo@$digest"
    echo "pushed $repo@$digest ($arch), SBOM attested, signed"
  done
}

manifest() {
  local repo tag index sources tags
  read -r -a tags <<<"${TAGS:?TAGS: the tags of this push}"
  set -- "${tags[@]}"
  [ "$#" -gt 0 ] || { echo "manifest: no tags" >&2; return 1; }
  echo "| image | tags | index digest |" >>"$summary"
  echo "|---|---|---|" >>"$summary"
  cut -d' ' -f1 digests-*.txt | sort -u >"$tmp/repos.txt"
  : >"$tmp/indexes.txt"
  while read -r repo; do
    sources=()
    while read -r name digest; do
      [ "$name" = "$repo" ] && sources+=("$repo@$digest")
    done < <(cat digests-*.txt)
    args=()
    for tag in "$@"; do args+=(--tag "$repo:$tag"); done
    docker buildx imagetools create "${args[@]}" "${sources[@]}"
    index="$(docker buildx imagetools inspect "$repo:$1" --format '{{json .Manifest}}' | jq -r .digest)"
    cosign sign "${signing[@]}" "$repo@$index"
    echo "$repo $index" >>"$tmp/indexes.txt"
    echo "| $repo | $* | \`$index\` |" >>"$summary"
  done <"$tmp/repos.txt"
  overlay <"$tmp/indexes.txt"
}

# The production overlay's images (a kustomize Component it includes), each pinned to the digest
# of its index as pushed: what is deployed is what was signed, whatever a tag points at later.
# Reads "<repo> <digest>" lines; the release uploads the file (k8s/README.md, "Production").
overlay() {
  local file=k8s/overlays/production/release/kustomization.yaml repo digest
  {
    echo "# Written by .github/scripts/images.sh manifest (release.yml), for ${GITHUB_REF:-a release} at"
    echo "# ${GITHUB_SHA:-?}: the images of the production overlay, by the digest of each signed index."
    echo "apiVersion: kustomize.config.k8s.io/v1alpha1"
    echo "kind: Component"
    echo "images:"
    while read -r repo digest; do
      echo "  - name: ${repo##*/}"
      echo "    newName: $repo"
      echo "    digest: $digest"
    done
  } >"$file.new"
  mv "$file.new" "$file"
  echo "wrote $file"
}

case "${1:-}" in
  build | tags)
    command="$1"
    shift
    "$command" "$@"
    ;;
  reproduce | login | push | manifest)
    with_tools "$@"
    command="$1"
    shift
    "$command" "$@"
    ;;
  *)
    sed -n '2,/^set -euo pipefail$/{/^set /!p}' "$0" >&2
    exit 2
    ;;
esac
