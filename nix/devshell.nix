# `nix develop`: the toolchain, and the MariaDB server and nginx that `cargo test` starts
# (tests/api/helpers.rs runs mariadb-install-db and mariadbd from PATH, the proxy tests nginx).
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
    curl
    wrk
  ];
  # rust-analyzer finds the standard library's sources here.
  env.RUST_SRC_PATH = "${rustPlatform.rustLibSrc}";
}
