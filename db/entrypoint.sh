#!/usr/bin/env bash
# db/entrypoint.sh: entrypoint of the user-api MariaDB image (installed as /bin/db-entrypoint).
#
# Runs as the unprivileged mysql user (uid 999) on a read-only root filesystem; writes only to the
# data volume /var/lib/mysql and to the tmpfs mounts /run/mysqld and /tmp.
#
# First start (empty data volume):
#   1. mariadb-install-db into /var/lib/mysql (system tables only, no test db, no host-name rows);
#   2. a temporary server with --skip-networking, reachable only on the unix socket, so that nothing
#      (and no healthcheck, which connects over TCP) sees the half-initialised database;
#   3. root gets its password and stays root@localhost only (MARIADB_ROOT_HOST to widen that);
#      the application database and its user ('<user>'@'%', ALL on that database only) are created;
#      a 'healthcheck' login with a random password (USAGE only, local hosts only) is written to
#      /var/lib/mysql/.my-healthcheck.cnf (0600) for healthcheck.sh, as the official image does;
#   4. the managed accounts (below) are created;
#   5. the temporary server is stopped and the real server is exec'ed with networking and the
#      binary log (below).
# Later starts: exec the real server directly. Passwords are read only on the first start, with
# one exception: the managed accounts.
#
# Managed accounts, each only when its password file is set:
#   backup    BACKUP_USER (default backup), BACKUP_PASSWORD_FILE: SELECT, SHOW VIEW, TRIGGER and
#             EVENT on MYSQL_DATABASE: what `mariadb-dump --single-transaction
#             --no-tablespaces` needs; REPLICATION SLAVE and BINLOG MONITOR on *.*: what the
#             binlog archiver's `mariadb-binlog --read-from-remote-server` and `SHOW BINARY
#             LOGS` need (it reads every change the server logs); nothing that writes
#             (db/backup.sh, db/BACKUP.md).
#   exporter  EXPORTER_USER (default exporter), EXPORTER_PASSWORD_FILE: PROCESS, REPLICATION
#             CLIENT and SLAVE MONITOR on *.*, at most 3 connections: what mysqld_exporter's
#             default collectors read (status, variables, InnoDB, replica state), no table data
#             (the compose profile `monitoring`, monitoring/README.md).
# For each, '<user>'@'%' and a fingerprint of (user, password, database, grant version) in
# /var/lib/mysql/.db-<kind>-account (0600; a sha256, not the password). At every start, when a
# fingerprint file is missing or differs (a data volume initialised before the account existed,
# a new password, a new grant), a temporary socket-only server is started once, the accounts
# are created or updated as root (MYSQL_ROOT_PASSWORD_FILE), and the files written; this costs a
# few seconds once, and every other start execs the server directly. A failure there (e.g. a
# root password file that no longer matches) is logged and the server starts anyway: backups or
# scrapes then fail with "Access denied", the API is not held hostage.
#
# Binary log (the point-in-time archive, db/BACKUP.md): ROW format, fsync'ed at every commit
# (sync_binlog=1, with InnoDB's default innodb_flush_log_at_trx_commit=1), files of 64 MiB kept
# BINLOG_EXPIRE_DAYS (7) days on the volume. The files are named after the volume's timeline,
# `binlog-<UTC date>-<random>` (in /var/lib/mysql/.db-binlog-name, made at the first start): a
# new volume, or one a point-in-time recovery wrote (`--new-timeline`), never reuses the names of
# the archive's files from another history. `--skip-log-bin` as an argument turns it off.
#
# Crash safety: a marker file (.db-entrypoint-init-in-progress) is written before anything else
# and removed as the very last step of the first start. If the container dies half-way, the next
# start finds the marker, wipes what the broken attempt left and initialises again. A data
# directory without the marker but with a mysql/ schema (ours, or one made by the official image)
# is taken as initialised; a non-empty one with neither is refused rather than wiped.
#
# Environment (the same names as the official mariadb/mysql images; MARIADB_* win over MYSQL_*):
#   MYSQL_ROOT_PASSWORD_FILE  file holding the root password            (first start: required)
#   MYSQL_DATABASE            database to create                         (optional)
#   MYSQL_USER                application user to create                 (optional)
#   MYSQL_PASSWORD_FILE       file holding the application user's password (required with USER)
#   MARIADB_ROOT_HOST         extra host for a root account; default: none (root@localhost only)
#   BACKUP_PASSWORD_FILE      file holding the backup account's password (optional; no account without)
#   BACKUP_USER               the backup account's name                  (default backup)
#   EXPORTER_PASSWORD_FILE    file holding the metrics exporter's password (optional; no account without)
#   EXPORTER_USER             the exporter account's name                (default exporter)
# Plain MYSQL_ROOT_PASSWORD / MYSQL_PASSWORD values are refused: they would show in
# `docker inspect` and in /proc/*/environ. Use the *_FILE variables with compose/docker secrets.
#
# Maintenance modes, for `db-backup recover` (a one-off container on the data volume, the db
# service stopped):
#   --maintenance     initialise the volume if it is empty, update the managed accounts, then run
#                     the server on the unix socket only, without the binary log;
#   --new-timeline    start a new binary-log timeline: a new name in .db-binlog-name, the old
#                     timeline's files deleted from the volume; prints the new name.
# Arguments: extra options for mariadbd (appended last, so they override the defaults below).
# A first argument of `mariadbd`/`mysqld` is dropped (the official images' CMD); any other first
# argument that is not an option is exec'ed as a command (debugging: `... db-entrypoint bash`).
#
# Secrets never reach the process list, the environment of mariadbd or the logs: they are read
# into unexported shell variables and sent to the client as SQL on stdin (printf is a builtin).
set -Eeuo pipefail
shopt -s nullglob dotglob

