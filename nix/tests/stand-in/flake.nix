# A stand-in for nixpkgs, for nix/tests/check.sh only: `--override-input nixpkgs` points the
# flake here, so that every output can be evaluated (no Nix build is possible on the CI
# machines). Written for this repo; no nixpkgs code. It implements only what the flake calls,
# with nixpkgs' argument lists (the source of each is named at the top of each file).
{
  description = "Stand-in for nixpkgs: structural evaluation of the user-api flake";

  outputs =
    { self }:
    let
      lib = import ./lib.nix;
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ] (system: import ./pkgs.nix { inherit lib system; });
    };
}
