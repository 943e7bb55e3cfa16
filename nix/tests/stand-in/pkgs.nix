# Stand-in for nixpkgs' package set (legacyPackages.<system>): only the attributes this flake
# uses, written for this repo (no nixpkgs code). Nothing here can be built: every derivation has
# builder /bin/sh and fails at once. What evaluation proves: each attribute exists (under the
# name nixpkgs uses), each function gets only arguments its nixpkgs counterpart accepts, with
# the right types, and every file the flake refers to exists (it is copied to the store).
#
# Signatures, read from NixOS/nixpkgs (file @ commit) and the nixpkgs manual:
#   stdenv.mkDerivation       pkgs/stdenv/generic/make-derivation.nix: attribute names it and
#                             its setup hooks read (knownDrvAttrs below); other names are legal in
#                             nixpkgs (they become environment variables) but rejected here, so
#                             that a misspelt attribute fails. Put real env vars in `env`.
#   runCommand, writeText, writeTextDir, writeShellApplication, symlinkJoin
#                             pkgs/build-support/trivial-builders/default.nix @ 77d57157d61d28d9f8948f4fe7c6e3c7a78d5338
#   buildEnv                  pkgs/build-support/buildenv/default.nix @ fdebd3d105ec65a4ea6c339c22b016b40d33653f
#   mkShell                   pkgs/build-support/mkshell/default.nix @ 07c91341fd6e5f2ca8d0a6d62e6d0e1ecc94283d
#   fakeNss                   pkgs/by-name/fa/fakeNss/package.nix @ 0a2c8a5824f4d11518168b74002249c6ecec21d5
#   callPackage               lib/customisation.nix callPackageWith: the function's arguments from
#                             the package set, then makeOverridable (see lib.nix), so an
#                             attribute-set result carries `override` and `overrideDerivation`
#   env / meta checks         pkgs/stdenv/generic/make-derivation.nix @ 000b58721fef0d1cf693a6f2f4fa442b66fbe2bb
#                             (`env` may not repeat an attribute passed to the derivation) and
#                             check-meta.nix @ 00284adb9c0a07c6d9803780609af29fbb29c216 (a package
#                             whose meta.platforms exclude the host system refuses to evaluate,
#                             so does everything that uses it as an input)
#   x86_64-darwin             nixos-26.05 prints "evaluation warning: Nixpkgs 26.05 will be the last
#                             release to support x86_64-darwin; see ..." whenever its package set
#                             for x86_64-darwin is evaluated (unless config.allowDeprecatedx86_64Darwin);
#                             the stand-in prints the same line there (builtins.trace)
# lib/minver.nix: flake.nix beside this file refuses Nix < 2.18.0 as nixpkgs' default.nix does
# (check.sh runs Nix 2.34 from the tests' forky root).
#   rustPlatform, dockerTools see rust.nix and docker-tools.nix
# Attribute names (top-level): mariadb_114 (pkgs/top-level/all-packages.nix: `mariadb =
# mariadb_114`), prometheus, grafana, prometheus-nginx-exporter, prometheus-mysqld-exporter,
# busybox, iproute2, sqlx-cli, wrk, yq-go, nixfmt, nixfmt-tree, kubectl, kubeconform
# (pkgs/by-name/...), nginx, makeWrapper, shellcheck, python3 (withPackages, pkgs, sitePackages;
# pyyaml, kubernetes-validate), rustc, cargo, clippy, rustfmt,
# rust-analyzer, curl, bash, bashInteractive, coreutils, gnused, gawk, gnugrep, findutils, gzip
# (pkgs/by-name/gz/gzip).
{ lib, system }:
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isPath
    isString
    toJSON
    typeOf
    ;

  isLinux = lib.hasSuffix "-linux" system;

  # Names stdenv.mkDerivation (and the hooks this flake relies on) read.
  knownDrvAttrs = [
    "name"
    "pname"
    "version"
    "src"
    "srcs"
    "sourceRoot"
    "patches"
    "prePatch"
    "postPatch"
    "nativeBuildInputs"
    "buildInputs"
    "propagatedBuildInputs"
    "propagatedNativeBuildInputs"
    "nativeCheckInputs"
    "checkInputs"
    "doCheck"
    "checkPhase"
    "preCheck"
    "postCheck"
    "checkFlags"
    "unpackPhase"
    "dontUnpack"
    "configurePhase"
    "preConfigure"
    "postConfigure"
    "dontConfigure"
    "buildPhase"
    "preBuild"
    "postBuild"
    "dontBuild"
    "installPhase"
    "preInstall"
    "postInstall"
    "dontInstall"
    "fixupPhase"
    "dontFixup"
    "dontStrip"
    "phases"
    "buildCommand"
    "passAsFile"
    "env"
    "meta"
    "passthru"
    "strictDeps"
    "outputs"
    "preferLocalBuild"
    "allowSubstitutes"
    "enableParallelBuilding"
    "disallowedReferences"
    "disallowedRequisites"
    "allowedReferences"
    "allowedRequisites"
    "shellHook"
    "__structuredAttrs"
    "__darwinAllowLocalNetworking"
    # read by rustPlatform's cargo hooks (pkgs/build-support/rust/hooks)
    "cargoBuildFlags"
    "cargoTestFlags"
    "dontCargoBuild"
    "dontCargoCheck"
    "dontCargoInstall"
    "dontUseCargoParallelTests"
  ];

  # Attributes make-derivation.nix (makeDerivationArgument) always passes to `derivation`, on top
  # of the caller's own (minus meta, passthru, pos, env and the check/sandbox inputs it removes).
  # `env` may contain none of them.
  computedDrvAttrs = [
    "name"
    "builder"
    "args"
    "stdenv"
    "system"
    "userHook"
    "__ignoreNulls"
    "__structuredAttrs"
    "strictDeps"
    "depsBuildBuild"
    "depsBuildBuildPropagated"
    "nativeBuildInputs"
    "propagatedNativeBuildInputs"
    "depsBuildTarget"
    "depsBuildTargetPropagated"
    "depsHostHost"
    "depsHostHostPropagated"
    "buildInputs"
    "propagatedBuildInputs"
    "depsTargetTarget"
    "depsTargetTargetPropagated"
    "configureFlags"
    "cmakeFlags"
    "mesonFlags"
    "patches"
    "doCheck"
    "doInstallCheck"
    "outputs"
  ];
  notPassedAttrs = [
    "meta"
    "passthru"
    "pos"
    "env"
    "checkInputs"
    "installCheckInputs"
    "nativeCheckInputs"
    "nativeInstallCheckInputs"
    "__contentAddressed"
    "__darwinAllowLocalNetworking"
    "__impureHostDeps"
    "__propagatedImpureHostDeps"
    "sandboxProfile"
    "propagatedSandboxProfile"
  ];

  # Inputs whose outPath make-derivation.nix forces (check inputs only when doCheck is on).
  inputsOf =
    args:
    builtins.concatMap (n: args.${n} or [ ]) [
      "nativeBuildInputs"
      "buildInputs"
      "propagatedBuildInputs"
      "propagatedNativeBuildInputs"
    ]
    ++ (
      if args.doCheck or false then
        builtins.concatMap (n: args.${n} or [ ]) [
          "nativeCheckInputs"
          "checkInputs"
        ]
      else
        [ ]
    );

  # What check-meta.nix says of a package on this system: null when available.
  unavailable =
    drv:
    if isAttrs drv && drv ? meta.platforms && !(builtins.elem system drv.meta.platforms) then
      "Package ‘${drv.name or "?"}’ is not available on the requested hostPlatform:\n  hostPlatform.system = \"${system}\"\n  package.meta.platforms = ${toJSON drv.meta.platforms}"
    else
      null;

  # Fails when any of `inputs` is unavailable here, naming it and its user.
  checkInputs =
    who: inputs: value:
    let
      bad = filter (d: unavailable d != null) (lib.flatten inputs);
    in
    if bad != [ ] then fail who "input ${unavailable (builtins.head bad)}" else value;

  listAttrs = [
    "nativeBuildInputs"
    "buildInputs"
    "propagatedBuildInputs"
    "propagatedNativeBuildInputs"
    "nativeCheckInputs"
    "checkInputs"
    "patches"
    "outputs"
    "passAsFile"
    "disallowedReferences"
    "disallowedRequisites"
    "checkFlags"
    "cargoBuildFlags"
    "cargoTestFlags"
  ];
  boolAttrs = [
    "doCheck"
    "dontUnpack"
    "dontConfigure"
    "dontBuild"
    "dontInstall"
    "dontFixup"
    "dontStrip"
    "strictDeps"
    "preferLocalBuild"
    "allowSubstitutes"
    "enableParallelBuilding"
    "__structuredAttrs"
    "__darwinAllowLocalNetworking"
  ];
  stringAttrs = [
    "name"
    "pname"
    "version"
    "checkPhase"
    "preCheck"
    "postCheck"
    "buildPhase"
    "preBuild"
    "postBuild"
    "installPhase"
    "preInstall"
    "postInstall"
    "buildCommand"
    "shellHook"
  ];

  isStringLike = x: isString x || isPath x || (isAttrs x && x ? outPath);

  fail = who: msg: throw "stand-in ${who}: ${msg}";

  # Checks names and types, then returns `args`.
  checkDrvArgs =
    who: extraNames: args:
    let
      names = attrNames args;
      unknown = lib.subtractLists (knownDrvAttrs ++ extraNames) names;
      badList = filter (n: builtins.elem n listAttrs && !isList args.${n}) names;
      badBool = filter (n: builtins.elem n boolAttrs && !isBool args.${n}) names;
      badString = filter (n: builtins.elem n stringAttrs && !isString args.${n}) names;
      env = args.env or { };
      badEnv = filter (n: !(isStringLike env.${n} || isBool env.${n} || isInt env.${n})) (
        attrNames env
      );
      passedNames = lib.subtractLists notPassedAttrs names ++ computedDrvAttrs;
      overlapping = filter (n: builtins.elem n passedNames) (attrNames env);
    in
    if unknown != [ ] then
      fail who "unknown argument(s) ${concatStringsSep ", " unknown} (not a mkDerivation attribute this stand-in knows; for an environment variable use `env`)"
    else if badList != [ ] then
      fail who "${concatStringsSep ", " badList} must be a list"
    else if badBool != [ ] then
      fail who "${concatStringsSep ", " badBool} must be a boolean"
    else if badString != [ ] then
      fail who "${concatStringsSep ", " badString} must be a string"
    else if !isAttrs env then
      fail who "env must be an attribute set"
    else if badEnv != [ ] then
      fail who "env.${concatStringsSep ", env." badEnv}: values must be strings, booleans, integers or derivations"
    else if overlapping != [ ] then
      fail who "The ‘env’ attribute set cannot contain any attributes passed to derivation. The following attributes are overlapping: ${concatStringsSep ", " overlapping}"
    else if !(args ? name || (args ? pname && args ? version)) then
      fail who "needs `name`, or `pname` and `version`"
    else
      checkInputs who (inputsOf args) args;

  # The derivation every stand-in function returns. All arguments but meta/passthru are
  # serialised into it: that forces them (a missing file, a bad interpolation or a function where
  # a value belongs fails here) and makes drvPath depend on them.
  fakeDerivation =
    who: args:
    let
      name = args.name or "${args.pname}-${args.version}";
      meta = args.meta or { };
      platforms = meta.platforms or lib.platforms.all;
      drv = derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [
          "-c"
          "echo 'a nixpkgs stand-in derivation (structural evaluation only) cannot be built' >&2; exit 1"
        ];
        standInFunction = who;
        standInArgs =
          if builtins.elem system platforms then
            toJSON (removeAttrs args [
              "meta"
              "passthru"
            ])
          else
            fail who "Package ‘${name}’ is not available on the requested hostPlatform: hostPlatform.system = \"${system}\", meta.platforms = ${toJSON platforms}";
      };
    in
    drv
    // {
      inherit meta;
      passthru = args.passthru or { };
    }
    // (args.passthru or { });

  mkDerivation = who: extraNames: args: fakeDerivation who (checkDrvArgs who extraNames args);

  # A package from nixpkgs, reduced to what the flake reads. meta.mainProgram only where the
  # nixpkgs package sets it and this flake needs it (lib.getExe, `nix fmt`): a stub never invents
  # one, so a `lib.getExe` that real nixpkgs would only guess (with a warning) fails here.
  # meta.platforms: nixpkgs' value where it restricts (busybox: Linux), else all four systems.
  pkg =
    {
      pname,
      version ? "0",
      mainProgram ? null,
      platforms ? lib.platforms.all,
      extra ? { },
    }:
    fakeDerivation "pkgs.${pname}" {
      inherit pname version;
      meta = {
        inherit platforms;
      }
      // (if mainProgram == null then { } else { inherit mainProgram; });
    }
    // extra;

  # lib.callPackageWith pkgs: like nixpkgs, the result goes through makeOverridable, so an
  # attribute-set result gains `override` and `overrideDerivation` (functions: `nix flake check`
  # refuses them among checks).
  callPackage =
    fn: overrides:
    let
      f = if isFunction fn then fn else import fn;
      args = builtins.intersectAttrs (builtins.functionArgs f) pkgs // overrides;
    in
    if !isAttrs overrides then
      fail "callPackage" "the second argument must be an attribute set"
    else
      lib.makeOverridable f args;

  # ---- trivial builders ----------------------------------------------------------------------
  runCommandWith =
    who: name: env: buildCommand:
    if !isString name then
      fail who "the name must be a string, not ${typeOf name}"
    else if !isAttrs env then
      fail who "the environment must be an attribute set, not ${typeOf env}"
    else if !isString buildCommand then
      fail who "the command must be a string, not ${typeOf buildCommand}"
    else
      mkDerivation who [ ] (env // { inherit name buildCommand; });

  writeTextFile =
    {
      name,
      text,
      executable ? false,
      destination ? "",
      checkPhase ? "",
      meta ? { },
      passthru ? { },
      allowSubstitutes ? false,
      preferLocalBuild ? true,
      derivationArgs ? { },
    }:
    if !isString text then
      fail "writeTextFile" "text must be a string, not ${typeOf text}"
    else if destination != "" && !(lib.hasPrefix "/" destination) then
      fail "writeTextFile" "destination must be an absolute path, relative to the derivation's out path"
    else
      runCommandWith "writeTextFile" name (
        {
          inherit
            meta
            passthru
            allowSubstitutes
            preferLocalBuild
            ;
          env = {
            inherit text destination checkPhase;
            executable = if executable then "1" else "";
          };
        }
        // derivationArgs
      ) "target=$out$destination; mkdir -p \"$(dirname \"$target\")\"; printf %s \"$text\" > \"$target\"";

  # ---- the package set -----------------------------------------------------------------------
  pkgs = {
    inherit lib callPackage;

    stdenv = {
      inherit system;
      hostPlatform = {
        inherit system isLinux;
        isDarwin = !isLinux;
      };
      isLinux = isLinux;
      isDarwin = !isLinux;
      mkDerivation = mkDerivation "stdenv.mkDerivation" [ ];
    };

    runCommand = runCommandWith "runCommand";
    runCommandLocal = runCommandWith "runCommandLocal";
    inherit writeTextFile;

    writeText =
      name: text:
      if !isString text then
        fail "writeText" "${name}: the second argument should be a string, but it's a ${typeOf text}"
      else
        writeTextFile { inherit name text; };

    writeTextDir =
      path: text:
      writeTextFile {
        inherit text;
        name = baseNameOf path;
        destination = "/${path}";
      };

    writeShellApplication =
      {
        name,
        text,
        runtimeInputs ? [ ],
        runtimeEnv ? null,
        meta ? { },
        passthru ? { },
        checkPhase ? null,
        excludeShellChecks ? [ ],
        extraShellCheckFlags ? [ ],
        bashOptions ? [
          "errexit"
          "nounset"
          "pipefail"
        ],
        derivationArgs ? { },
      }:
      let
        script = ''
          #!/bin/bash
          ${lib.concatMapStringsSep "\n" (o: "set -o ${o}") bashOptions}
        ''
        + lib.optionalString (runtimeInputs != [ ]) ''

          export PATH="${lib.makeBinPath runtimeInputs}:$PATH"
        ''
        + ''

          ${text}
        '';
      in
      if !isList runtimeInputs then
        fail "writeShellApplication" "${name}: runtimeInputs must be a list"
      else
        writeTextFile {
          inherit name derivationArgs;
          text = script;
          executable = true;
          destination = "/bin/${name}";
          meta = {
            mainProgram = name;
          }
          // meta;
          # nix/tests/check.sh runs bash -n and shellcheck on this (nixpkgs runs shellcheck
          # when it builds the script).
          passthru = passthru // {
            standInScript = script;
          };
        };

    symlinkJoin =
      args@{
        name ? "${args.pname}-${args.version}",
        paths,
        preferLocalBuild ? true,
        allowSubstitutes ? false,
        postBuild ? "",
        ...
      }:
      if !isList paths then
        fail "symlinkJoin" "paths must be a list"
      else
        mkDerivation "symlinkJoin" [ "paths" ] (
          removeAttrs args [ "postBuild" ]
          // {
            inherit name preferLocalBuild allowSubstitutes;
            buildPhase = postBuild;
          }
        );

    buildEnv =
      {
        name,
        manifest ? "",
        paths,
        ignoreCollisions ? false,
        checkCollisionContents ? true,
        pathsToLink ? [ "/" ],
        extraOutputsToInstall ? [ ],
        extraPrefix ? "",
        postBuild ? "",
        nativeBuildInputs ? [ ],
        buildInputs ? [ ],
        passthru ? { },
        meta ? { },
      }:
      if !isList paths || !isList pathsToLink then
        fail "buildEnv" "${name}: paths and pathsToLink must be lists"
      else if checkInputs "buildEnv" paths true != true then
        null
      else if builtins.any (p: !(lib.hasPrefix "/" p)) pathsToLink then
        fail "buildEnv" "${name}: pathsToLink entries start with /"
      else
        mkDerivation "buildEnv" [ ] {
          inherit
            name
            nativeBuildInputs
            buildInputs
            passthru
            meta
            ;
          env = {
            inherit extraPrefix postBuild;
            paths = toJSON paths;
            pathsToLink = toJSON pathsToLink;
          };
        };

    mkShell =
      attrs@{
        name ? "nix-shell",
        packages ? [ ],
        inputsFrom ? [ ],
        buildInputs ? [ ],
        nativeBuildInputs ? [ ],
        propagatedBuildInputs ? [ ],
        propagatedNativeBuildInputs ? [ ],
        ...
      }:
      if !isList packages then
        fail "mkShell" "packages must be a list"
      else
        mkDerivation "mkShell" [ ] (
          removeAttrs attrs [
            "packages"
            "inputsFrom"
          ]
          // {
            inherit name;
            nativeBuildInputs = packages ++ nativeBuildInputs;
          }
        );

    fakeNss = fakeNssWith { };

    makeWrapper = pkg { pname = "make-shell-wrapper-hook"; };

    # python3.pkgs is the package set python3Packages is (pkgs/top-level/all-packages.nix);
    # sitePackages and pkgs are passthru of the interpreter
    # (pkgs/development/interpreters/python/passthrufun.nix @ 0a381e31812d27774d12b328fd9c2f38b006591a).
    python3 = pkg {
      pname = "python3";
      extra.sitePackages = "lib/python3.13/site-packages";
      extra.pkgs = pythonPackages;
      extra.withPackages =
        f:
        let
          chosen = if isFunction f then f pythonPackages else fail "python3.withPackages" "expects a function";
        in
        if !isList chosen then
          fail "python3.withPackages" "the function must return a list"
        else
          fakeDerivation "python3.withPackages" {
            name = "python3-env";
            env.packages = toJSON chosen;
          };
    };

    mariadb_114 =
      let
        server = pkg {
          pname = "mariadb-server";
          version = "11.4";
        };
        client = pkg {
          pname = "mariadb-client";
          version = "11.4";
        };
      in
      server // { inherit server client; };

    # pkgs/by-name/ku/kubectl/package.nix @ 19b0db702ccefbb7daf0d0f6c323583353874c20 and
    # pkgs/by-name/ku/kubeconform/package.nix @ 032779a7b369a278e617caeb4146f591009200a2 (0.7.0).
    kubectl = pkg { pname = "kubectl"; };
    kubeconform = pkg {
      pname = "kubeconform";
      version = "0.7.0";
    };
    busybox = pkg {
      pname = "busybox";
      platforms = lib.platforms.linux;
    };
    nginx = pkg { pname = "nginx"; };

    # pkgs/by-name/ip/iproute2/package.nix @ 01c068a4dc0ccac8074751cb916f5334f6e5afab: ss, ip
    # (installed to sbin/, which stdenv's move-sbin hook makes bin/); meta.platforms Linux.
    iproute2 = pkg {
      pname = "iproute2";
      platforms = lib.platforms.linux;
    };
    # The monitoring images' programs. mainProgram as nixpkgs sets it, for lib.getExe
    # (pkgs/servers/monitoring/prometheus/nginx-exporter.nix and mysqld-exporter.nix; grafana:
    # pkgs/by-name/gr/grafana/package.nix, which also installs share/grafana/{conf,public}).
    prometheus = pkg { pname = "prometheus"; };
    grafana = pkg {
      pname = "grafana";
      mainProgram = "grafana";
    };
    prometheus-nginx-exporter = pkg {
      pname = "nginx_exporter";
      mainProgram = "nginx-prometheus-exporter";
    };
    prometheus-mysqld-exporter = pkg {
      pname = "mysqld_exporter";
      mainProgram = "mysqld_exporter";
    };
    # pkgs/by-name/pr/prometheus-blackbox-exporter/package.nix: 0.28.0, mainProgram
    # "blackbox_exporter".
    prometheus-blackbox-exporter = pkg {
      pname = "blackbox_exporter";
      version = "0.28.0";
      mainProgram = "blackbox_exporter";
    };
    # pkgs/by-name/pr/prometheus-node-exporter/package.nix: pname "node_exporter", 1.12.0,
    # mainProgram "node_exporter".
    prometheus-node-exporter = pkg {
      pname = "node_exporter";
      version = "1.12.0";
      mainProgram = "node_exporter";
    };
    # pkgs/by-name/ce/certbot/package.nix (python3Packages.certbot 5.5.0, toPythonApplication):
    # mainProgram "certbot". pkgs/by-name/ca/cacert/package.nix: the bundle at
    # etc/ssl/certs/ca-bundle.crt.
    certbot = pkg {
      pname = "certbot";
      version = "5.5.0";
      mainProgram = "certbot";
    };
    cacert = pkg { pname = "nss-cacert"; };
    sqlx-cli = pkg { pname = "sqlx-cli"; };
    wrk = pkg { pname = "wrk"; };
    yq-go = pkg { pname = "yq-go"; };
    nixfmt = pkg { pname = "nixfmt"; };
    # `nix fmt` runs meta.mainProgram: treefmt (pkgs/by-name/ni/nixfmt-tree/package.nix @
    # 03984ba04968da61939271e9ae5f776e9842c1b7).
    nixfmt-tree = pkg {
      pname = "nixfmt-tree";
      mainProgram = "treefmt";
    };
    shellcheck = pkg { pname = "shellcheck"; };
    rustc = pkg { pname = "rustc"; };
    cargo = pkg { pname = "cargo"; };
    clippy = pkg { pname = "clippy"; };
    rustfmt = pkg { pname = "rustfmt"; };
    rust-analyzer = pkg { pname = "rust-analyzer"; };
    curl = pkg { pname = "curl"; };
    bash = pkg { pname = "bash"; };
    bashInteractive = pkg { pname = "bash-interactive"; };
    coreutils = pkg { pname = "coreutils"; };
    gnused = pkg { pname = "gnused"; };
    gawk = pkg { pname = "gawk"; };
    gnugrep = pkg { pname = "gnugrep"; };
    findutils = pkg { pname = "findutils"; };
    gzip = pkg { pname = "gzip"; };
    openssl = pkg { pname = "openssl"; };
  }
  // import ./rust.nix {
    inherit lib mkDerivation fail;
    inherit (pkgs) rustc cargo;
  }
  // {
    dockerTools = import ./docker-tools.nix {
      inherit
        lib
        fakeDerivation
        fail
        system
        checkInputs
        ;
      fakeNss = pkgs.fakeNss;
    };
  };

  # The Python package set (python3.pkgs, python3.withPackages' argument): pyyaml, and
  # kubernetes-validate (python-packages.nix: `kubernetes-validate = callPackage
  # ../by-name/ku/kubernetes-validate/unwrapped.nix { }`, which ships the JSON schemas in
  # kubernetes_validate/kubernetes-json-schema). A name not here is a missing attribute.
  pythonPackages = {
    pyyaml = pkg { pname = "python3.13-pyyaml"; };
    kubernetes-validate = pkg { pname = "python3.13-kubernetes-validate"; };
  };

  # pkgs/by-name/fa/fakeNss/package.nix takes these (callPackage fills all but the last two);
  # `.override` passes them again, so an unknown name fails exactly as it would in nixpkgs.
  fakeNssWith =
    overridden:
    let
      build =
        {
          lib ? null,
          symlinkJoin ? null,
          writeTextDir ? null,
          runCommand ? null,
          extraPasswdLines ? [ ],
          extraGroupLines ? [ ],
        }:
        let
          badPasswd = filter (l: !isString l || builtins.length (builtins.split ":" l) != 13) extraPasswdLines;
          badGroup = filter (l: !isString l || builtins.length (builtins.split ":" l) != 7) extraGroupLines;
        in
        if !isList extraPasswdLines || !isList extraGroupLines then
          fail "fakeNss" "extraPasswdLines and extraGroupLines are lists of lines"
        else if badPasswd != [ ] then
          fail "fakeNss" "not an /etc/passwd line (7 fields): ${toJSON badPasswd}"
        else if badGroup != [ ] then
          fail "fakeNss" "not an /etc/group line (4 fields): ${toJSON badGroup}"
        else
          fakeDerivation "fakeNss" {
            name = "fake-nss";
            env = {
              passwd = concatStringsSep "\n" extraPasswdLines;
              group = concatStringsSep "\n" extraGroupLines;
            };
          };
    in
    build overridden // { override = more: fakeNssWith (overridden // more); };

  darwinWarning = "evaluation warning: Nixpkgs 26.05 will be the last release to support x86_64-darwin; see https://nixos.org/manual/nixpkgs/unstable/release-notes#x86_64-darwin-26.05";
in
if system == "x86_64-darwin" then builtins.trace darwinWarning pkgs else pkgs