DATADIR=/var/lib/mysql
RUNDIR=/run/mysqld
IN_PROGRESS=$DATADIR/.db-entrypoint-init-in-progress
HEALTH_CNF=$DATADIR/.my-healthcheck.cnf
# The managed accounts; bump a version when that account's grants change: every data volume
# gets them at its next start.
ACCOUNT_KINDS=(backup exporter)
declare -A ACCOUNT_GRANTS_VERSION=([backup]=2 [exporter]=1)
BINLOG_NAME_FILE=$DATADIR/.db-binlog-name
BINLOG_EXPIRE_DAYS=${BINLOG_EXPIRE_DAYS:-7}

log() { printf '%s [db-entrypoint] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- arguments --------------------------------------------------------------------------------
MODE=serve
if [[ $# -gt 0 ]]; then
  case "$1" in
    mariadbd|mysqld|*/mariadbd|*/mysqld) shift ;;
    --maintenance) MODE="maintenance"; shift ;;
    --new-timeline) MODE="new-timeline"; shift ;;
    -*) ;;
    *) exec "$@" ;;
  esac
fi

for bin in mariadbd mariadb mariadb-admin mariadb-install-db; do
  command -v "$bin" >/dev/null || die "'$bin' is not on PATH ($PATH)"
done

# Socket, pid and lock files: /run/mysqld (a tmpfs in compose). If it is not writable for this uid
# (a tmpfs root owned by root with a restrictive mode: engines differ, see docker-compose.yml),
# fall back to /tmp/mysqld rather than fail: nothing outside this container uses the socket.
if [[ ! -d "$RUNDIR" || ! -w "$RUNDIR" ]]; then
  log "WARNING: $RUNDIR is not writable by uid $(id -u); using /tmp/mysqld for the socket"
  RUNDIR=/tmp/mysqld
  mkdir -p "$RUNDIR" 2>/dev/null || die "neither /run/mysqld nor /tmp/mysqld is writable by uid $(id -u): mount a tmpfs on /run/mysqld (mode=1777)"
fi
SOCKET=$RUNDIR/mysqld.sock

