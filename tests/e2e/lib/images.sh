# shellcheck shell=bash
# tests/e2e/lib/images.sh: build the three stand-in images from this machine's files.
# Sourced by tests/e2e/run.sh (and tests/e2e/build-images.sh). Needs: bash, coreutils, tar, ldd,
# the engine CLI in $ENGINE (podman or docker), and Debian's nginx, busybox-static and
# mariadb-server packages.
#
# These images stand in for the Nix-built ones (flake.nix) only where Nix cannot run. Each keeps the
# runtime contract of its Nix twin (notes: CONTRACT.md): same user, entrypoint, ports, env and paths,
# and the same healthcheck commands (which compose declares; `import` cannot set HEALTHCHECK).
#
# How: copy the binaries, every library `ldd` lists and the dynamic loader into a root directory
# with Debian's usr-merge layout, add passwd/group/nsswitch and /tmp, tar it with numeric owners and
# `$ENGINE import --change ...` it under the tag compose expects.

# rootfs_init DIR: an empty usr-merged root with users nobody (65534) and mysql (999).
rootfs_init() {
  local r="$1"
  rm -rf "$r"
  mkdir -p "$r"/usr/{bin,sbin,lib,lib64} "$r"/{etc,tmp,run,var}
  ln -s usr/bin "$r/bin"
  ln -s usr/sbin "$r/sbin"
  ln -s usr/lib "$r/lib"
  ln -s usr/lib64 "$r/lib64"
  chmod 1777 "$r/tmp"
  cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
mysql:x:999:999:MariaDB:/var/lib/mysql:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
  cat >"$r/etc/group" <<'EOF'
root:x:0:
mysql:x:999:
nogroup:x:65534:
EOF
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$r/etc/nsswitch.conf"
  chmod 0644 "$r"/etc/{passwd,group,nsswitch.conf}
}

