#!/usr/bin/env bash
# The script of checks.<system>.k8s-manifests (nix/checks.nix), also run by tests/k8s on machines
# without Nix (test_k8s_nix_check.py, with kubeconform replaced there: see that file).
#
#   bash nix/k8s-manifests.sh SOURCE SCHEMAS WORKDIR VERSION...
#
# Renders every overlay in SOURCE/k8s/overlays/ with `kubectl kustomize` (what tests/k8s and
# `kubectl apply -k` use; the default load restrictor: nginx/ is a kustomization of its own) into
# WORKDIR/<overlay>.yaml, and validates each against every VERSION (1.25.0 ...) with
# `kubeconform -strict -summary`, from the standalone strict schemas under SCHEMAS
# (nix/k8s-schemas.py). Never -ignore-missing-schemas: an object kind without a schema fails,
# as does any invalid object or unknown field.
set -euo pipefail

if [ $# -lt 4 ]; then
  echo "usage: $0 SOURCE SCHEMAS WORKDIR VERSION..." >&2
  exit 2
fi
src="$1" schemas="$2" work="$3"
shift 3

# kubeconform's Go template over its resource signature (pkg/registry/registry.go, schemaPath):
# "v" + the version, "-strict" with -strict, the lower-case kind, "-<group up to its first
# dot>-<version>" or "-<version>" for the core group: deployment-apps-v1.json, namespace-v1.json.
# shellcheck disable=SC2016  # a Go template, not shell
location="$schemas"'/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json'

mkdir -p "$work"
overlays=()
for kustomization in "$src"/k8s/overlays/*/kustomization.yaml; do
  [ -e "$kustomization" ] || continue
  overlays+=("$(basename "$(dirname "$kustomization")")")
done
if [ ${#overlays[@]} -eq 0 ]; then
  echo "k8s-manifests: no overlay in $src/k8s/overlays" >&2
  exit 1
fi

for overlay in "${overlays[@]}"; do
  kubectl kustomize "$src/k8s/overlays/$overlay" >"$work/$overlay.yaml"
  objects="$(grep -c '^kind: ' "$work/$overlay.yaml" || true)"
  if [ "$objects" -eq 0 ]; then
    echo "k8s-manifests: k8s/overlays/$overlay rendered no object" >&2
    exit 1
  fi
  for version in "$@"; do
    echo "k8s/overlays/$overlay ($objects objects), Kubernetes $version:"
    kubeconform -strict -summary -kubernetes-version "$version" -schema-location "$location" \
      "$work/$overlay.yaml"
  done
done
echo "k8s-manifests: ${overlays[*]} valid (strict) for Kubernetes $*"