# The options every server start gets (the temporary one too). Paths are explicit because the
# Debian and the Nix builds compile in different defaults, and no my.cnf is read from the image.
SERVER_OPTS=(
  --datadir="$DATADIR"
  --socket="$SOCKET"
  --pid-file="$RUNDIR/mariadbd.pid"
  --port=3306
  --character-set-server=utf8mb4
  --collation-server=utf8mb4_unicode_ci
  --skip-name-resolve
  # A pool of worker threads instead of one thread per connection: 14-17 %
  # less MariaDB CPU per request under the benchmark's load (bench/README.md),
  # and a bounded thread count however many clients connect. Both Debian's
  # and nixpkgs' MariaDB build it in on Linux. Arguments to the image still
  # override it (--thread-handling=one-thread-per-connection).
  --thread-handling=pool-of-threads
)
# (No --log-error: the error log goes to stderr, i.e. the container log.)
# --no-defaults must come first: nothing in the image is meant to configure the server but this
# script and its arguments (no surprise /etc/my.cnf from a base layer).
MARIADBD=(mariadbd --no-defaults "${SERVER_OPTS[@]}")

# ---- environment --------------------------------------------------------------------------------
# env_pick NAME: value of MARIADB_NAME, else MYSQL_NAME, else empty.
env_pick() {
  local m="MARIADB_$1" y="MYSQL_$1"
  if [[ -n "${!m:-}" ]]; then printf '%s' "${!m}"; else printf '%s' "${!y:-}"; fi
}

for v in ROOT_PASSWORD PASSWORD; do
  for p in MARIADB MYSQL; do
    n="${p}_$v"
    if [[ -n "${!n:-}" ]]; then
      die "$n is set as a plain environment value; this image refuses passwords in the environment (they show in 'docker inspect'). Put the password in a file (a compose secret) and set ${n}_FILE=/run/secrets/<name> instead."
    fi
  done
done
for p in MARIADB_ALLOW_EMPTY_ROOT_PASSWORD MYSQL_ALLOW_EMPTY_PASSWORD MARIADB_RANDOM_ROOT_PASSWORD MYSQL_RANDOM_ROOT_PASSWORD; do
  [[ -z "${!p:-}" ]] || log "WARNING: $p is not supported by this image and is ignored; use MYSQL_ROOT_PASSWORD_FILE"
done

# read_secret VAR_NAME: prints the content of the file named by MARIADB_VAR_NAME_FILE or
# MYSQL_VAR_NAME_FILE, without its trailing newline(s). Fails with a message that says what to fix.
read_secret() {
  local what="$1" var file content
  var="MARIADB_${what}_FILE"; file="${!var:-}"
  if [[ -z "$file" ]]; then var="MYSQL_${what}_FILE"; file="${!var:-}"; fi
  [[ -n "$file" ]] || die "MYSQL_${what}_FILE (or MARIADB_${what}_FILE) is required to initialise an empty data directory"
  if [[ ! -e "$file" ]]; then
    die "$var=$file: no such file (is the secret declared for this service, and does its source file exist on the host?)"
  fi
  if [[ ! -r "$file" ]]; then
    die "$var=$file: not readable by uid $(id -u). Compose mounts file secrets with the host file's owner and mode, so the file on the host must be world-readable (chmod 0644 secrets/*.txt) inside a 0700 directory (chmod 0700 secrets)."
  fi
  content="$(<"$file")"
  [[ -n "$content" ]] || die "$var=$file: the file is empty"
  printf '%s' "$content"
}

# SQL quoting: string literal and identifier.
sql_str() { local s="${1//\\/\\\\}"; s="${s//\'/\\\'}"; printf "'%s'" "$s"; }
sql_ident() { printf '`%s`' "${1//\`/\`\`}"; }

