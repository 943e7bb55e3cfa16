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
      # The formatter also works on macOS. The dev shell does not: `cargo test`'s harness reaps
      # its servers with prctl(PR_SET_PDEATHSIG) and reads /proc, and iproute2 (`ss`) is Linux's;
      # a shell whose tests cannot run is not offered (nix/README.md).
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
      devShells = forSystems linux (outputs: outputs.devShells);
      formatter = forSystems everywhere (outputs: outputs.formatter);
    };
}
