# Everything the flake exposes for one system; flake.nix only picks attributes from here.
{
  pkgs,
  # The git commit (or "dirty") and its time, from the flake's `self`.
  revision,
  lastModifiedDate,
}:
let
  inherit (pkgs) lib;

  cargoToml = lib.importTOML ../Cargo.toml;
  version = cargoToml.package.version;

  # MariaDB LTS (11.4), for the db image, the dev shell and the tests alike. Pinned to the
  # series rather than `mariadb`, so a nixpkgs update cannot move the data directory format.
  mariadb = pkgs.mariadb_114;

  contract = import ./contract.nix { inherit version; };

  # "YYYYMMDDHHMMSS" -> "YYYY-MM-DDTHH:MM:SSZ": the commit time as the images' `created`.
  created =
    let
      part = start: len: builtins.substring start len lastModifiedDate;
    in
    "${part 0 4}-${part 4 2}-${part 6 2}T${part 8 2}:${part 10 2}:${part 12 2}Z";

  rust = pkgs.callPackage ./rust.nix {
    inherit
      mariadb
      version
      cargoToml
      revision
      ;
  };

  images = pkgs.callPackage ./images.nix {
    inherit
      mariadb
      contract
      version
      created
      revision
      ;
    inherit (rust) user-api;
    source = cargoToml.package.repository or null;
    description = cargoToml.package.description or null;
  };

  apps = pkgs.callPackage ./apps.nix { inherit images; };

  # Imported with explicit arguments, not through callPackage: callPackage wraps an attribute-set
  # result with `override` and `overrideDerivation` (lib.makeOverridable), two functions that
  # `nix flake check` refuses as checks ("checks.<system>.override is not a derivation").
  # Every value here must be a derivation; the stand-in nixpkgs makes the same wrapping, so
  # nix/tests/check.sh catches a callPackage here.
  checks = import ./checks.nix {
    inherit (pkgs)
      lib
      runCommand
      writeText
      nginx
      openssl
      python3
      shellcheck
      kubectl
      kubeconform
      ;
    inherit rust images apps;
  };
in
{
  packages = images.outputs // {
    inherit (rust) user-api;
    default = rust.user-api;
  };

  inherit (apps) apps;

  inherit checks;

  devShells.default = pkgs.callPackage ./devshell.nix { inherit mariadb; };

  # nixfmt (RFC style) through treefmt, so that a bare `nix fmt` formats the whole tree.
  formatter = pkgs.nixfmt-tree;
}