# ---- managed accounts -------------------------------------------------------------------------------
# account_settings KIND: sets ACC_USER, ACC_PW, ACC_DB, ACC_FP (empty ACC_USER: no account).
account_settings() {
  local kind="$1" prefix file_var user_var file
  prefix="${kind^^}"
  file_var="${prefix}_PASSWORD_FILE" user_var="${prefix}_USER"
  file="${!file_var:-}"
  ACC_USER="" ACC_PW="" ACC_DB="" ACC_FP=""
  [[ -n "$file" ]] || return 0
  if [[ "$kind" == backup ]]; then
    ACC_DB="$(env_pick DATABASE)"
    if [[ -z "$ACC_DB" ]]; then
      log "WARNING: $file_var is set but MYSQL_DATABASE is not: no $kind account"
      return 0
    fi
  fi
  if [[ ! -r "$file" ]]; then
    log "WARNING: $file_var=$file is missing or not readable by uid $(id -u): no $kind account"
    return 0
  fi
  ACC_PW="$(<"$file")"
  if [[ -z "$ACC_PW" ]]; then
    log "WARNING: $file_var=$file is empty: no $kind account"
    return 0
  fi
  ACC_USER="${!user_var:-$kind}"
  local other_kind other_user_var taken=(root "$(env_pick USER)")
  for other_kind in "${ACCOUNT_KINDS[@]}"; do
    other_user_var="${other_kind^^}_USER"
    [[ "$other_kind" == "$kind" ]] || taken+=("${!other_user_var:-$other_kind}")
  done
  for other_user_var in "${taken[@]}"; do
    [[ "$ACC_USER" != "$other_user_var" ]] || die "$user_var=$ACC_USER: the $kind account must be an account of its own (not root, the application's or another managed account)"
  done
  # (The backup fingerprint keeps the format it had before the exporter existed: volumes
  # initialised then are not touched again.)
  ACC_FP="$(printf 'v%s\n%s\n%s\n%s\n' "${ACCOUNT_GRANTS_VERSION[$kind]}" "$ACC_USER" "$ACC_DB" "$ACC_PW" | sha256sum)"
  ACC_FP="${ACC_FP%% *}"
}

# account_sql KIND: the idempotent statements that create or update the account of the last
# account_settings call.
account_sql() {
  local user pw
  user="$(sql_str "$ACC_USER")@'%'" pw="$(sql_str "$ACC_PW")"
  case "$1" in
    backup)
      local grant_db="${ACC_DB//_/\\_}"; grant_db="${grant_db//%/\\%}"
      printf '%s\n' \
        "CREATE USER IF NOT EXISTS $user IDENTIFIED BY $pw;" \
        "ALTER USER $user IDENTIFIED BY $pw;" \
        "GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON $(sql_ident "$grant_db").* TO $user;" \
        "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO $user;"
      ;;
    exporter)
      printf '%s\n' \
        "CREATE USER IF NOT EXISTS $user IDENTIFIED BY $pw WITH MAX_USER_CONNECTIONS 3;" \
        "ALTER USER $user IDENTIFIED BY $pw WITH MAX_USER_CONNECTIONS 3;" \
        "GRANT PROCESS, REPLICATION CLIENT, SLAVE MONITOR ON *.* TO $user;"
      ;;
  esac
}

account_mark() { printf '%s/.db-%s-account' "$DATADIR" "$1"; }

write_account_mark() { # KIND FINGERPRINT
  local mark
  mark="$(account_mark "$1")"
  (umask 077; printf '%s\n' "$2" >"$mark.tmp" && mv -f "$mark.tmp" "$mark")
}

account_summary() { # KIND
  case "$1" in
    backup) printf "SELECT, SHOW VIEW, TRIGGER, EVENT on '%s'; REPLICATION SLAVE, BINLOG MONITOR" "$ACC_DB" ;;
    exporter) printf 'PROCESS, REPLICATION CLIENT, SLAVE MONITOR, 3 connections' ;;
  esac
}

# start_temp_server WHAT: a server on the unix socket only (TMP_PID); waits until it answers.
start_temp_server() {
  local what="$1" i
  "${MARIADBD[@]}" --skip-networking --skip-log-bin \
    --loose-innodb-buffer-pool-load-at-startup=0 --loose-innodb-buffer-pool-dump-at-shutdown=0 &
  TMP_PID=$!
  # A stop request meanwhile: stop the temporary server cleanly, then exit.
  trap 'log "stop requested during $what"; kill -TERM "$TMP_PID" 2>/dev/null; wait "$TMP_PID" 2>/dev/null; exit 143' TERM INT
  for ((i = 0; i < 120; i++)); do
    kill -0 "$TMP_PID" 2>/dev/null || die "the temporary server exited during $what (see its log above)"
    mariadb-admin --no-defaults --protocol=socket --socket="$SOCKET" -uroot ping >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "the temporary server did not answer on $SOCKET within 60 s"
}

