#!/usr/bin/env bash
# db/backup.sh: backups and restores of the application database (installed in the db image as
# /bin/db-backup). Runs in its own container (the compose `backup` service, same image as the
# db), talks to the server over TCP, and writes to /backups (a bind mount of ./backups).
#
#   db-backup [backup]              take a backup now, then apply the retention
#   db-backup restore [--force] F   restore backup F (a path, a name in /backups, or `latest`)
#   db-backup verify F              check F's checksum, gzip stream and dump trailer; change nothing
#   db-backup list                  the backups, oldest first
#   db-backup prune                 apply the retention only
#   db-backup schedule              backup every BACKUP_INTERVAL_HOURS, forever (a service)
#
# A backup is `mariadb-dump --single-transaction` of the one application database: a consistent
# snapshot (REPEATABLE READ, START TRANSACTION WITH CONSISTENT SNAPSHOT) taken without blocking
# the API's writes (InnoDB tables only; DDL during a dump breaks the snapshot, and the API runs
# DDL only at startup). The file: <db>-<UTC time>.sql.gz, gzip, with <file>.sha256 next to it in
# `sha256sum` format; both appear only once complete (written as dot-files, then renamed), and a
# dump without mariadb-dump's closing "-- Dump completed" line is never kept.
#
# Restore: verify (checksum, gzip, trailer) before touching anything; refuse while another
# session of the restoring account is connected (the API: stop it first) and while any table but
# _sqlx_migrations holds a row (unless --force); then drop the database's tables and load the
# dump. The API applies newer migrations when it starts again (`docker compose start api`).
#
# Accounts (passwords only in files; written to a 0600 client option file in a private
# directory under $TMPDIR, a tmpfs in compose, removed on exit; never on a command line, in the
# environment or in a log):
#   backup:  BACKUP_USER (default backup), BACKUP_PASSWORD_FILE: SELECT, SHOW VIEW, TRIGGER,
#            EVENT on the application database only (created by db-entrypoint);
#   restore: RESTORE_USER (default the application user), RESTORE_PASSWORD_FILE: the account that
#            owns the database already (ALL on it, nothing else); no root over the network.
#
# Environment: DB_HOST (db), DB_PORT (3306), DB_NAME (user_api), BACKUP_DIR (/backups),
# BACKUP_KEEP_DAYS (14: older files are deleted), BACKUP_KEEP_COUNT (14: at most this many are
# kept), BACKUP_INTERVAL_HOURS (24, for `schedule`). The newest backup is never deleted.
set -Eeuo pipefail
shopt -s nullglob

DB_HOST=${DB_HOST:-db}
DB_PORT=${DB_PORT:-3306}
DB_NAME=${DB_NAME:-user_api}
BACKUP_DIR=${BACKUP_DIR:-/backups}
BACKUP_USER=${BACKUP_USER:-backup}
BACKUP_PASSWORD_FILE=${BACKUP_PASSWORD_FILE:-/run/secrets/db_backup_password}
RESTORE_USER=${RESTORE_USER:-${DB_USER:-user_api}}
RESTORE_PASSWORD_FILE=${RESTORE_PASSWORD_FILE:-/run/secrets/db_password}
BACKUP_KEEP_DAYS=${BACKUP_KEEP_DAYS:-14}
BACKUP_KEEP_COUNT=${BACKUP_KEEP_COUNT:-14}
BACKUP_INTERVAL_HOURS=${BACKUP_INTERVAL_HOURS:-24}
TRAILER='-- Dump completed'

