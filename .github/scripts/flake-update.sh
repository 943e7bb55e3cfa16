#!/usr/bin/env bash
# flake-update.yml: move flake.lock to the newest commit of the branch flake.nix names
# (nixos-26.05), and open (or refresh) a pull request from the branch flake-update/nixpkgs. A
# pull request opened with GITHUB_TOKEN starts no workflow, so ci.yml is started on the branch
# with workflow_dispatch (the event GITHUB_TOKEN may trigger); its checks show on the pull
# request. Needs GH_TOKEN (GITHUB_TOKEN with contents, pull-requests and actions: write).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

branch=flake-update/nixpkgs
base="${GITHUB_REF_NAME:-main}"
before="$(jq -r .nodes.nixpkgs.locked.rev flake.lock)"
nix --extra-experimental-features "nix-command flakes" flake update
after="$(jq -r .nodes.nixpkgs.locked.rev flake.lock)"
if [ "$before" = "$after" ]; then
  echo "flake.lock is up to date (nixpkgs $before)"
  exit 0
fi

title="flake.lock: nixpkgs ${before:0:12} -> ${after:0:12} (nixos-26.05)"
body="nix flake update: NixOS/nixpkgs ${before} -> ${after} (https://github.com/NixOS/nixpkgs/compare/${before}...${after}). Opened by .github/workflows/flake-update.yml; ci.yml runs on this branch."
git switch -C "$branch"
git -c user.name="github-actions[bot]" -c user.email="41898282+github-actions[bot]@users.noreply.github.com" \
  commit -m "$title" -m "$body" -- flake.lock
git push --force "https://x-access-token:${GH_TOKEN:?}@github.com/${GITHUB_REPOSITORY:?}.git" "HEAD:refs/heads/$branch"
if [ -z "$(gh pr list --repo "$GITHUB_REPOSITORY" --head "$branch" --state open --json number --jq '.[].number')" ]; then
  gh pr create --repo "$GITHUB_REPOSITORY" --base "$base" --head "$branch" --title "$title" --body "$body"
else
  gh pr edit "$branch" --repo "$GITHUB_REPOSITORY" --title "$title" --body "$body"
fi
gh workflow run ci.yml --repo "$GITHUB_REPOSITORY" --ref "$branch"
