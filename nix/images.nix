# The three OCI images, as dockerTools.streamLayeredImage scripts: building one gives a small
# script that writes an uncompressed image tarball to stdout (`nix build .#api-image &&
# ./result | docker load`, or podman load). Nothing big lands in the Nix store.
{
  lib,
  dockerTools,
  buildEnv,
  runCommand,
  makeWrapper,
  bash,
  coreutils,
  gnused,
  gawk,
  gnugrep,
  findutils,
  gzip,
  busybox,
  nginx,
  mariadb,
  user-api,
  contract,
  version,
  # ISO 8601 creation time (the commit's time, see flake.nix): fixed, so images are reproducible.
  created,
  # org.opencontainers.image.revision: the git commit, or "dirty".
  revision,
  # org.opencontainers.image.source, when Cargo.toml names a repository.
  source ? null,
  description ? null,
}:
let
  labels =
    title:
    {
      "org.opencontainers.image.title" = title;
      "org.opencontainers.image.version" = version;
      "org.opencontainers.image.revision" = revision;
      "org.opencontainers.image.created" = created;
      "org.opencontainers.image.licenses" = "MIT";
    }
    // lib.optionalAttrs (source != null) { "org.opencontainers.image.source" = source; }
    // lib.optionalAttrs (description != null) {
      "org.opencontainers.image.description" = description;
    };

  # Docker's image healthcheck (durations in nanoseconds). Compose declares the same test;
  # having it in the image too makes `docker run` alone report health.
  seconds = s: s * 1000000000;
  healthcheck = test: {
    Test = test;
    Interval = seconds 10;
    Timeout = seconds 5;
    StartPeriod = seconds 30;
    Retries = 3;
  };

  exposed = ports: lib.genAttrs ports (_: { });

  # ---- api --------------------------------------------------------------------------------------
  # Only the binary's closure (glibc, libgcc) and fakeNss (/etc/passwd and /etc/group with root
  # and nobody, so uid 65534 has a name). No shell: rust.nix forbids one in the closure.
  apiContents = [
    user-api
    dockerTools.fakeNss
  ];

  apiConfig = {
    User = contract.api.user;
    Entrypoint = contract.api.entrypoint;
    Env = contract.api.env;
    ExposedPorts = exposed contract.api.ports;
    Healthcheck = healthcheck contract.api.healthcheck;
    Labels = labels contract.api.image;
  };

  api-image = dockerTools.streamLayeredImage {
    name = contract.api.image;
    tag = contract.api.tag;
    inherit created;
    contents = apiContents;
    # A writable /tmp for anything that asks std::env::temp_dir(); layered images have none.
    # extraCommands runs in the final layer's root; nothing in the contents provides tmp/.
    extraCommands = ''
      mkdir -m 1777 tmp
    '';
    config = apiConfig;
  };

  # ---- proxy ------------------------------------------------------------------------------------
  # /bin/nginx, /bin/wget and every nginx/*.conf as /etc/nginx/ (contract: configDir): nginx.conf,
  # never edited, includes the others (upstream.conf, listen.conf, limits.conf, ...) from its own
  # directory, the same files the tests run with their own include files beside them. The
  # healthcheck client is busybox's wget applet, linked as /bin/wget only: busybox picks the
  # applet from argv[0], the image gains one ~1 MiB binary that shares glibc with nginx, and no
  # /bin/sh appears. curl would drag in its own TLS and HTTP/2 libraries, and nginx cannot make a
  # request by itself.
  nginxConfNames = builtins.filter (name: lib.hasSuffix ".conf" name) (
    builtins.attrNames (lib.filterAttrs (_: type: type == "regular") (builtins.readDir ../nginx))
  );
  nginxConfDir = lib.fileset.toSource {
    root = ../nginx;
    fileset = lib.fileset.unions (map (name: ../nginx + "/${name}") nginxConfNames);
  };
  configDir = lib.removePrefix "/" contract.proxy.configDir;

  proxyRoot = runCommand "user-api-proxy-root" { } ''
    mkdir -p "$out/bin" "$out/${configDir}"
    ln -s ${nginx}/bin/nginx "$out/bin/nginx"
    ln -s ${busybox}/bin/busybox "$out/bin/wget"
    install -m 0444 -t "$out/${configDir}" ${
      lib.concatMapStringsSep " " (name: "${nginxConfDir}/${name}") nginxConfNames
    }
  '';

  proxyContents = [
    proxyRoot
    dockerTools.fakeNss
  ];

  proxyConfig = {
    User = contract.proxy.user;
    Entrypoint = contract.proxy.entrypoint;
    ExposedPorts = exposed contract.proxy.ports;
    StopSignal = contract.proxy.stopSignal;
    Healthcheck = healthcheck contract.proxy.healthcheck;
    Labels = labels contract.proxy.image;
  };

  proxy-image = dockerTools.streamLayeredImage {
    name = contract.proxy.image;
    tag = contract.proxy.tag;
    inherit created;
    contents = proxyContents;
    # The entrypoint's prefix (-p /tmp/): nginx.conf keeps its pid file and all temp files there.
    extraCommands = ''
      mkdir -m 1777 tmp
    '';
    config = proxyConfig;
  };

  # ---- db ---------------------------------------------------------------------------------------
  # MariaDB LTS with the repo's db/entrypoint.sh as /bin/db-entrypoint, db/healthcheck.sh as
  # /bin/healthcheck.sh and db/backup.sh as /bin/db-backup (the compose backup service). All are
  # bash scripts, installed verbatim and started through a wrapper that puts what they (and
  # mariadb-install-db) call on PATH; gzip for the backups (sha256sum is in coreutils).
  dbTools = [
    bash
    coreutils
    gnused
    gawk
    gnugrep
    findutils
    gzip
    mariadb
  ];

  dbScripts =
    runCommand "user-api-db-scripts"
      {
        nativeBuildInputs = [ makeWrapper ];
      }
      ''
        install -Dm444 ${../db/entrypoint.sh} "$out/libexec/user-api-db/entrypoint.sh"
        install -Dm444 ${../db/healthcheck.sh} "$out/libexec/user-api-db/healthcheck.sh"
        install -Dm444 ${../db/backup.sh} "$out/libexec/user-api-db/backup.sh"
        makeWrapper ${bash}/bin/bash "$out/bin/db-entrypoint" \
          --add-flags "$out/libexec/user-api-db/entrypoint.sh" \
          --prefix PATH : ${lib.makeBinPath dbTools}
        makeWrapper ${bash}/bin/bash "$out/bin/healthcheck.sh" \
          --add-flags "$out/libexec/user-api-db/healthcheck.sh" \
          --prefix PATH : ${lib.makeBinPath dbTools}
        makeWrapper ${bash}/bin/bash "$out/bin/db-backup" \
          --add-flags "$out/libexec/user-api-db/backup.sh" \
          --prefix PATH : ${lib.makeBinPath dbTools}
      '';

  dbRoot = buildEnv {
    name = "user-api-db-root";
    paths = [ dbScripts ] ++ dbTools;
    pathsToLink = [ "/bin" ];
  };

  # fakeNss has root (0) and nobody (65534); the server runs as mysql (999), like the official
  # images, so that a data volume moves between this image and those.
  dbNss = dockerTools.fakeNss.override {
    extraPasswdLines = [
      "mysql:x:${toString contract.db.uid}:${toString contract.db.gid}:MariaDB server:${contract.db.dataDir}:/bin/false"
    ];
    extraGroupLines = [ "mysql:x:${toString contract.db.gid}:" ];
  };

  dbContents = [
    dbRoot
    dbNss
  ];

  db-image = dockerTools.streamLayeredImage {
    name = contract.db.image;
    tag = contract.db.tag;
    inherit created;
    contents = dbContents;
    # /var/lib/mysql is owned by mysql in the image, so that a fresh named volume mounted on it
    # inherits the owner. No /run/mysqld: compose mounts a tmpfs there (mode=1777), and runc gives
    # a tmpfs on an existing directory that directory's mode with a root owner, which uid 999
    # could not write; without compose, the entrypoint falls back to /tmp/mysqld. fakeroot makes
    # chown possible without root; the paths are relative to the final layer's root. /tmp:
    # nothing in the contents provides it.
    fakeRootCommands = ''
      mkdir -p .${contract.db.dataDir} .${contract.db.backupDir} tmp
      chown ${toString contract.db.uid}:${toString contract.db.gid} .${contract.db.dataDir} .${contract.db.backupDir}
      chmod 0750 .${contract.db.dataDir} .${contract.db.backupDir}
      chmod 1777 tmp
    '';
    config = dbConfig;
  };

  dbConfig = {
    User = contract.db.user;
    Entrypoint = contract.db.entrypoint;
    # The official images' CMD; db-entrypoint drops it and runs mariadbd with its own options.
    Cmd = contract.db.cmd;
    # For `docker exec`, and for the healthcheck, whose `healthcheck.sh` is looked up in PATH.
    Env = [ "PATH=/bin" ];
    ExposedPorts = exposed contract.db.ports;
    Volumes = {
      ${contract.db.dataDir} = { };
    };
    Healthcheck = healthcheck contract.db.healthcheck;
    Labels = labels contract.db.image;
  };
