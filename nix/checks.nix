# `nix flake check`: builds and tests the binary, lints, and proves that the nginx config, the
# images and the apps are what docker-compose.yml and the runtime contract expect.
{
  runCommand,
  writeText,
  nginx,
  python3,
  shellcheck,
  rust,
  images,
  apps,
}:
let
  manifestFile = writeText "user-api-images.json" (builtins.toJSON images.manifest);
in
{
  # The package with its tests (cargo test --release, MariaDB and nginx on loopback in the
  # build sandbox), clippy with warnings as errors, and rustfmt.
  user-api = rust.user-api-tests;
  clippy = rust.user-api-clippy;
  rustfmt = rust.user-api-rustfmt;

  # `nginx -t` on the shipped configuration exactly as the proxy image has it (every
  # nginx/*.conf in one directory, nginx.conf unedited), started like the image's entrypoint with
  # a writable prefix (-p) for the pid file and temp paths, which nginx.conf keeps relative.
  # Only upstream.conf is the test's own: nginx resolves upstream host names while it reads the
  # config, and `api` exists only on the compose network.
  nginx-config = runCommand "user-api-nginx-config" { nativeBuildInputs = [ nginx ]; } ''
    mkdir conf prefix
    cp ${images.proxyConfigDir}/*.conf conf/
    chmod u+w conf/upstream.conf
    echo 'server 127.0.0.1:8000;' >conf/upstream.conf
    # nginx -t opens the access log, /dev/stdout: send stdout to a file the build user owns.
    if ! nginx -t -p "$PWD/prefix/" -e stderr -c "$PWD/conf/nginx.conf" >nginx-t.log 2>&1; then
      cat nginx-t.log >&2
      exit 1
    fi
    cat nginx-t.log
    touch "$out"
  '';

  # The images' user, entrypoint, ports, stop signal, healthcheck and tags against the contract
  # and docker-compose.yml, and the files the contract names (/bin/user-api, /bin/wget,
  # /bin/healthcheck.sh, /etc/nginx/nginx.conf, ...) against the images' real contents.
  image-config =
    runCommand "user-api-image-config"
      {
        nativeBuildInputs = [ (python3.withPackages (ps: [ ps.pyyaml ])) ];
        # Read by nix/tests/check.sh (nix eval --json), which runs the same script without Nix.
        passthru.manifest = images.manifest;
      }
      ''
        python3 ${./tests/image_contract.py} \
          --contract ${./contract.json} --manifest ${manifestFile} \
          --compose ${../docker-compose.yml} --nginx-conf ${../nginx/nginx.conf} --check-files
        touch "$out"
      '';

  # The db and mysqld-exporter images run these scripts verbatim; info-level notes are not
  # failures.
  db-scripts = runCommand "user-api-db-scripts-shellcheck" { nativeBuildInputs = [ shellcheck ]; } ''
    shellcheck --severity=warning ${../db/entrypoint.sh} ${../db/healthcheck.sh} ${../db/backup.sh} \
      ${../monitoring/mysqld-exporter-entrypoint.sh}
    touch "$out"
  '';

  # Building the stream scripts builds each image's final layer (fakeroot, /tmp, ownership).
  inherit (images)
    api-image
    proxy-image
    db-image
    prometheus-image
    grafana-image
    nginx-exporter-image
    mysqld-exporter-image
    ;

  # writeShellApplication runs shellcheck on the app scripts when it builds them.
  load-app = apps.load;
  up-app = apps.up;
}
