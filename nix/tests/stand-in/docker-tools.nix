# Stand-in for nixpkgs' dockerTools (streamLayeredImage, fakeNss), written for this repo (no
# nixpkgs code). The argument list of streamLayeredImage is the one documented in the nixpkgs
# manual, doc/build-helpers/images/dockertools.section.md @ b09f2c739a3e49b80049c1fd80bd8a393cc7fbc1
# ("streamLayeredImage expects one argument with the following attributes"), which matches
# pkgs/build-support/docker/default.nix (34b7a306c35b279929eebbdb43af071fd92d0d4b has the older
# subset: no architecture/mtime/uid/gid/uname/gname/includeNixDB/meta). Newer nixpkgs also takes
# layeringPipeline and debug; they are left out here because this flake does not use them and
# the stand-in only accepts what is certain. No `...`: an unknown or misspelt name fails.
#
# On top of the signature it checks what nixpkgs leaves to docker: `config` holds only keys of the
# Docker image spec v1.3 `config` object, each with the right JSON type (ExposedPorts and Volumes
# are sets of empty objects, Env is a list of KEY=VALUE, Healthcheck times are integers), the
# name is a valid lowercase repository name, and `created` is ISO 8601 or "now".
{
  lib,
  fakeDerivation,
  fail,
  system,
  checkInputs,
  fakeNss,
}:
let
  inherit (builtins)
    all
    attrNames
    attrValues
    concatStringsSep
    filter
    isAttrs
    isBool
    isInt
    isList
    isString
    match
    toJSON
    ;

  who = "dockerTools.streamLayeredImage";

  isStrings = x: isList x && all isString x;
  isEmptyObjects = x: isAttrs x && all (v: v == { }) (attrValues x);

  # Docker Image Specification v1.3, "config" properties, with their JSON types.
  configKeys = {
    User = isString;
    ExposedPorts =
      x: isEmptyObjects x && all (p: match "[0-9]+(/(tcp|udp|sctp))?" p != null) (attrNames x);
    Env = x: isStrings x && all (e: match "[^=]+=.*" e != null) x;
    Entrypoint = isStrings;
    Cmd = isStrings;
    Volumes = x: isEmptyObjects x && all (v: lib.hasPrefix "/" v) (attrNames x);
    WorkingDir = isString;
    Labels = x: isAttrs x && all isString (attrValues x);
    StopSignal = x: isString x && match "SIG[A-Z0-9+-]+|[0-9]+" x != null;
    ArgsEscaped = isBool;
    OnBuild = isStrings;
    Shell = isStrings;
    Healthcheck =
      x:
      isAttrs x
      && all (k: builtins.elem k [ "Test" "Interval" "Timeout" "StartPeriod" "StartInterval" "Retries" ]) (
        attrNames x
      )
      && isStrings (x.Test or [ ])
      && all isInt (attrValues (removeAttrs x [ "Test" ]));
  };

  checkConfig =
    config:
    let
      unknown = filter (k: !(configKeys ? ${k})) (attrNames config);
      wrong = filter (k: configKeys ? ${k} && !(configKeys.${k} config.${k})) (attrNames config);
    in
    if !isAttrs config then
      fail who "config must be an attribute set"
    else if unknown != [ ] then
      fail who "config: ${concatStringsSep ", " unknown} is not a key of the Docker image spec's config object"
    else if wrong != [ ] then
      fail who "config: ${concatStringsSep ", " wrong} has the wrong type or format for the Docker image spec"
    else
      config;

  streamLayeredImage =
    {
      name,
      tag ? null,
      fromImage ? null,
      contents ? [ ],
      config ? { },
      architecture ? null,
      created ? "1970-01-01T00:00:01Z",
      mtime ? "1970-01-01T00:00:01Z",
      uid ? 0,
      gid ? 0,
      uname ? "root",
      gname ? "root",
      maxLayers ? 100,
      extraCommands ? "",
      fakeRootCommands ? "",
      enableFakechroot ? false,
      includeStorePaths ? true,
      includeNixDB ? false,
      passthru ? { },
      meta ? { },
    }:
    let
      timeOk =
        t:
        t == "now"
        || match "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})" t
          != null;
      baseName = baseNameOf name;
    in
    if match "[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*" name == null then
      fail who "name ${toJSON name} is not a valid (lowercase) image repository name"
    else if tag != null && match "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}" tag == null then
      fail who "tag ${toJSON tag} is not a valid image tag"
    else if !(timeOk created && timeOk mtime) then
      fail who "created and mtime must be ISO 8601 date-times or \"now\" (got ${toJSON created}, ${toJSON mtime})"
    else if !(isList contents || isAttrs contents) then
      fail who "contents must be a derivation or a list of them"
    else if checkInputs who contents true != true then
      null
    else if !(isString extraCommands && isString fakeRootCommands) then
      fail who "extraCommands and fakeRootCommands are strings (shell scripts)"
    else if !(isBool enableFakechroot && isBool includeStorePaths && isBool includeNixDB) then
      fail who "enableFakechroot, includeStorePaths and includeNixDB are booleans"
    else if !(isInt maxLayers && maxLayers > 1) then
      fail who "maxLayers must be an integer greater than 1"
    else if !(isAttrs passthru && isAttrs meta) then
      fail who "passthru and meta are attribute sets"
    else
      fakeDerivation who {
        name = "stream-${baseName}";
        env = {
          imageName = name;
          imageTag = if tag == null then "" else tag;
          conf = toJSON {
            inherit
              fromImage
              architecture
              created
              mtime
              uid
              gid
              uname
              gname
              maxLayers
              extraCommands
              fakeRootCommands
              enableFakechroot
              includeStorePaths
              includeNixDB
              ;
            contents = if isList contents then contents else [ contents ];
            config = checkConfig config;
          };
        };
        inherit meta;
        passthru = passthru // {
          imageTag = tag;
          isExe = true;
        };
      };
in
{
  inherit streamLayeredImage fakeNss;
}
