# The runtime contract the images implement (docs: the "Images" table of the shared contract,
# mirrored by docker-compose.yml). One place for names, users, entrypoints, ports and
# healthchecks: images.nix builds from it, checks.nix compares it with docker-compose.yml.
{ version }:
{
  api = {
    image = "user-api";
    tag = version;
    user = "65534:65534";
    entrypoint = [ "/bin/user-api" ];
    ports = [ "8000/tcp" ];
    # `user-api healthcheck`: GET /healthz on 127.0.0.1, no shell or curl needed.
    healthcheck = [
      "CMD"
      "/bin/user-api"
      "healthcheck"
    ];
    env = [
      "ROCKET_ADDRESS=0.0.0.0"
      "ROCKET_PORT=8000"
      "ROCKET_PROFILE=release"
    ];
  };

  proxy = {
    image = "user-api-proxy";
    tag = version;
    user = "65534:65534";
    # -e stderr: nixpkgs' nginx opens its compiled-in /var/log/nginx/error.log before it reads
    # the config, and that directory does not exist (and is read-only) in the image.
    entrypoint = [
      "/bin/nginx"
      "-e"
      "stderr"
      "-c"
      "/etc/nginx/nginx.conf"
    ];
    # 8080 public, 8081 status (stub_status and /healthz; compose never publishes it).
    ports = [
      "8080/tcp"
      "8081/tcp"
    ];
    healthcheck = [
      "CMD"
      "/bin/wget"
      "-q"
      "-O"
      "/dev/null"
      "http://127.0.0.1:8081/healthz"
    ];
    # Graceful stop: nginx finishes the requests in flight on SIGQUIT (SIGTERM is a fast stop).
    stopSignal = "SIGQUIT";
  };

  db = {
    image = "user-api-db";
    tag = version;
    user = "999:999";
    entrypoint = [ "/bin/db-entrypoint" ];
    ports = [ "3306/tcp" ];
    # The official mariadb image's command line, so that image is a drop-in in compose.
    healthcheck = [
      "CMD"
      "healthcheck.sh"
      "--connect"
      "--innodb_initialized"
    ];
    uid = 999;
    gid = 999;
    dataDir = "/var/lib/mysql";
  };
}
