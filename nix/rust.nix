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
  version,
  cargoToml,
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

  # What `cargo test` and `cargo clippy --all-targets` read on top: the integration tests (not
  # tests/e2e/, the compose harness, which cargo never reads), the nginx config the proxy tests
  # start nginx with, and Rocket.toml.
  testFiles = fs.unions [
    buildFiles
    (fs.difference ../tests (fs.maybeMissing ../tests/e2e))
    ../nginx
    (fs.maybeMissing ../Rocket.toml)
  ];

  fmtFiles = fs.unions [
    ../src
    (fs.difference ../tests (fs.maybeMissing ../tests/e2e))
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

  # The same build, plus `cargo test --release`. Tests that need sockets run inside the build
  # sandbox on loopback: preCheck starts a throwaway MariaDB on 127.0.0.1 (root without a
  # password, one database per test, as tests/api/helpers.rs expects from TEST_DATABASE_URL),
  # and the proxy tests start nginx from PATH themselves.
  user-api-tests = rustPlatform.buildRustPackage (
    common
    // {
      pname = "user-api-tests";
      src = fs.toSource {
        inherit root;
        fileset = testFiles;
      };
      doCheck = true;
      nativeCheckInputs = [
        mariadb
        nginx
      ];
      preCheck = ''
        export HOME="$(mktemp -d)"
        dbdir="$TMPDIR/mariadb"
        mkdir -p "$dbdir"
        # The sandbox has its own network namespace; a pseudo-random port only matters where the
        # sandbox is off.
        dbport=$((20000 + RANDOM % 20000))
        if ! mariadb-install-db --no-defaults --datadir="$dbdir/data" \
            --auth-root-authentication-method=normal --skip-test-db --cross-bootstrap \
            >"$dbdir/install.log" 2>&1; then
          cat "$dbdir/install.log" >&2
          exit 1
        fi
        mariadbd --no-defaults --datadir="$dbdir/data" --socket="$dbdir/mysqld.sock" \
          --pid-file="$dbdir/mysqld.pid" --port="$dbport" --bind-address=127.0.0.1 \
          --skip-log-bin --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=2 \
          --max-connections=500 >"$dbdir/server.log" 2>&1 &
        mariadb_pid=$!
        for _ in $(seq 1 120); do
          if mariadb-admin --no-defaults --protocol=tcp -h 127.0.0.1 -P "$dbport" -u root \
              ping >/dev/null 2>&1; then
            break
          fi
          sleep 0.5
        done
        # (ping succeeds even when the login is refused: check that root can log in.)
        if ! mariadb --no-defaults --protocol=tcp -h 127.0.0.1 -P "$dbport" -u root \
            -e 'SELECT 1' >/dev/null; then
          cat "$dbdir/server.log" >&2
          exit 1
        fi
        export TEST_DATABASE_URL="mysql://root@127.0.0.1:$dbport/"
      '';
      postCheck = ''
        kill "$mariadb_pid"
        wait "$mariadb_pid" || true
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