log() { printf '%s [db-backup] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
  sed -n '/^#   db-backup/s/^#   //p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

for v in BACKUP_KEEP_DAYS BACKUP_KEEP_COUNT BACKUP_INTERVAL_HOURS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v=${!v}: not a whole number"
done
((BACKUP_KEEP_COUNT >= 1)) || die "BACKUP_KEEP_COUNT=0: at least the newest backup is kept"
((BACKUP_INTERVAL_HOURS >= 1)) || die "BACKUP_INTERVAL_HOURS must be at least 1"

WORK=""
cleanup() {
  [[ -z "$WORK" ]] || rm -rf -- "$WORK"
  [[ -z "${PARTIAL:-}" ]] || rm -f -- "$PARTIAL" "$PARTIAL.sha256"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# client_cnf USER PASSWORD_FILE: sets CNF to the path of a 0600 option file for that account
# (in this shell: the EXIT trap removes it).
CNF=""
client_cnf() {
  local user="$1" file="$2" pw cnf
  [[ -e "$file" ]] || die "$file: no such file (is the secret declared for this service, and does secrets/${file##*/}.txt exist on the host?)"
  [[ -r "$file" ]] || die "$file: not readable by uid $(id -u) (the secret files must be 0644 in a 0700 secrets/ directory)"
  pw="$(<"$file")"
  [[ -n "$pw" ]] || die "$file: the file is empty"
  if [[ -z "$WORK" ]]; then
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/db-backup.XXXXXX")"
  fi
  cnf="$WORK/$user.cnf"
  pw="${pw//\\/\\\\}"
  pw="${pw//\"/\\\"}"
  (
    umask 077
    printf '[client]\nuser="%s"\npassword="%s"\nhost="%s"\nport=%s\nprotocol=tcp\ndefault-character-set=utf8mb4\n' \
      "$user" "$pw" "$DB_HOST" "$DB_PORT" >"$cnf"
  )
  CNF="$cnf"
}

# sql CNF STATEMENT: runs one statement in the application database, batch output.
sql() { mariadb --defaults-extra-file="$1" --connect-timeout=10 --batch --skip-column-names "$DB_NAME" -e "$2"; }

backups() {
  local f
  for f in "$BACKUP_DIR/$DB_NAME"-*.sql.gz; do printf '%s\n' "$f"; done
}

need_dir() {
  [[ -d "$BACKUP_DIR" ]] || die "$BACKUP_DIR does not exist (mount a directory there: ./backups in compose)"
  [[ -w "$BACKUP_DIR" ]] || die "$BACKUP_DIR is not writable by uid $(id -u): on the host, 'install -d -o 999 -g 999 -m 0700 backups', or run the service as your own uid (BACKUP_UID, BACKUP_GID in .env)"
}

# ---- backup --------------------------------------------------------------------------------------
do_backup() {
  local cnf ts name final started took size
  need_dir
  client_cnf "$BACKUP_USER" "$BACKUP_PASSWORD_FILE"
  cnf="$CNF"
  ts="$(date -u +%Y%m%dT%H%M%SZ)"
  name="$DB_NAME-$ts.sql.gz"
  final="$BACKUP_DIR/$name"
  [[ ! -e "$final" ]] || die "$final exists already (two backups within one second?)"
  PARTIAL="$BACKUP_DIR/.$name.partial"
  started=$SECONDS
  log "backup of database '$DB_NAME' on $DB_HOST:$DB_PORT as '$BACKUP_USER' started (the recovery point is this moment)"
  # --single-transaction: one consistent snapshot, no locks held against the API (and it turns
  # --lock-tables off); --quick: rows streamed, not buffered; --no-tablespaces: no PROCESS
  # privilege needed; no --databases: the dump has no CREATE DATABASE/USE, so it loads into a
  # database of any name.
  if ! mariadb-dump --defaults-extra-file="$cnf" --single-transaction --quick --no-tablespaces \
        --routines --events --triggers --hex-blob --default-character-set=utf8mb4 "$DB_NAME" \
        | gzip -6 >"$PARTIAL"; then
    die "mariadb-dump failed (its error is above); no backup was written"
  fi
  if [[ "$(gzip -dc "$PARTIAL" | tail -n 1)" != "$TRAILER"* ]]; then
    die "the dump does not end with '$TRAILER': incomplete, not kept"
  fi
  (cd "$BACKUP_DIR" && sha256sum ".$name.partial") | sed "s/\.$name\.partial\$/$name/" >"$PARTIAL.sha256"
  sync "$PARTIAL" "$PARTIAL.sha256" 2>/dev/null || true
  mv -f "$PARTIAL" "$final"
  mv -f "$PARTIAL.sha256" "$final.sha256"
  PARTIAL=""
  sync "$BACKUP_DIR" 2>/dev/null || true
  took=$((SECONDS - started))
  size="$(stat -c %s "$final")"
  log "backup written: $final ($size bytes, sha256 in $name.sha256) in ${took} s"
  printf '%s\n' "$final"
  do_prune
}

# ---- retention -----------------------------------------------------------------------------------
do_prune() {
  local all=() f i n keep_from now age
  mapfile -t all < <(backups)
  n=${#all[@]}
  ((n > 1)) || return 0
  now="$(date +%s)"
  keep_from=$((n > BACKUP_KEEP_COUNT ? n - BACKUP_KEEP_COUNT : 0))
  # names sort by time; the newest (last) is never deleted
  for ((i = 0; i < n - 1; i++)); do
    f="${all[i]}"
    age=$(((now - $(stat -c %Y "$f")) / 86400))
    if ((i < keep_from || age >= BACKUP_KEEP_DAYS)); then
      rm -f -- "$f" "$f.sha256"
      log "retention: deleted ${f##*/} (age ${age} d; keeping at most $BACKUP_KEEP_COUNT files, $BACKUP_KEEP_DAYS days)"
    fi
  done
}

# ---- verify --------------------------------------------------------------------------------------
resolve() {
  local f="$1" all=()
  if [[ "$f" == latest ]]; then
    mapfile -t all < <(backups)
    ((${#all[@]})) || die "no backup in $BACKUP_DIR"
    f="${all[-1]}"
  elif [[ ! -e "$f" && "$f" != */* && -e "$BACKUP_DIR/$f" ]]; then
    f="$BACKUP_DIR/$f"
  elif [[ ! -e "$f" && -e "$BACKUP_DIR/${f##*/}" ]]; then
    # a host path such as backups/<name> or ./backups/<name>: the same file under /backups
    f="$BACKUP_DIR/${f##*/}"
  fi
  [[ -f "$f" ]] || die "$1: no such backup file (looked in the working directory and $BACKUP_DIR)"
  printf '%s' "$f"
}

do_verify() {
  local f="$1" sumfile expected actual last
  sumfile="$f.sha256"
  [[ -r "$sumfile" ]] || die "$f: no checksum file $sumfile next to it: refusing an unverifiable backup; nothing was changed"
  read -r expected _ <"$sumfile" || true
  [[ "$expected" =~ ^[0-9a-f]{64}$ ]] || die "$sumfile does not hold a sha256 checksum; nothing was changed"
  actual="$(sha256sum <"$f")"
  actual="${actual%% *}"
  [[ "$actual" == "$expected" ]] || die "$f: checksum mismatch (sha256 $actual, $sumfile says $expected): the file is corrupted or truncated; nothing was changed"
  gzip -t "$f" 2>/dev/null || die "$f: not a complete gzip stream (corrupted or truncated); nothing was changed"
  last="$(gzip -dc "$f" | tail -n 1)"
  [[ "$last" == "$TRAILER"* ]] || die "$f: the dump does not end with '$TRAILER' (the backup was cut short); nothing was changed"
  log "verified $f: sha256 $actual, gzip stream complete, dump complete"
}

# ---- restore -------------------------------------------------------------------------------------
do_restore() {
  local force=0 file cnf others tables t has_rows=() drop started
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --force) force=1; shift ;;
      -*) die "restore: unknown option $1 (restore [--force] FILE)" ;;
      *) break ;;
    esac
  done
  [[ $# -eq 1 ]] || die "restore needs exactly one backup file (restore [--force] FILE|latest)"
  file="$(resolve "$1")"
  do_verify "$file"

  client_cnf "$RESTORE_USER" "$RESTORE_PASSWORD_FILE"
  cnf="$CNF"
  # Without the PROCESS privilege an account sees only its own sessions: any other one is the
  # API (or another restore) using the database.
  others="$(sql "$cnf" "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()")" \
    || die "cannot connect to $DB_HOST:$DB_PORT as '$RESTORE_USER' (the error is above); nothing was changed"
  ((others == 0)) || die "$others other session(s) of '$RESTORE_USER' are connected (the API): stop it first (docker compose stop api), then restore, then docker compose start api; nothing was changed"

  tables="$(sql "$cnf" "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME")"
  for t in $tables; do
    [[ "$t" != _sqlx_migrations ]] || continue
    if [[ -n "$(sql "$cnf" "SELECT 1 FROM \`${t//\`/\`\`}\` LIMIT 1")" ]]; then has_rows+=("$t"); fi
  done
  if ((${#has_rows[@]})); then
    ((force)) || die "database '$DB_NAME' is not empty (rows in: ${has_rows[*]}): restore --force replaces it; nothing was changed"
    log "--force: replacing database '$DB_NAME' (rows in: ${has_rows[*]})"
  fi

  started=$SECONDS
  # Every table and view goes: tables the backup does not have (a newer migration's) must not
  # survive next to its _sqlx_migrations.
  drop="$(sql "$cnf" "SELECT CONCAT('DROP ', IF(TABLE_TYPE = 'VIEW', 'VIEW', 'TABLE'), ' IF EXISTS \`', REPLACE(TABLE_NAME, '\`', '\`\`'), '\`;') FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_TYPE = 'VIEW' DESC")"
  if [[ -n "$drop" ]]; then
    sql "$cnf" "SET FOREIGN_KEY_CHECKS = 0; $drop" || die "dropping the existing tables failed (the error is above)"
  fi
  log "restoring $file into '$DB_NAME' as '$RESTORE_USER'"
  if ! gzip -dc "$file" | mariadb --defaults-extra-file="$cnf" --batch --binary-mode "$DB_NAME"; then
    die "loading $file failed part-way (the error is above): the database is incomplete; run the restore again with --force"
  fi
  log "restored $file into '$DB_NAME' in $((SECONDS - started)) s; start the API again (docker compose start api): it applies newer migrations at startup"
}

# ---- schedule ------------------------------------------------------------------------------------
do_schedule() {
  local pid
  log "scheduled backups every $BACKUP_INTERVAL_HOURS h into $BACKUP_DIR (keep $BACKUP_KEEP_COUNT files, $BACKUP_KEEP_DAYS days)"
  trap 'log "stopping"; [[ -z "${pid:-}" ]] || kill "$pid" 2>/dev/null; exit 0' TERM INT
  while :; do
    # a failed backup is logged and retried at the next interval; the loop goes on
    ( trap cleanup EXIT; do_backup >/dev/null ) || log "backup failed; next attempt in $BACKUP_INTERVAL_HOURS h"
    sleep "$((BACKUP_INTERVAL_HOURS * 3600))" &
    pid=$!
    wait "$pid" || true
    pid=""
  done
}

cmd="${1:-backup}"
[[ $# -eq 0 ]] || shift
case "$cmd" in
  backup) [[ $# -eq 0 ]] || usage; do_backup ;;
  restore) do_restore "$@" ;;
  verify) [[ $# -eq 1 ]] || usage; do_verify "$(resolve "$1")" ;;
  list) [[ $# -eq 0 ]] || usage; backups ;;
  prune) [[ $# -eq 0 ]] || usage; need_dir; do_prune ;;
  schedule) [[ $# -eq 0 ]] || usage; do_schedule ;;
  -h|--help|help) usage ;;
  *) log "unknown command '$cmd'"; usage ;;
esac
