# `nix run .#load`, `nix run .#up` and `nix run .#deploy` (nix/deploy.sh: a rolling deploy of the
# api, one replica at a time). load and up use the container engine already on the machine
# (docker, or podman where that is what exists; CONTAINER_ENGINE=... picks one explicitly).
# Both take `--monitoring`: also the images of the compose profile `monitoring`
# (Prometheus, Grafana, the nginx, mysqld, blackbox and backup exporters), and for `up` the profile
# itself.
{
  lib,
  writeShellApplication,
  coreutils,
  bash,
  openssl,
  images,
}:
let
  # Sourced by both scripts: sets $engine.
  pickEngine = ''
    engine="''${CONTAINER_ENGINE:-}"
    if [ -z "$engine" ]; then
      if command -v docker >/dev/null 2>&1; then
        engine=docker
      elif command -v podman >/dev/null 2>&1; then
        engine=podman
      else
        echo "neither docker nor podman is on PATH (set CONTAINER_ENGINE to name another)" >&2
        exit 1
      fi
    fi
  '';

  streams = map toString [
    images.api-image
    images.proxy-image
    images.db-image
  ];
  monitoringStreams = map toString [
    images.prometheus-image
    images.grafana-image
    images.nginx-exporter-image
    images.mysqld-exporter-image
    images.blackbox-exporter-image
    images.backup-exporter-image
  ];

  # Sourced by both scripts: sets $monitoring (0/1) from the arguments; refuses others.
  parseArgs = ''
    monitoring=0
    for arg in "$@"; do
      case "$arg" in
        --monitoring) monitoring=1 ;;
        -h | --help)
          echo "usage: $(basename "$0") [--monitoring]   (--monitoring: also Prometheus, Grafana and the exporters)"
          exit 0
          ;;
        *)
          echo "$(basename "$0"): unknown argument '$arg' (only --monitoring)" >&2
          exit 2
          ;;
      esac
    done
  '';

  load = writeShellApplication {
    name = "user-api-load";
    runtimeInputs = [ coreutils ];
    text = ''
      ${parseArgs}
      ${pickEngine}
      streams=(${lib.escapeShellArgs streams})
      if [ "$monitoring" = 1 ]; then
        streams+=(${lib.escapeShellArgs monitoringStreams})
      fi
      # Each stream script writes an uncompressed image tarball to stdout: nothing is stored.
      for stream in "''${streams[@]}"; do
        echo "loading $(basename "$stream") into $engine" >&2
        "$stream" | "$engine" load
      done
    '';
  };

  up = writeShellApplication {
    name = "user-api-up";
    runtimeInputs = [
      coreutils
      bash
      openssl
    ];
    text = ''
      ${parseArgs}
      ${lib.getExe load} "$@"
      ${pickEngine}

      # Secrets, created once with random values (never overwritten). The containers' non-root
      # users (65534 for the API, 999 for MariaDB) read them through compose's bind mounts,
      # which keep the host's owner and mode: so the files are 0644, and the directory that
      # protects them on the host is 0700 (the runtime contract's rule). All five, with or
      # without --monitoring: the db creates the exporter's account either way.
      mkdir -p secrets
      chmod 0700 secrets
      for name in db_password db_root_password db_backup_password db_exporter_password grafana_admin_password; do
        file="secrets/$name.txt"
        if [ ! -s "$file" ]; then
          secret="$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
          printf '%s' "''${secret:0:32}" >"$file"
          echo "created $file" >&2
        fi
        chmod 0644 "$file"
      done
      # HTTPS: a local CA and a certificate for localhost (tls_cert, tls_key), made anew only
      # when missing or when the one it made is within 30 days of expiry; yours is only checked.
      cert_before="$(cat secrets/tls_cert.pem 2>/dev/null || true)"
      bash ${./local-tls.sh} secrets

      # The compose file of this flake, with ./ (secrets/, .env) meaning the current directory.
      compose_file=${../docker-compose.yml}
      case "$engine" in
        docker)
          if docker compose version >/dev/null 2>&1; then
            compose=(docker compose)
          elif command -v docker-compose >/dev/null 2>&1; then
            compose=(docker-compose)
          else
            echo "docker compose (v2) is not installed" >&2
            exit 1
          fi
          wait_flag=(--wait)
          ;;
        podman)
          # podman compose hands over to docker-compose or podman-compose, and only the former
          # has --wait: start without waiting, and say so below.
          compose=(podman compose)
          wait_flag=()
          ;;
        *)
          compose=("$engine" compose)
          wait_flag=(--wait)
          ;;
      esac
      args=(-f "$compose_file" --project-directory "$PWD")
      if [ "$monitoring" = 1 ]; then
        args+=(--profile monitoring)
      fi
      "''${compose[@]}" "''${args[@]}" up -d "''${wait_flag[@]}"
      # A certificate made anew for a stack that was already running: nginx reads it only when it
      # starts, and compose sees no change in the proxy's definition.
      if [ -n "$cert_before" ] && [ "$cert_before" != "$(cat secrets/tls_cert.pem)" ]; then
        "''${compose[@]}" "''${args[@]}" up -d "''${wait_flag[@]}" --force-recreate --no-deps proxy
      fi

      port="''${HTTP_PORT:-80}"
      tls_port="''${HTTPS_PORT:-443}"
      if [ "''${#wait_flag[@]}" = 0 ]; then
        echo "started without waiting for the healthchecks: watch 'podman ps' until db and api say (healthy)"
      fi
      cat <<EOF

      The stack is up (''${compose[*]} ''${args[*]} ps). Try:

        curl -X POST "localhost:$port/create_user?userid=1&username=John"
        curl "localhost:$port/get_user?userid=1"
        curl --cacert secrets/local-ca.pem "https://localhost:$tls_port/get_user?userid=1"

      Browsers: trust secrets/local-ca.pem (it vouches for this one certificate only), or accept
      the warning.

      Stop it with: ''${compose[*]} ''${args[*]} down
      EOF
      if [ "$monitoring" = 1 ]; then
        cat <<EOF

      Grafana: http://''${GRAFANA_ADDR:-127.0.0.1}:''${GRAFANA_PORT:-3000}/ (user admin, password in
      secrets/grafana_admin_password.txt), opening on the user-api dashboard.
      EOF
      fi
    '';
  };

  # The script the e2e runs as it is (tests/e2e/test_80_replicas.py), on this flake's compose file
  # and the current directory's project, like `up`. docker only: it reads container health.
  deploy = writeShellApplication {
    name = "user-api-deploy";
    runtimeInputs = [
      coreutils
      bash
    ];
    text = ''
      exec bash ${./deploy.sh} -f ${../docker-compose.yml} --project-directory "$PWD" "$@"
    '';
  };
in
{
  inherit load up deploy;
  apps = {
    load = {
      type = "app";
      program = lib.getExe load;
      meta.description = "Stream the api, proxy and db images (--monitoring: and the monitoring ones) into docker load (or podman load)";
    };
    up = {
      type = "app";
      program = lib.getExe up;
      meta.description = "Load the images, create ./secrets if missing, and docker compose up --wait (--monitoring: with the monitoring profile)";
    };
    deploy = {
      type = "app";
      program = lib.getExe deploy;
      meta.description = "Replace every running api replica, one at a time, by one on the image compose names now (a rolling deploy)";
    };
  };
}
