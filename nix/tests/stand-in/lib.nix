# Stand-in for nixpkgs' `lib`: only the functions this flake calls, written for this repo (no
# nixpkgs code). Each keeps the name, argument order and meaning of the nixpkgs function:
#   lib/attrsets.nix    genAttrs, optionalAttrs, mapAttrsToList, filterAttrs, isDerivation
#   lib/lists.nix       optional, optionals, subtractLists, flatten
#   lib/strings.nix     optionalString, makeBinPath, concatStringsSep, concatMapStringsSep,
#                       escapeShellArg, escapeShellArgs, hasPrefix, hasSuffix, removePrefix
#   lib/trivial.nix     importTOML, isFunction
#   lib/meta.nix        getExe
#   lib/customisation.nix  makeOverridable (NixOS/nixpkgs 927c4f83d8d62b45229a931d9c295ad9a2d6d541
#                       and 00976b194fe32d3e425ff3b457eeb6e4ec7ba12c: an attribute-set result gains
#                       `override` and `overrideDerivation`, plus `overrideAttrs` when it has one;
#                       a function result becomes a functor with `override`)
#   lib/default.nix     fakeHash (the all-zero SRI placeholder; used only by check.sh's mutations)
#   lib/licenses.nix, lib/systems/doubles.nix  licenses.mit, platforms.{linux,darwin,all}
#   lib/fileset/default.nix (NixOS/nixpkgs fa7835846a2482727e082c4181d05ba561b21ab5 and the
#   nixpkgs manual's lib.fileset chapter)  toSource { root, fileset }, union, unions,
#                       difference, maybeMissing
# What it checks like nixpkgs does: toSource's root is a directory path, every file set element
# is an existing path under it (maybeMissing excepted), and getExe needs meta.mainProgram.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    isAttrs
    isList
    isPath
    length
    pathExists
    readFile
    replaceStrings
    stringLength
    substring
    toString
    typeOf
    ;

  hasPrefix = pref: str: substring 0 (stringLength pref) str == pref;
  hasSuffix =
    suf: str:
    let
      ls = stringLength str;
      lf = stringLength suf;
    in
    lf <= ls && substring (ls - lf) lf str == suf;

  escapeShellArg =
    arg:
    let
      s = toString arg;
    in
    if builtins.match "[[:alnum:],._+:@%/-]+" s != null then
      s
    else
      "'${replaceStrings [ "'" ] [ "'\\''" ] s}'";

  linux = [
    "x86_64-linux"
    "aarch64-linux"
  ];
  darwin = [
    "x86_64-darwin"
    "aarch64-darwin"
  ];

  # ---- lib.fileset ----------------------------------------------------------------------------
  # A file set is { _type = "fileset"; parts = [ { root; excludes; } ... ]; }: each part is a file
  # or a directory (all of it) minus the paths in `excludes` (from `difference`). Paths are kept
  # as strings of the flake's store copy, which is what builtins.path's filter is given.
  isFileset = x: isAttrs x && (x._type or null) == "fileset";
  mkFileset = parts: {
    _type = "fileset";
    inherit parts;
  };
  within = dir: p: p == dir || hasPrefix (dir + "/") p;
  coerce =
    context: x:
    if isFileset x then
      x
    else if isPath x then
      (
        if pathExists x then
          mkFileset [
            {
              root = toString x;
              excludes = [ ];
            }
          ]
        else
          throw "lib.fileset: ${context} (${toString x}) is a path that does not exist. To create a file set from a path that may not exist, use `lib.fileset.maybeMissing`."
      )
    else
      throw "lib.fileset: ${context} is of type ${typeOf x}, but it should be a file set or a path instead.";

  unions =
    filesets:
    if !isList filesets then
      throw "lib.fileset.unions: Expected argument to be a list, but got a ${typeOf filesets}."
    else
      mkFileset (builtins.concatMap (x: (coerce "lib.fileset.unions: element" x).parts) filesets);

  difference =
    positive: negative:
    let
      pos = coerce "lib.fileset.difference: first argument" positive;
      neg = map (part: part.root) (coerce "lib.fileset.difference: second argument" negative).parts;
    in
    mkFileset (
      map (part: part // { excludes = part.excludes ++ neg; }) (
        filter (part: !(builtins.any (n: within n part.root) neg)) pos.parts
      )
    );

  toSource =
    { root, fileset }:
    let
      set = coerce "lib.fileset.toSource: `fileset`" fileset;
      rootStr = toString root;
      outside = filter (part: !(within rootStr part.root)) set.parts;
      # Keep a path that a part contains (and does not exclude), and every directory above a
      # part's root, so that the copy reaches it.
      keep =
        path: _type:
        builtins.any (
          part:
          (within part.root path && !(builtins.any (e: within e path) part.excludes))
          || hasPrefix (path + "/") part.root
        ) set.parts;
    in
    if !isPath root then
      throw "lib.fileset.toSource: `root` is of type ${typeOf root}, but it should be a path instead."
    else if !pathExists root then
      throw "lib.fileset.toSource: `root` (${rootStr}) does not exist."
    # (builtins.readFileType is Nix >= 2.14; the check is skipped on older Nix.)
    else if (builtins.readFileType or (_: "directory")) root != "directory" then
      throw "lib.fileset.toSource: `root` (${rootStr}) is a file, but it should be a directory instead."
    else if outside != [ ] then
      throw "lib.fileset.toSource: `fileset` could contain files in ${(builtins.head outside).root}, which is not under the `root` (${rootStr})."
    else
      builtins.path {
        path = root;
        name = "source";
        filter = keep;
      };
  isDerivation = x: isAttrs x && (x.type or null) == "derivation";
  lib_flatten = x: if isList x then builtins.concatMap lib_flatten x else [ x ];

  # Real overrideDerivation re-runs `derivation` with changed attributes; nothing in this flake
  # calls it, so the stand-in's only says so.
  overrideDerivation =
    _: _: throw "stand-in lib.overrideDerivation: not implemented (this flake does not use it)";

  makeOverridable =
    f: origArgs:
    let
      result = f origArgs;
      overrideWith =
        newArgs: origArgs // (if builtins.isFunction newArgs then newArgs origArgs else newArgs);
      override = newArgs: makeOverridable f (overrideWith newArgs);
    in
    if isAttrs result then
      result
      // {
        inherit override;
        overrideDerivation = fdrv: makeOverridable (args: overrideDerivation (f args) fdrv) origArgs;
      }
      // (
        if result ? overrideAttrs then
          { overrideAttrs = fdrv: makeOverridable (args: (f args).overrideAttrs fdrv) origArgs; }
        else
          { }
      )
    else if builtins.isFunction result then
      {
        inherit override;
        __functor = _: result;
      }
    else
      result;
