# Stand-in for nixpkgs' rustPlatform (buildRustPackage, importCargoLock, rustLibSrc), written for
# this repo (no nixpkgs code). Signatures from NixOS/nixpkgs:
#   pkgs/build-support/rust/build-rust-package/default.nix @ 1666f82b5d4eaeebab97fad801823d56febe5f3f
#     (its own arguments; the rest goes to stdenv.mkDerivation, checked there) and the nixpkgs
#     manual's "Compiling Rust applications with Cargo" section (pname and version, cargoHash);
#   pkgs/build-support/rust/import-cargo-lock.nix @ cebfbf786b10ba885a232eaa08f13076670f306d
#     (cargoLock = { lockFile ? null, lockFileContents ? null, allowBuiltinFetchGit ? false,
#      extraRegistries ? { }, outputHashes ? { } }).
# Like nixpkgs it asserts: exactly one of cargoLock / cargoHash / cargoVendorDir, buildType is
# release or debug, and importCargoLock's throws: a registry crate without a checksum ("Package
# ... does not have a checksum."), a git crate without an outputHashes entry, an outputHashes
# entry naming no git crate of Cargo.lock ("A hash was specified for ..., but there is no
# corresponding git dependency.": nixpkgs forces the whole map with deepSeq), and a crate whose
# registry is neither crates.io's index nor in extraRegistries ("Cannot handle crate source: ...";
# the key is the source without "registry+", so a sparse index needs its "sparse+..." key).
# buildRustPackage hands mkDerivation the attributes nixpkgs' does (cargoDeps, cargoBuildType,
# ..., PKG_CONFIG_ALLOW_CROSS, strictDeps), so an `env` entry repeating one fails there.
{
  lib,
  mkDerivation,
  fail,
  rustc,
  cargo,
}:
let
  inherit (builtins) filter isAttrs isString;

  # What nixpkgs' buildRustPackage adds to the mkDerivation call (build-rust-package/default.nix).
  addedArgs = [
    "cargoDeps"
    "cargoBuildType"
    "cargoCheckType"
    "cargoBuildNoDefaultFeatures"
    "cargoCheckNoDefaultFeatures"
    "cargoBuildFeatures"
    "cargoCheckFeatures"
    "patchRegistryDeps"
    "PKG_CONFIG_ALLOW_CROSS"
  ];

  ownArgs = [
    "cargoDepsName"
    "preUnpack"
    "postUnpack"
    "cargoPatches"
    "logLevel"
    "cargoUpdateHook"
    "cargoDepsHook"
    "buildType"
    "cargoLock"
    "cargoHash"
    "cargoVendorDir"
    "checkType"
    "buildNoDefaultFeatures"
    "checkNoDefaultFeatures"
    "buildFeatures"
    "checkFeatures"
    "useNextest"
    "auditable"
    "depsExtraArgs"
    "buildAndTestSubdir"
  ];

  importCargoLock =
    {
      lockFile ? null,
      lockFileContents ? null,
      allowBuiltinFetchGit ? false,
      extraRegistries ? { },
      outputHashes ? { },
    }:
    let
      contents = if lockFile != null then builtins.readFile lockFile else lockFileContents;
      parsed = builtins.fromTOML contents;
      packages = parsed.package or [ ];
      deps = filter (p: p ? source) packages;
      registries = {
        "https://github.com/rust-lang/crates.io-index" = "https://crates.io/api/v1/crates";
      }
      // extraRegistries;
      isRegistry = p: lib.hasPrefix "registry+" p.source || lib.hasPrefix "sparse+" p.source;
      knownRegistry = p: registries ? ${lib.removePrefix "registry+" p.source};
      registry = filter (p: isRegistry p && knownRegistry p) deps;
      git = filter (p: !(isRegistry p && knownRegistry p) && lib.hasPrefix "git+" p.source) deps;
      other = filter (p: !(isRegistry p && knownRegistry p) && !(lib.hasPrefix "git+" p.source)) deps;
      gitNames = map (p: "${p.name}-${p.version}") git;
      stale = filter (n: !(builtins.elem n gitNames)) (builtins.attrNames outputHashes);
      checksumOf =
        p: p.checksum or (parsed.metadata or { })."checksum ${p.name} ${p.version} (${p.source})" or null;
      noChecksum = filter (p: checksumOf p == null) registry;
      noHash = filter (p: !(outputHashes ? "${p.name}-${p.version}")) git;
    in
    if (lockFile == null) == (lockFileContents == null) then
      fail "importCargoLock" "give exactly one of lockFile and lockFileContents"
    else if stale != [ ] then
      fail "importCargoLock" "A hash was specified for ${builtins.head stale}, but there is no corresponding git dependency."
    else if other != [ ] then
      fail "importCargoLock" "Cannot handle crate source: ${(builtins.head other).source}"
    else if noChecksum != [ ] then
      fail "importCargoLock" "Package ${(builtins.head noChecksum).name} does not have a checksum."
    else if noHash != [ ] && !allowBuiltinFetchGit then
      fail "importCargoLock" "No hash was found while vendoring the git dependency ${(builtins.head noHash).name}-${(builtins.head noHash).version}; add it to cargoLock.outputHashes"
    else
      builtins.length deps;

  buildRustPackage =
    args:
    let
      given = builtins.attrNames args;
      sources = filter (n: args ? ${n}) [
        "cargoLock"
        "cargoHash"
        "cargoVendorDir"
      ];
      buildType = args.buildType or "release";
      checkedLock =
        if args ? cargoLock then
          (
            if isAttrs args.cargoLock then
              importCargoLock args.cargoLock
            else
              fail "buildRustPackage" "cargoLock must be an attribute set (cargoLock.lockFile = ./Cargo.lock)"
          )
        else
          0;
    in
    if !(args ? src || args ? srcs) then
      fail "buildRustPackage" "needs src"
    else if builtins.length sources != 1 then
      fail "buildRustPackage" "give exactly one of cargoLock, cargoHash, cargoVendorDir (got: ${toString sources})"
    else if !(builtins.elem buildType [ "release" "debug" ]) then
      fail "buildRustPackage" "buildType must be \"release\" or \"debug\""
    else
      builtins.seq checkedLock (
        mkDerivation "rustPlatform.buildRustPackage" (ownArgs ++ addedArgs) (
          removeAttrs args [
            "depsExtraArgs"
            "cargoUpdateHook"
            "cargoLock"
          ]
          // {
            cargoDeps = "cargo-vendor-dir (${toString checkedLock} crates)";
            cargoBuildType = buildType;
            cargoCheckType = args.checkType or buildType;
            cargoBuildNoDefaultFeatures = args.buildNoDefaultFeatures or false;
            cargoCheckNoDefaultFeatures =
              args.checkNoDefaultFeatures or (args.buildNoDefaultFeatures or false);
            cargoBuildFeatures = args.buildFeatures or [ ];
            cargoCheckFeatures = args.checkFeatures or (args.buildFeatures or [ ]);
            patchRegistryDeps = "patch-registry-deps";
            PKG_CONFIG_ALLOW_CROSS = 0;
            buildAndTestSubdir = args.buildAndTestSubdir or null;
            postUnpack = args.postUnpack or "";
            configurePhase = args.configurePhase or "";
            doCheck = args.doCheck or true;
            strictDeps = true;
            nativeBuildInputs = (args.nativeBuildInputs or [ ]) ++ [
              rustc
              cargo
            ];
          }
        )
      );
in
{
  rustPlatform = {
    inherit buildRustPackage importCargoLock;
    rustLibSrc = mkDerivation "rustPlatform.rustLibSrc" [ ] { name = "rust-lib-src"; };
  };
}
