# `nix develop`: the toolchain, and what `cargo test` runs (the same list as the user-api check's
# nativeCheckInputs, checked by tests/ci/test_nix_inputs.py): the harness (python3), which starts
# MariaDB and nginx from PATH, and `ss` (iproute2).
{
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
    iproute2
    curl
    wrk
  ];
  # rust-analyzer finds the standard library's sources here.
  env.RUST_SRC_PATH = "${rustPlatform.rustLibSrc}";
}