in
{
  inherit
    hasPrefix
    hasSuffix
    escapeShellArg
    isDerivation
    makeOverridable
    overrideDerivation
    ;

  isFunction = builtins.isFunction;
  flatten = lib_flatten;
  removePrefix =
    pref: str:
    if hasPrefix pref str then
      substring (stringLength pref) (stringLength str - stringLength pref) str
    else
      str;
  filterAttrs =
    pred: set:
    builtins.listToAttrs (
      builtins.concatMap (
        name:
        if pred name set.${name} then
          [
            {
              inherit name;
              value = set.${name};
            }
          ]
        else
          [ ]
      ) (attrNames set)
    );
  fakeHash = "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

  genAttrs =
    names: f:
    builtins.listToAttrs (
      map (n: {
        name = n;
        value = f n;
      }) names
    );
  optionalAttrs = cond: attrs: if cond then attrs else { };
  mapAttrsToList = f: attrs: map (n: f n attrs.${n}) (attrNames attrs);
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  subtractLists = remove: filter (x: !(builtins.elem x remove));
  optionalString = cond: s: if cond then s else "";
  concatStringsSep = concatStringsSep;
  concatMapStringsSep = sep: f: list: concatStringsSep sep (map f list);
  makeBinPath = packages: concatStringsSep ":" (map (p: "${p}/bin") packages);
  escapeShellArgs = args: concatStringsSep " " (map escapeShellArg args);
  importTOML = path: builtins.fromTOML (readFile path);

  # nixpkgs warns ("getExe: Package ... does not have the meta.mainProgram attribute") and
  # guesses the name; the stand-in refuses, and its package stubs carry a mainProgram only where
  # nixpkgs' package sets one (see pkgs.nix), so a guess never passes here.
  getExe =
    drv:
    if drv ? meta.mainProgram then
      "${drv}/bin/${drv.meta.mainProgram}"
    else
      throw "stand-in lib.getExe: ${drv.name or "?"} has no meta.mainProgram (nixpkgs warns and guesses; this flake should not rely on the guess).";

  licenses.mit = {
    spdxId = "MIT";
    fullName = "MIT License";
    free = true;
  };
  platforms = {
    inherit linux darwin;
    all = linux ++ darwin;
  };

  fileset = {
    inherit toSource unions difference;
    union = a: b: unions [
      a
      b
    ];
    maybeMissing =
      path:
      if !isPath path then
        throw "lib.fileset.maybeMissing: Argument is of type ${typeOf path}, but it should be a path instead."
      else if pathExists path then
        coerce "lib.fileset.maybeMissing: argument" path
      else
        mkFileset [ ];
  };

  # Used by the stand-in's own pkgs.nix.
  inherit length;
}
