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
      # nixpkgs' default.nix (which its flake's legacyPackages imports) refuses a Nix older than
      # lib/minver.nix ("2.18.0" in nixos-26.05), with this message.
      requiredVersion = "2.18.0";
      checkNix =
        pkgs:
        if !builtins ? nixVersion || builtins.compareVersions requiredVersion builtins.nixVersion == 1 then
          abort "This version of Nixpkgs requires Nix >= ${requiredVersion}, please upgrade!"
        else
          pkgs;
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ] (system: checkNix (import ./pkgs.nix { inherit lib system; }));
    };
}
