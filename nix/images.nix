# The OCI images, as dockerTools.streamLayeredImage scripts: building one gives a small script
# that writes an uncompressed image tarball to stdout (`nix build .#api-image && ./result |
# docker load`, or podman load). Nothing big lands in the Nix store. api, proxy and db are the
# stack; prometheus, grafana and the nginx, mysqld, blackbox and backup exporters the compose
# profile `monitoring` (monitoring/README.md); acme the ACME client of docker-compose.acme.yml.
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
  cacert,
  nginx,
  mariadb,
  prometheus,
  grafana,
  prometheus-nginx-exporter,
  prometheus-mysqld-exporter,
  prometheus-blackbox-exporter,
  prometheus-node-exporter,
  certbot,
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
  # /bin/proxy-preflight, /bin/nginx, /bin/wget and every nginx/*.conf as /etc/nginx/ (contract: configDir): nginx.conf,
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

  # The entrypoint (contract: proxy.entrypoint) is src/bin/proxy-preflight.rs, which refuses an
  # expired certificate (nginx never checks dates) and then execs nginx. Copied out of the
  # user-api package, so that the image holds that one binary and not the API's.
  proxyPreflight = runCommand "user-api-proxy-preflight" { } ''
    install -Dm555 ${user-api}/bin/proxy-preflight "$out/bin/proxy-preflight"
  '';

  proxyRoot = runCommand "user-api-proxy-root" { } ''
    mkdir -p "$out/bin" "$out/${configDir}"
    ln -s ${proxyPreflight}/bin/proxy-preflight "$out/bin/proxy-preflight"
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

  # ---- monitoring (the compose profile `monitoring`) ---------------------------------------------
  # Four images of one shape: a nixpkgs program in /bin, busybox's wget applet as /bin/wget for
  # the healthcheck (as in the proxy image), fakeNss (the images run as nobody, 65534), /tmp
  # 1777, the repository's configuration where the contract puts it, and the data directory (if
  # the contract names one) owned by the image's user, so that a fresh named volume mounted there
  # inherits the owner. Configuration is baked in, like nginx.conf in the proxy image: one source
  # for compose, the tests and the images, and `nix run .#up` works from any directory.
  ruleNames = builtins.filter (name: lib.hasSuffix ".rules.yml" name) (
    builtins.attrNames (
      lib.filterAttrs (_: type: type == "regular") (builtins.readDir ../monitoring/rules)
    )
  );
  monitoringSource = lib.fileset.toSource {
    root = ../monitoring;
    fileset = lib.fileset.unions (
      [
        ../monitoring/prometheus.yml
        ../monitoring/blackbox.yml
        ../monitoring/mysqld-exporter-entrypoint.sh
        ../monitoring/grafana/provisioning
        ../monitoring/grafana/dashboards
      ]
      ++ map (name: ../monitoring/rules + "/${name}") ruleNames
    );
  };

  # The root of one monitoring image: `links` (name in /bin -> store path), then `extra` shell.
  monitoringRoot =
    service: links: extra:
    runCommand "user-api-${service}-root" { } ''
      mkdir -p "$out/bin"
      ${lib.concatStringsSep "\n" (
        lib.mapAttrsToList (name: target: ''ln -s ${target} "$out/bin/${name}"'') links
      )}
      ln -s ${busybox}/bin/busybox "$out/bin/wget"
      ${extra}
    '';

  monitoringImage =
    service: root: files:
    let
      c = contract.${service};
      contents = [
        root
        dockerTools.fakeNss
      ];
      config = {
        User = c.user;
        Entrypoint = c.entrypoint;
        ExposedPorts = exposed c.ports;
        Healthcheck = healthcheck c.healthcheck;
        Labels = labels c.image;
      }
      // lib.optionalAttrs (c ? cmd) { Cmd = c.cmd; }
      // lib.optionalAttrs (c ? env) { Env = c.env; }
      // lib.optionalAttrs (c ? dataDir) { Volumes = { ${c.dataDir} = { }; }; };
    in
    {
      image = dockerTools.streamLayeredImage {
        name = c.image;
        tag = c.tag;
        inherit created contents config;
        fakeRootCommands = ''
          mkdir -p tmp
          chmod 1777 tmp
        ''
        + lib.optionalString (c ? dataDir) ''
          mkdir -p .${c.dataDir}
          chown ${c.user} .${c.dataDir}
          chmod 0750 .${c.dataDir}
        '';
      };
      manifest = {
        ref = "${c.image}:${c.tag}";
        inherit config contents;
        files = files ++ [
          "bin/wget"
          "etc/passwd"
          "etc/group"
        ];
      };
    };

  prometheusConfigDir = lib.removePrefix "/" contract.prometheus.configDir;
  prometheusImage =
    monitoringImage "prometheus"
      (monitoringRoot "prometheus" { prometheus = "${prometheus}/bin/prometheus"; } ''
        mkdir -p "$out/${prometheusConfigDir}/rules"
        install -m 0444 ${monitoringSource}/prometheus.yml "$out/${prometheusConfigDir}/prometheus.yml"
        install -m 0444 -t "$out/${prometheusConfigDir}/rules" ${
          lib.concatMapStringsSep " " (name: "${monitoringSource}/rules/${name}") ruleNames
        }
      '')
      (
        [
          "bin/prometheus"
          "${prometheusConfigDir}/prometheus.yml"
        ]
        ++ map (name: "${prometheusConfigDir}/rules/${name}") ruleNames
      );

  # `grafana server --homepath=/share/grafana` (the contract's entrypoint): Grafana finds its
  # conf/defaults.ini and public/ under the home path, which is the package's own share/grafana,
  # read-only; everything it writes goes where the image's Env points (GF_PATHS_DATA, _LOGS,
  # _PLUGINS: the data volume).
  grafanaConfigDir = lib.removePrefix "/" contract.grafana.configDir;
  grafanaImage =
    monitoringImage "grafana"
      (monitoringRoot "grafana" { grafana = "${grafana}/bin/grafana"; } ''
        mkdir -p "$out/share" "$out/${grafanaConfigDir}"
        ln -s ${grafana}/share/grafana "$out/share/grafana"
        cp -r ${monitoringSource}/grafana/provisioning "$out/${grafanaConfigDir}/provisioning"
        cp -r ${monitoringSource}/grafana/dashboards "$out/${lib.removePrefix "/" contract.grafana.dashboardsDir}"
      '')
      [
        "bin/grafana"
        "share/grafana"
        "${grafanaConfigDir}/provisioning/datasources/prometheus.yml"
        "${grafanaConfigDir}/provisioning/dashboards/user-api.yml"
        "${lib.removePrefix "/" contract.grafana.dashboardsDir}/user-api.json"
      ];

  nginxExporterImage =
    monitoringImage "nginx-exporter"
      (monitoringRoot "nginx-exporter" {
        nginx-prometheus-exporter = lib.getExe prometheus-nginx-exporter;
      } "")
      [ "bin/nginx-prometheus-exporter" ];

  # monitoring/mysqld-exporter-entrypoint.sh writes the exporter's my.cnf into /tmp from the
  # password secret, then execs it: busybox is also /bin/sh here (shell builtins only).
  mysqldExporterImage =
    monitoringImage "mysqld-exporter"
      (monitoringRoot "mysqld-exporter"
        {
          mysqld_exporter = lib.getExe prometheus-mysqld-exporter;
          sh = "${busybox}/bin/busybox";
        }
        ''
          install -m 0555 ${monitoringSource}/mysqld-exporter-entrypoint.sh "$out/bin/mysqld-exporter-entrypoint"
        ''
      )
      [
        "bin/mysqld-exporter-entrypoint"
        "bin/mysqld_exporter"
        "bin/sh"
      ];
  # ---- acme (docker-compose.acme.yml) -----------------------------------------------------------
  # certbot (5.5, the version Debian forky ships, which the tests run; lego would be one Go
  # binary instead of a Python closure, but nixpkgs' lego 5 has another CLI than the lego 4
  # these machines can run) and nginx/acme/acme.sh as /bin/acme, run by busybox's sh (certbot
  # runs the deploy hook with /bin/sh too); the applets the script calls are links to the same
  # busybox (it picks the applet from argv[0]). The state directory's subdirectories are owned
  # by the image's user, so that fresh named volumes mounted on them inherit the owner (the
  # proxy, the same uid, reads live/ and webroot/). The CA's directory is HTTPS: the
  # image has cacert's bundle where certbot's requests is told to look (REQUESTS_CA_BUNDLE).
  acmeContract = contract.acme;
  acmeApplets = [
    "sh"
    "cat"
    "cp"
    "mv"
    "tr"
    "xargs"
    "echo"
    "sleep"
    "kill"
  ];
  acmeRoot = runCommand "user-api-acme-root" { } ''
    mkdir -p "$out/bin" "$out/etc/ssl/certs"
    ln -s ${lib.getExe certbot} "$out/bin/certbot"
    ln -s ${busybox}/bin/busybox "$out/bin/busybox"
    ${lib.concatMapStringsSep "\n" (applet: ''ln -s busybox "$out/bin/${applet}"'') acmeApplets}
    install -m 0555 ${../nginx/acme/acme.sh} "$out/bin/acme"
    ln -s ${cacert}/etc/ssl/certs/ca-bundle.crt "$out/etc/ssl/certs/ca-certificates.crt"
  '';
  acmeContents = [
    acmeRoot
    dockerTools.fakeNss
  ];
  acmeConfig = {
    User = acmeContract.user;
    Entrypoint = acmeContract.entrypoint;
    Cmd = acmeContract.cmd;
    Env = acmeContract.env;
    Healthcheck = healthcheck acmeContract.healthcheck;
    Labels = labels acmeContract.image;
  };
  acme-image = dockerTools.streamLayeredImage {
    name = acmeContract.image;
    tag = acmeContract.tag;
    inherit created;
    contents = acmeContents;
    fakeRootCommands = ''
      mkdir -p tmp ${
        lib.concatMapStringsSep " " (d: ".${acmeContract.stateDir}/${d}") acmeContract.stateSubdirs
      }
      chmod 1777 tmp
      chown -R ${acmeContract.user} .${acmeContract.stateDir}
      chmod 0700 .${acmeContract.stateDir}/certbot .${acmeContract.stateDir}/live
      chmod 0755 .${acmeContract.stateDir} .${acmeContract.stateDir}/webroot
    '';
    config = acmeConfig;
  };

  # The certificate the proxy serves, probed over TLS (monitoring/blackbox.yml, baked in).
  blackboxConfigDir = lib.removePrefix "/" contract.blackbox-exporter.configDir;
  blackboxExporterImage =
    monitoringImage "blackbox-exporter"
      (monitoringRoot "blackbox-exporter"
        {
          blackbox_exporter = lib.getExe prometheus-blackbox-exporter;
        }
        ''
          mkdir -p "$out/${blackboxConfigDir}"
          install -m 0444 ${monitoringSource}/blackbox.yml "$out/${blackboxConfigDir}/blackbox.yml"
        ''
      )
      [
        "bin/blackbox_exporter"
        "${blackboxConfigDir}/blackbox.yml"
      ];

  # The backups' own metrics: db/backup.sh writes them as text files into /backups/metrics
  # (the last backup, the archive's lag, the free space), node_exporter's textfile collector,
  # alone, serves them.
  backupExporterImage =
    monitoringImage "backup-exporter"
      (monitoringRoot "backup-exporter" {
        node_exporter = lib.getExe prometheus-node-exporter;
      } "")
      [ "bin/node_exporter" ];

  # Every image by its flake output name: packages.<name> and checks.<name> (nix/default.nix,
  # nix/checks.nix).
  outputs = {
    inherit api-image proxy-image db-image acme-image;
    prometheus-image = prometheusImage.image;
    grafana-image = grafanaImage.image;
    nginx-exporter-image = nginxExporterImage.image;
    mysqld-exporter-image = mysqldExporterImage.image;
    blackbox-exporter-image = blackboxExporterImage.image;
    backup-exporter-image = backupExporterImage.image;
  };
in
outputs
// {
  inherit outputs;

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
        "bin/proxy-preflight"
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
        "bin/mariadb-dump"
        "bin/mariadb-binlog"
        "bin/mariadb-install-db"
        "etc/passwd"
        "etc/group"
      ];
    };
    prometheus = prometheusImage.manifest;
    grafana = grafanaImage.manifest;
    nginx-exporter = nginxExporterImage.manifest;
    mysqld-exporter = mysqldExporterImage.manifest;
    blackbox-exporter = blackboxExporterImage.manifest;
    backup-exporter = backupExporterImage.manifest;
    acme = {
      ref = "${acmeContract.image}:${acmeContract.tag}";
      config = acmeConfig;
      contents = acmeContents;
      files = [
        "bin/acme"
        "bin/certbot"
        "bin/sh"
        "etc/ssl/certs/ca-certificates.crt"
        "etc/passwd"
        "etc/group"
      ]
      ++ map (applet: "bin/${applet}") acmeApplets;
    };
  };
}
