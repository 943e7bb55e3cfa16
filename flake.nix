{
  description = "user-api: a Rust user API (Rocket, sqlx) on MariaDB behind NGINX, as layered OCI images";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      # The binary, the images, the apps and the checks are Linux things.
      linux = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # The dev shell and the formatter also work on macOS.
      everywhere = linux ++ [
        "x86_64-darwin"
        "aarch64-darwin"
      ];

      forSystems =
        systems: pick:
        lib.genAttrs systems (
          system:
          pick (
            import ./nix {
              pkgs = nixpkgs.legacyPackages.${system};
              revision = self.rev or self.dirtyRev or "dirty";
              lastModifiedDate = self.lastModifiedDate or "19700101000000";
            }
          )
        );
    in
    {
      packages = forSystems linux (outputs: outputs.packages);
      apps = forSystems linux (outputs: outputs.apps);
      checks = forSystems linux (outputs: outputs.checks);
      devShells = forSystems everywhere (outputs: outputs.devShells);
      formatter = forSystems everywhere (outputs: outputs.formatter);
    };
}
