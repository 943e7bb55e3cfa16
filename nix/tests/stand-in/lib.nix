# Stand-in for nixpkgs' `lib`: only the functions this flake calls, written for this repo (no
# nixpkgs code). Each keeps the name, argument order and meaning of the nixpkgs function:
#   lib/attrsets.nix    genAttrs, optionalAttrs, mapAttrsToList
#   lib/lists.nix       optional, optionals, subtractLists
#   lib/strings.nix     optionalString, makeBinPath, concatStringsSep, concatMapStringsSep,
#                       escapeShellArg, escapeShellArgs, hasPrefix, hasSuffix
#   lib/trivial.nix     importTOML
#   lib/meta.nix        getExe
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
in
{
  inherit hasPrefix hasSuffix escapeShellArg;

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
