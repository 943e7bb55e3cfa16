# Stand-in for nixpkgs' rustPlatform (buildRustPackage, importCargoLock, rustLibSrc), written for
# this repo (no nixpkgs code). Signatures from NixOS/nixpkgs:
#   pkgs/build-support/rust/build-rust-package/default.nix @ 1666f82b5d4eaeebab97fad801823d56febe5f3f
#     (its own arguments; the rest goes to stdenv.mkDerivation, checked there) and the nixpkgs
#     manual's "Compiling Rust applications with Cargo" section (pname and version, cargoHash);
#   pkgs/build-support/rust/import-cargo-lock.nix @ cebfbf786b10ba885a232eaa08f13076670f306d
#     (cargoLock = { lockFile ? null, lockFileContents ? null, allowBuiltinFetchGit ? false,
#      extraRegistries ? { }, outputHashes ? { } }).
# Like nixpkgs it asserts: exactly one of cargoLock / cargoHash / cargoVendorDir, buildType is
# release or debug, and (importCargoLock) every registry crate in Cargo.lock has a checksum and
# every git crate an outputHashes entry.
{
  lib,
  mkDerivation,
  fail,
  rustc,
  cargo,
}:
let
  inherit (builtins) filter isAttrs isString;

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
      packages = (builtins.fromTOML contents).package or [ ];
      deps = filter (p: p ? source) packages;
      registry = filter (p: lib.hasPrefix "registry+" p.source || lib.hasPrefix "sparse+" p.source) deps;
      git = filter (p: lib.hasPrefix "git+" p.source) deps;
      other = filter (p: !(builtins.elem p registry) && !(builtins.elem p git)) deps;
      noChecksum = filter (p: !(p ? checksum)) registry;
      noHash = filter (p: !(outputHashes ? "${p.name}-${p.version}")) git;
    in
    if (lockFile == null) == (lockFileContents == null) then
      fail "importCargoLock" "give exactly one of lockFile and lockFileContents"
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
        mkDerivation "rustPlatform.buildRustPackage" ownArgs (
          args
          // {
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