# rootfs_add_bin DIR SRC [DEST]: copy an executable (symlinks resolved) to DEST (default: SRC) in
# the root, with every shared library it loads and the dynamic loader, at their host paths.
rootfs_add_bin() {
  local r="$1" src="$2" dest="${3:-$2}" lib
  mkdir -p "$r$(dirname "$dest")"
  cp -L "$src" "$r$dest"
  chmod 0755 "$r$dest"
  # ldd lines: "libx.so => /path (addr)", "/lib64/ld-linux-x86-64.so.2 (addr)", "linux-vdso...".
  # A static binary makes ldd exit 1 ("not a dynamic executable"): nothing to copy then.
  while read -r lib; do
    [[ -n "$lib" && -e "$lib" ]] || continue
    if [[ ! -e "$r$lib" ]]; then
      mkdir -p "$r$(dirname "$lib")"
      cp -L "$lib" "$r$lib"
    fi
  done < <(ldd "$src" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' || true)
}

# image_import DIR TAG CHANGE...: tar the root (numeric owners) and import it as TAG.
image_import() {
  local r="$1" tag="$2"; shift 2
  local args=() c
  for c in "$@"; do args+=(--change "$c"); done
  tar --numeric-owner -C "$r" -cf "$r.tar" .
  if ! "$ENGINE" import "${args[@]}" "$r.tar" "$tag" >"$r.log" 2>&1; then
    cat "$r.log" >&2
    return 1
  fi
  rm -f "$r.tar" "$r.log"
}

# e2e_tag NAME:TAG: the tag to import under. Podman stores an unqualified name as
# localhost/NAME:TAG and finds it again when a Docker-API client (compose) asks for NAME:TAG with
# pull_policy: never (measured: podman 4.3, compose v5.6.1), so the compose file's names work
# unchanged on podman and on docker.
e2e_tag() { printf '%s' "$1"; }

# build_api_image BINARY TAG
build_api_image() {
  local bin="$1" tag="$2" r="$WORKDIR/rootfs-api"
  [[ -x "$bin" ]] || { echo "API binary $bin not found: cargo build --release first (or set E2E_API_BIN)" >&2; return 1; }
  rootfs_init "$r"
  rootfs_add_bin "$r" "$bin" /usr/bin/user-api
  image_import "$r" "$(e2e_tag "$tag")" \
    'USER 65534:65534' \
    'ENTRYPOINT ["/bin/user-api"]' \
    'ENV ROCKET_ADDRESS=0.0.0.0' 'ENV ROCKET_PORT=8000' 'ENV ROCKET_PROFILE=release' \
    'ENV PATH=/usr/bin:/bin' \
    'EXPOSE 8000/tcp' \
    'WORKDIR /'
  rm -rf "$r"
}

# build_proxy_image NGINX_DIR TAG: Debian's nginx + the project's nginx/ config (nginx.conf and
# upstream.conf, installed under /etc/nginx as in the Nix image) + busybox's wget applet for the
# healthcheck.
build_proxy_image() {
  local conf="$1" tag="$2" r="$WORKDIR/rootfs-proxy" f
  [[ -f "$conf/nginx.conf" && -f "$conf/upstream.conf" ]] || { echo "$conf/nginx.conf or upstream.conf missing" >&2; return 1; }
  rootfs_init "$r"
  rootfs_add_bin "$r" /usr/sbin/nginx /usr/bin/nginx
  rootfs_add_bin "$r" /bin/busybox /usr/bin/busybox
  ln -s busybox "$r/usr/bin/wget"
  mkdir -p "$r/etc/nginx"
  for f in "$conf"/*; do
    [[ -f "$f" ]] && install -m 0644 "$f" "$r/etc/nginx/"
  done
  # Debian's nginx creates its compiled-in temp dirs at start if missing; they exist (read-only)
  # so that a read-only root works even for directives the config does not move to /tmp.
  mkdir -p "$r/var/lib/nginx"/{body,proxy,fastcgi,scgi,uwsgi} "$r/var/log/nginx"
  chown -R 65534:65534 "$r/var/lib/nginx" "$r/var/log/nginx"
  image_import "$r" "$(e2e_tag "$tag")" \
    'USER 65534:65534' \
    'ENTRYPOINT ["/bin/nginx", "-e", "stderr", "-c", "/etc/nginx/nginx.conf"]' \
    'STOPSIGNAL SIGQUIT' \
    'ENV PATH=/usr/bin:/bin' \
    'EXPOSE 8080/tcp' 'EXPOSE 8081/tcp' \
    'WORKDIR /'
  rm -rf "$r"
}

# build_db_image DB_DIR TAG: Debian's MariaDB server + client with the project's db/entrypoint.sh
# (as /bin/db-entrypoint) and db/healthcheck.sh (as /bin/healthcheck.sh), bash and the few tools
# they and mariadb-install-db call.
build_db_image() {
  local src="$1" tag="$2" r="$WORKDIR/rootfs-db" b
  rootfs_init "$r"
  rootfs_add_bin "$r" /usr/bin/bash
  rootfs_add_bin "$r" /usr/bin/dash /usr/bin/sh
  for b in cat chmod cp date dirname basename env head id ln ls mkdir mv od readlink rm sleep \
           stat sync timeout touch tr uname sed grep mawk; do
    rootfs_add_bin "$r" "$(command -v "$b")" "/usr/bin/$b"
  done
  ln -s mawk "$r/usr/bin/awk"
  rootfs_add_bin "$r" /usr/sbin/mariadbd
  for b in mariadb mariadb-admin my_print_defaults resolveip; do
    rootfs_add_bin "$r" "/usr/bin/$b"
  done
  install -m 0755 /usr/bin/mariadb-install-db "$r/usr/bin/mariadb-install-db"
  mkdir -p "$r/usr/share"
  cp -a /usr/share/mysql "$r/usr/share/mysql"
  install -m 0755 "$src/entrypoint.sh" "$r/usr/bin/db-entrypoint"
  install -m 0755 "$src/healthcheck.sh" "$r/usr/bin/healthcheck.sh"
  mkdir -p "$r/var/lib/mysql"
  chown 999:999 "$r/var/lib/mysql"
  chmod 0750 "$r/var/lib/mysql"
  # No /run/mysqld in the image: compose mounts a tmpfs there with mode=1777. When the mount point
  # exists in the image, runc (1.1) gives the tmpfs the mode of that directory instead, podman's own
  # /run tmpfs (read_only: true) copies it up with the umask applied, and the tmpfs root is owned by
  # root either way (podman 4.3 rejects uid=): uid 999 could not write. Without the directory
  # mode=1777 applies, on podman and on docker alike.
  image_import "$r" "$(e2e_tag "$tag")" \
    'USER 999:999' \
    'ENTRYPOINT ["/bin/db-entrypoint"]' \
    'ENV PATH=/usr/bin:/bin:/usr/sbin:/sbin' \
    'EXPOSE 3306/tcp' \
    'WORKDIR /'
  rm -rf "$r"
}
