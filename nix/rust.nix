# The Rust side: the user-api binary, and the checks that compile it (tests, clippy, rustfmt).
{
  lib,
  rustPlatform,
  runCommand,
  bash,
  bashInteractive,
  clippy,
  rustfmt,
  mariadb,
  nginx,
  python3,
  iproute2,
  version,
  cargoToml,
  # The git commit (or "dirty"), for the user_api_build_info metric (src/metrics.rs).
  revision,
}:
let
  fs = lib.fileset;
  root = ../.;

  # What `cargo build` reads, and nothing else, so that an edit to the README, the compose file
  # or the nginx config does not rebuild the binary. migrations/ is embedded by
  # `sqlx::migrate!()`. build.rs and .sqlx/ (offline data for `sqlx::query!`) are not used today;
  # maybeMissing keeps the build right if they appear.
  buildFiles = fs.unions [
    ../Cargo.toml
    ../Cargo.lock
    ../src
    ../migrations
    (fs.maybeMissing ../build.rs)
    (fs.maybeMissing ../.sqlx)
  ];

  # What `cargo test` and `cargo clippy --all-targets` read on top: the integration tests
  # (tests/api), the Python harness they start MariaDB and nginx through (`python3 -m harness`,
  # PYTHONPATH=tests), the nginx config the proxy tests run unchanged, and Rocket.toml. Not the
  # rest of tests/ (e2e, sweep, ci, requirements.txt): cargo never reads it, so editing it does
  # not rebuild the tests.
  testFiles = fs.unions [
    buildFiles
    ../tests/api
    ../tests/harness
    ../nginx
    (fs.maybeMissing ../Rocket.toml)
  ];

  fmtFiles = fs.unions [
    ../src
    ../tests/api
    (fs.maybeMissing ../rustfmt.toml)
    (fs.maybeMissing ../.rustfmt.toml)
  ];

  meta = {
    description = cargoToml.package.description or "user-api";
    license = lib.licenses.mit;
    mainProgram = "user-api";
    platforms = lib.platforms.linux;
  };

  common = {
    inherit version meta;
    cargoLock.lockFile = ../Cargo.lock;
    # Cargo.toml's [profile.release] (thin LTO, one codegen unit, stripped).
    buildType = "release";
    # `sqlx::query!` (if it is ever used) reads .sqlx/ instead of a live database at compile time.
    env.SQLX_OFFLINE = "true";
    # Read by option_env! for /metrics' build info. The price: every commit builds a new binary
    # (docs-only commits included); the same commit still builds the same one.
    env.USER_API_REVISION = revision;
  };

  # The shipped binary. Its tests run in `user-api-tests` below (checks.<system>.user-api), from
  # a source that also holds tests/ and nginx/.
  user-api = rustPlatform.buildRustPackage (
    common
    // {
      pname = "user-api";
      src = fs.toSource {
        inherit root;
        fileset = buildFiles;
      };
      doCheck = false;
      # The API image has no shell: fail the build if one ever enters the binary's closure.
      disallowedRequisites = [
        bash
        bashInteractive
      ];
    }
  );

  # The same build, plus `cargo test --release`. The tests start their own throwaway MariaDB and
  # nginx through tests/harness (python3, standard library only), on 127.0.0.1 and free ports:
  # inside the build sandbox's own network namespace, loopback is all they need.
  user-api-tests = rustPlatform.buildRustPackage (
    common
    // {
      pname = "user-api-tests";
      src = fs.toSource {
        inherit root;
        fileset = testFiles;
      };
      doCheck = true;
      # Every program the tests run, by the table in tests/ci/test_nix_inputs.py (which fails
      # when a test starts running one that is not here): the harness (python3), the servers,
      # and `ss` for the listen-backlog test (iproute2; stdenv moves its sbin/ to bin/).
      nativeCheckInputs = [
        python3
        mariadb
        nginx
        iproute2
      ];
      # The sandbox's HOME (/homeless-shelter) does not exist; give the test processes a real one.
      preCheck = ''
        export HOME="$(mktemp -d)"
      '';
    }
  );

  # cargo clippy on every target (lib, bin, tests), warnings are errors.
  user-api-clippy = rustPlatform.buildRustPackage (
    common
    // {
      pname = "user-api-clippy";
      src = fs.toSource {
        inherit root;
        fileset = testFiles;
      };
      nativeBuildInputs = [ clippy ];
      buildPhase = ''
        runHook preBuild
        cargo clippy --offline --release --all-targets -- --deny warnings
        runHook postBuild
      '';
      installPhase = ''
        runHook preInstall
        mkdir "$out"
        runHook postInstall
      '';
      doCheck = false;
    }
  );

  # rustfmt --check on every .rs file (no cargo, no dependencies needed).
  user-api-rustfmt =
    runCommand "user-api-rustfmt"
      {
        nativeBuildInputs = [ rustfmt ];
        src = fs.toSource {
          inherit root;
          fileset = fmtFiles;
        };
      }
      ''
        cd "$src"
        find src tests -name '*.rs' -print0 \
          | xargs -0 rustfmt --check --edition ${cargoToml.package.edition}
        touch "$out"
      '';
in
{
  inherit
    user-api
    user-api-tests
    user-api-clippy
    user-api-rustfmt
    ;
}