in
{
  inherit api-image proxy-image db-image;

  # The proxy's /etc/nginx as a store path (checks.nix runs `nginx -t` on it).
  proxyConfigDir = nginxConfDir;

  # What checks.nix compares with docker-compose.yml and the contract: each image's reference,
  # config, contents (the trees merged into its root) and the files that must be in that root.
  manifest = {
    api = {
      ref = "${contract.api.image}:${contract.api.tag}";
      config = apiConfig;
      contents = apiContents;
      files = [
        "bin/user-api"
        "etc/passwd"
        "etc/group"
      ];
    };
    proxy = {
      ref = "${contract.proxy.image}:${contract.proxy.tag}";
      config = proxyConfig;
      contents = proxyContents;
      files = [
        "bin/nginx"
        "bin/wget"
        "etc/passwd"
        "etc/group"
      ]
      ++ map (name: "${configDir}/${name}") nginxConfNames;
    };
    db = {
      ref = "${contract.db.image}:${contract.db.tag}";
      config = dbConfig;
      contents = dbContents;
      files = [
        "bin/db-entrypoint"
        "bin/healthcheck.sh"
        "bin/db-backup"
        "bin/gzip"
        "bin/bash"
        "bin/mariadbd"
        "bin/mariadb"
        "bin/mariadb-admin"
        "bin/mariadb-install-db"
        "etc/passwd"
        "etc/group"
      ];
    };
  };
}
