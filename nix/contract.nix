# The runtime contract the images implement: names, users, entrypoints, commands, ports,
# healthchecks, paths. Its one statement is nix/contract.json, read here, by
# nix/tests/image_contract.py (against the built images and docker-compose.yml) and by
# tests/harness/images.py (the e2e stand-in images). This file only adds each image's tag:
# Cargo.toml's version.
{ version }:
let
  json = builtins.fromJSON (builtins.readFile ./contract.json);
  images = removeAttrs json [ "_comment" ];
in
builtins.mapAttrs (_: image: image // { tag = version; }) images