stop_temp_server() {
  log "stopping the temporary server"
  kill -TERM "$TMP_PID"
  wait "$TMP_PID" || die "the temporary server did not shut down cleanly"
  trap - TERM INT
}

# Later starts: create or update each managed account whose fingerprint file says so.
ensure_accounts() {
  local kind root_pw root_file cnf
  local -a pending=()
  local -A sql=() fingerprint=() account_user=() summary=()
  for kind in "${ACCOUNT_KINDS[@]}"; do
    account_settings "$kind"
    [[ -n "$ACC_USER" ]] || continue
    if [[ -r "$(account_mark "$kind")" && "$(<"$(account_mark "$kind")")" == "$ACC_FP" ]]; then
      continue
    fi
    pending+=("$kind")
    sql[$kind]="$(account_sql "$kind")"
    fingerprint[$kind]="$ACC_FP" account_user[$kind]="$ACC_USER" summary[$kind]="$(account_summary "$kind")"
  done
  ACC_PW=""
  ((${#pending[@]})) || return 0
  root_file="${MARIADB_ROOT_PASSWORD_FILE:-${MYSQL_ROOT_PASSWORD_FILE:-}}"
  if [[ -z "$root_file" || ! -r "$root_file" ]]; then
    log "WARNING: the ${pending[*]} account(s) need creating or updating, but MYSQL_ROOT_PASSWORD_FILE is not set or not readable: skipped (backups or scrapes will fail)"
    return 0
  fi
  root_pw="$(<"$root_file")"
  log "creating or updating the ${pending[*]} account(s) (a temporary socket-only server, once)"
  start_temp_server "the account setup"
  cnf="$RUNDIR/.root.cnf"
  (umask 077; printf '[client]\nuser=root\npassword="%s"\n' "$(printf '%s' "$root_pw" | sed 's/[\\"]/\\&/g')" >"$cnf")
  unset root_pw
  for kind in "${pending[@]}"; do
    if printf 'SET SESSION sql_log_bin=0;\n%s\n' "${sql[$kind]}" \
        | mariadb --defaults-extra-file="$cnf" --protocol=socket --socket="$SOCKET" --batch >/dev/null; then
      write_account_mark "$kind" "${fingerprint[$kind]}"
      log "$kind account '${account_user[$kind]}' ready (${summary[$kind]})"
    else
      log "WARNING: creating the $kind account failed (the error is above; does secrets/db_root_password.txt still hold root's password?): starting without it"
    fi
  done
  rm -f "$cnf"
  stop_temp_server
}

# ---- binary log -------------------------------------------------------------------------------------
[[ "$BINLOG_EXPIRE_DAYS" =~ ^[1-9][0-9]*$ ]] || die "BINLOG_EXPIRE_DAYS=$BINLOG_EXPIRE_DAYS: a whole number of days, at least 1"

# new_binlog_name: a timeline name of its own for this volume, in .db-binlog-name.
new_binlog_name() {
  local name
  name="binlog-$(date -u +%Y%m%d)-$(od -An -tx1 -N3 /dev/urandom | tr -d ' \n')"
  (umask 077; printf '%s\n' "$name" >"$BINLOG_NAME_FILE.tmp" && mv -f "$BINLOG_NAME_FILE.tmp" "$BINLOG_NAME_FILE")
  printf '%s' "$name"
}

binlog_name() {
  local name=""
  [[ ! -r "$BINLOG_NAME_FILE" ]] || name="$(<"$BINLOG_NAME_FILE")"
  if [[ -z "$name" ]]; then
    name="$(new_binlog_name)"
    log "binary log: this volume's timeline is $name"
  fi
  [[ "$name" =~ ^binlog-[0-9a-z-]+$ ]] || die "$BINLOG_NAME_FILE holds '$name', not a timeline name (binlog-...): delete the file to start a new timeline"
  printf '%s' "$name"
}

# ---- data directory state -------------------------------------------------------------------------
[[ -d "$DATADIR" && -w "$DATADIR" ]] || die "$DATADIR is missing or not writable by uid $(id -u) (the volume must be owned by 999:999; a fresh named volume inherits that from the image)"

if [[ "$MODE" == new-timeline ]]; then
  [[ -d "$DATADIR/mysql" ]] || die "$DATADIR holds no initialised database: nothing to start a timeline for"
  old="$(binlog_name)"
  new="$(new_binlog_name)"
  rm -f -- "$DATADIR/$old".[0-9]* "$DATADIR/$old.index"
  log "binary log: new timeline $new (the files of $old are deleted from the volume; the archive keeps its copies)"
  printf '%s\n' "$new"
  exit 0
fi
rm -f "$SOCKET" "$SOCKET.lock" "$RUNDIR/mariadbd.pid"

needs_init=0
if [[ -e "$IN_PROGRESS" ]]; then
  log "a previous first-start initialisation did not finish: wiping its leftovers and starting over"
  for f in "$DATADIR"/*; do
    [[ "${f##*/}" == lost+found ]] && continue
    [[ "$f" == "$IN_PROGRESS" ]] && continue
    rm -rf -- "$f"
  done
  needs_init=1
elif [[ -d "$DATADIR/mysql" ]]; then
  needs_init=0
else
  leftovers=()
  for f in "$DATADIR"/*; do [[ "${f##*/}" == lost+found ]] || leftovers+=("${f##*/}"); done
  if [[ ${#leftovers[@]} -gt 0 ]]; then
    die "$DATADIR is not empty but holds no MariaDB system schema (found: ${leftovers[*]:0:5}); refusing to touch it"
  fi
  needs_init=1
fi

# ---- first start ------------------------------------------------------------------------------------
init_database() {
  local root_pw db user="" user_pw="" hc_pw root_host sql basedir mariadbd_path accounts=""

  root_pw="$(read_secret ROOT_PASSWORD)"
  db="$(env_pick DATABASE)"
  user="$(env_pick USER)"
  if [[ -n "$user" ]]; then
    [[ "$user" != root ]] || die "MYSQL_USER=root: the root account is configured by MYSQL_ROOT_PASSWORD_FILE; pick another user name"
    user_pw="$(read_secret PASSWORD)"
  elif [[ -n "$(env_pick PASSWORD_FILE)" ]]; then
    log "WARNING: MYSQL_PASSWORD_FILE is set but MYSQL_USER is not: no application user is created"
  fi
  root_host="$(env_pick ROOT_HOST)"
  hc_pw="$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"

  : >"$IN_PROGRESS"
  log "initialising an empty data directory in $DATADIR"

  # --basedir: where share/mysql (share/mariadb in Debian's 11.x) and the helper binaries live.
  # Debian: /usr (mariadbd in /usr/sbin);
  # Nix: the store path (mariadbd in bin/). DB_BASEDIR overrides the guess.
  mariadbd_path="$(readlink -f "$(command -v mariadbd)")"
  basedir="${DB_BASEDIR:-$(dirname "$(dirname "$mariadbd_path")")}"
  # --cross-bootstrap: no rows for this container's random host name (and no host lookup);
  # --auth-root-authentication-method=normal: root@localhost gets a password below, no unix_socket
  # auth (there is no matching OS account in most images).
  if ! mariadb-install-db --no-defaults --basedir="$basedir" --datadir="$DATADIR" \
        --auth-root-authentication-method=normal --skip-test-db --cross-bootstrap \
        --skip-name-resolve --character-set-server=utf8mb4 \
        --collation-server=utf8mb4_unicode_ci >"$RUNDIR/install-db.log" 2>&1; then
    cat "$RUNDIR/install-db.log" >&2
    die "mariadb-install-db failed"
  fi
  rm -f "$RUNDIR/install-db.log"

  log "starting a temporary server (unix socket only) to create users and the database"
  # A stop request during initialisation stops the temporary server cleanly and leaves the
  # marker, so that the next start retries from scratch.
  start_temp_server initialisation

  sql="SET SESSION sql_log_bin=0;
-- root: local only. mariadb-install-db also made passwordless root@127.0.0.1 and root@::1.
DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';
ALTER USER 'root'@'localhost' IDENTIFIED BY $(sql_str "$root_pw");"
  if [[ -n "$root_host" && "$root_host" != localhost ]]; then
    sql+="
CREATE USER $(sql_str root)@$(sql_str "$root_host") IDENTIFIED BY $(sql_str "$root_pw");
GRANT ALL ON *.* TO $(sql_str root)@$(sql_str "$root_host") WITH GRANT OPTION;"
  fi
  sql+="
-- liveness/readiness login for healthcheck.sh: no privileges, local connections only.
CREATE USER 'healthcheck'@'127.0.0.1' IDENTIFIED BY $(sql_str "$hc_pw"),
            'healthcheck'@'::1' IDENTIFIED BY $(sql_str "$hc_pw"),
            'healthcheck'@'localhost' IDENTIFIED BY $(sql_str "$hc_pw");"
  if [[ -n "$db" ]]; then
    sql+="
CREATE DATABASE IF NOT EXISTS $(sql_ident "$db") CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"
  fi
  if [[ -n "$user" ]]; then
    sql+="
CREATE USER $(sql_str "$user")@'%' IDENTIFIED BY $(sql_str "$user_pw");"
    if [[ -n "$db" ]]; then
      # '_' and '%' are wildcards in a database grant: escape them so the grant covers this
      # database only.
      local grant_db="${db//_/\\_}"; grant_db="${grant_db//%/\\%}"
      sql+="
GRANT ALL ON $(sql_ident "$grant_db").* TO $(sql_str "$user")@'%';"
    fi
  fi
  local kind
  local -A fingerprint=()
  for kind in "${ACCOUNT_KINDS[@]}"; do
    account_settings "$kind"
    [[ -n "$ACC_USER" ]] || continue
    sql+="
-- the $kind account ($(account_summary "$kind"))
$(account_sql "$kind")"
    fingerprint[$kind]="$ACC_FP"
    accounts+="${accounts:+, }$kind account '$ACC_USER'"
  done
  ACC_PW=""
  sql+="
FLUSH PRIVILEGES;"

  if ! printf '%s\n' "$sql" | mariadb --no-defaults --protocol=socket --socket="$SOCKET" -uroot \
        --batch --skip-column-names >/dev/null; then
    die "setting up users and the database failed (the SQL error is above)"
  fi
  unset root_pw user_pw sql
  for kind in "${!fingerprint[@]}"; do
    write_account_mark "$kind" "${fingerprint[$kind]}"
  done

  (
    umask 077
    printf '[client]\nuser=healthcheck\npassword=%s\nprotocol=tcp\nhost=127.0.0.1\nport=3306\nsocket=%s\n' \
      "$hc_pw" "$SOCKET" >"$HEALTH_CNF.tmp"
    mv -f "$HEALTH_CNF.tmp" "$HEALTH_CNF"
  )
  unset hc_pw

  stop_temp_server
  sync
  rm -f "$IN_PROGRESS"
  sync
  log "initialisation complete${db:+: database '$db'}${user:+, user '$user'}${accounts:+, $accounts}"
}

if ((needs_init)); then
  init_database
else
  log "data directory already initialised: starting the server"
  ensure_accounts
fi

if [[ "$MODE" == maintenance ]]; then
  log "maintenance: the server on $SOCKET only, no network, no binary log"
  exec "${MARIADBD[@]}" --skip-networking --skip-log-bin "$@"
fi
name="$(binlog_name)"
exec "${MARIADBD[@]}" --server-id=1 --log-bin="$DATADIR/$name" --log-bin-index="$DATADIR/$name.index" \
  --binlog-format=ROW --sync-binlog=1 --max-binlog-size=64M \
  --binlog-expire-logs-seconds=$((BINLOG_EXPIRE_DAYS * 86400)) "$@"
