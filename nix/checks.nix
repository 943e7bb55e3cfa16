# `nix flake check`: builds and tests the binary, lints, and proves that the nginx config, the
# images and the apps are what docker-compose.yml and the runtime contract expect.
{
  lib,
  runCommand,
  writeText,
  nginx,
  openssl,
  python3,
  shellcheck,
  kubectl,
  kubeconform,
  rust,
  images,
  apps,
}:
let
  manifestFile = writeText "user-api-images.json" (builtins.toJSON images.manifest);

  # What `kubectl kustomize k8s/overlays/<name>` reads: k8s/ and nginx/ (k8s/base lists ../../nginx
  # as a resource, whose kustomization generates the proxy's ConfigMap from nginx/'s files).
  k8sSource = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../k8s
      ../nginx
    ];
  };

  # The Kubernetes minor versions k8s/README.md claims (tests/k8s validates every one of them).
  # The check takes the oldest and the newest of them that nixpkgs' kubernetes-validate ships.
  k8sOldest = "1.25";
  k8sNewest = "1.37";
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
  # config, and `api` exists only on the compose network. And the certificate files of tls.conf,
  # which the image gets at run time as the compose secrets tls_cert and tls_key and nginx -t
  # loads: made by nix/local-tls.sh (what `nix run .#up` runs), where the build user can read them.
  nginx-config =
    runCommand "user-api-nginx-config"
      {
        nativeBuildInputs = [
          nginx
          openssl
        ];
      }
      ''
        mkdir conf prefix
        cp ${images.proxyConfigDir}/*.conf conf/
        chmod u+w conf/upstream.conf conf/tls.conf
        echo 'server 127.0.0.1:8000;' >conf/upstream.conf
        bash ${./local-tls.sh} secrets
        substituteInPlace conf/tls.conf \
          --replace-fail /run/secrets/tls_cert "$PWD/secrets/tls_cert.pem" \
          --replace-fail /run/secrets/tls_key "$PWD/secrets/tls_key.pem"
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
          --compose ${../docker-compose.yml} ${../docker-compose.acme.yml} --nginx-conf ${../nginx/nginx.conf} --check-files
        touch "$out"
      '';

  # Every overlay rendered with nixpkgs' kubectl (`kubectl kustomize`, as tests/k8s does) and
  # validated with nixpkgs' kubeconform, `-strict -summary`, against Kubernetes 1.25 and the newest
  # version (<= 1.37) nixpkgs' kubernetes-validate ships; an invalid object, an unknown field or a
  # kind without a schema fails (never -ignore-missing-schemas). A second validator next to
  # tests/k8s' kubernetes-validate 1.37.0 (PyPI).
  # The schemas come from python3.pkgs.kubernetes-validate, which ships them inside the package:
  # kubeconform downloads its schemas from GitHub at run time, the build sandbox has no network,
  # and a fixed-output derivation of them would need a hash that nobody computed (never invent
  # one). nix/k8s-schemas.py makes them standalone first: as shipped they refer to
  # https://kubernetes.io/api/_definitions.json, which kubeconform would fetch.
  # nix/k8s-manifests.sh is the whole check; tests/k8s/test_k8s_nix_check.py runs it without Nix.
  k8s-manifests =
    runCommand "user-api-k8s-manifests"
      {
        nativeBuildInputs = [
          kubectl
          kubeconform
          python3
        ];
        # nix/tests/check.sh renders the overlays from this copy: it must hold all they read.
        passthru.source = k8sSource;
      }
      ''
        export HOME="$TMPDIR"
        shipped=${python3.pkgs.kubernetes-validate}/${python3.sitePackages}/kubernetes_validate/kubernetes-json-schema
        versions="$(python3 ${./k8s-schemas.py} "$shipped" schemas ${k8sOldest} ${k8sNewest})"
        # $versions unquoted: one word per version.
        bash ${./k8s-manifests.sh} ${k8sSource} schemas rendered $versions
        touch "$out"
      '';

  # The db, mysqld-exporter and acme images run these scripts verbatim, the deploy app runs
  # nix/deploy.sh; info-level notes are not failures.
  db-scripts = runCommand "user-api-db-scripts-shellcheck" { nativeBuildInputs = [ shellcheck ]; } ''
    shellcheck --severity=warning ${../db/entrypoint.sh} ${../db/healthcheck.sh} ${../db/backup.sh} \
      ${../monitoring/mysqld-exporter-entrypoint.sh} ${./deploy.sh} ${../nginx/acme/acme.sh}
    touch "$out"
  '';

  # writeShellApplication runs shellcheck on the app scripts when it builds them.
  load-app = apps.load;
  up-app = apps.up;
  deploy-app = apps.deploy;
}
# Building the stream scripts builds each image's final layer (fakeroot, /tmp, ownership).
// images.outputs
