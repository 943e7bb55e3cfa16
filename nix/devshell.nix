# `nix develop`: the toolchain, and what `cargo test` runs (the same list as the user-api check's
# nativeCheckInputs, checked by tests/ci/test_nix_inputs.py): the harness (python3), which starts
# MariaDB and nginx from PATH, and `ss` (iproute2).
{
  lib,
  stdenv,
  mkShell,
  rustPlatform,
  rustc,
  cargo,
  clippy,
  rustfmt,
  rust-analyzer,
  sqlx-cli,
  mariadb,
  nginx,
  python3,
  iproute2,
  curl,
  wrk,
}:
mkShell {
  name = "user-api";
  packages = [
    rustc
    cargo
    clippy
    rustfmt
    rust-analyzer
    sqlx-cli
    mariadb
    nginx
    python3
    curl
    wrk
  ]
  # Linux only, like the tests' harness itself (prctl, /proc): on macOS the shell builds and lints,
  # and `cargo test` cannot run (nix/README.md).
  ++ lib.optionals stdenv.hostPlatform.isLinux [ iproute2 ];
  # rust-analyzer finds the standard library's sources here.
  env.RUST_SRC_PATH = "${rustPlatform.rustLibSrc}";
}
