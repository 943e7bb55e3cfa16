#!/usr/bin/env bash
# db/backup.sh: backups and restores of the application database (installed in the db image as
# /bin/db-backup). Runs in its own container (the compose `backup` service, same image as the
# db), talks to the server over TCP, and writes to /backups (a bind mount of ./backups).
#
#   db-backup [backup]              take a backup now, then apply the retention
#   db-backup restore [--force] F   restore backup F (a path, a name in /backups, or `latest`)
#   db-backup recover [--force] [--until T|FILE:POS] [--no-archive] [F]
#                                   point-in-time recovery: backup F (latest) plus the archived
#                                   binary log, replayed to its end or to T (UTC) (a service of
#                                   its own, on the data volume, the db service stopped)
#   db-backup archive               stream the server's binary log into /backups/binlog (a service)
#   db-backup archive-health [--alive]  exit 0 while the archiver streams and rewrites its
#                                   metrics (--alive: rewrites them, streaming or not)
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
# Point-in-time (db/BACKUP.md): the server writes a binary log (db/entrypoint.sh); `archive`
# streams it into /backups/binlog as it is written (mariadb-binlog --read-from-remote-server
# --raw --stop-never, as the backup account); every backup records its position in the log
# (mariadb-dump --master-data=2: a comment, read from the snapshot, no lock). `recover` loads a
# backup and replays the archive from that position. Replaying row events takes the BINLOG
# REPLAY privilege, which writes to any table of any database (it is root in all but name), so
# `recover` runs as root on the unix socket of a server of its own, started on the data volume
# while the db service is stopped, never over the network. A gap in the archive (a missing or
# cut-short file), files of another server or a position before the archive's start are
# refused before anything is touched. The recovered database starts a new timeline of the
# binary log and is dumped at once, as the first backup of that timeline.
#
# Accounts (passwords only in files; written to a 0600 client option file in a private
# directory under $TMPDIR, a tmpfs in compose, removed on exit; never on a command line, in the
# environment or in a log):
#   backup:  BACKUP_USER (default backup), BACKUP_PASSWORD_FILE: SELECT, SHOW VIEW, TRIGGER,
#            EVENT on the application database only (created by db-entrypoint);
#   restore: RESTORE_USER (default the application user), RESTORE_PASSWORD_FILE: the account that
#            owns the database already (ALL on it, nothing else); no root over the network;
#   recover: root (MYSQL_ROOT_PASSWORD_FILE) on the socket of its own server.
#
# Environment: DB_HOST (db), DB_PORT (3306), DB_NAME (user_api), BACKUP_DIR (/backups),
# BACKUP_KEEP_DAYS (14: older files are deleted), BACKUP_KEEP_COUNT (14: at most this many are
# kept), BACKUP_INTERVAL_HOURS (24, for `schedule`), ARCHIVE_DIR (/backups/binlog), METRICS_DIR
# (/backups/metrics: the last backup, the archive's lag and the free space, as text files for
# node_exporter's textfile collector, the compose service backup-exporter). The newest backup is
# never deleted; archived binary logs are deleted once no kept backup needs them.
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
ARCHIVE_DIR=${ARCHIVE_DIR:-$BACKUP_DIR/binlog}
METRICS_DIR=${METRICS_DIR:-$BACKUP_DIR/metrics}
ROOT_PASSWORD_FILE=${MYSQL_ROOT_PASSWORD_FILE:-/run/secrets/db_root_password}
DATADIR=/var/lib/mysql
TRAILER='-- Dump completed'
# The first line of every backup: where it comes from, for `recover` (db/BACKUP.md).
HEADER='-- db-backup:'
# The archiver's replica id on the server: a second archiver with the same id replaces the first.
ARCHIVER_SERVER_ID=65535

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
SERVER_PID=""
cleanup() {
  # recover's own server, stopped cleanly on any way out
  if [[ -n "$SERVER_PID" ]]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  [[ -z "$WORK" ]] || rm -rf -- "$WORK"
  [[ -z "${PARTIAL:-}" ]] || rm -f -- "$PARTIAL" "$PARTIAL.sha256"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# client_cnf USER PASSWORD_FILE [SOCKET]: sets CNF to the path of a 0600 option file for that
# account, over TCP to DB_HOST or on SOCKET (in this shell: the EXIT trap removes it). Only
# options every client reads (mariadb-binlog has no default-character-set).
CNF=""
client_cnf() {
  local user="$1" file="$2" socket="${3:-}" pw cnf
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
    printf '[client]\nuser="%s"\npassword="%s"\n' "$user" "$pw"
    if [[ -n "$socket" ]]; then
      printf 'socket="%s"\nprotocol=socket\n' "$socket"
    else
      printf 'host="%s"\nport=%s\nprotocol=tcp\n' "$DB_HOST" "$DB_PORT"
    fi
  ) >"$cnf"
  CNF="$cnf"
}

# sql CNF STATEMENT: runs one statement in the application database, batch output.
sql() { mariadb --defaults-extra-file="$1" --default-character-set=utf8mb4 --connect-timeout=10 --batch --skip-column-names "$DB_NAME" -e "$2"; }

backups() {
  local f
  for f in "$BACKUP_DIR/$DB_NAME"-*.sql.gz; do printf '%s\n' "$f"; done
}

need_dir() {
  [[ -d "$BACKUP_DIR" ]] || die "$BACKUP_DIR does not exist (mount a directory there: ./backups in compose)"
  [[ -w "$BACKUP_DIR" ]] || die "$BACKUP_DIR is not writable by uid $(id -u): on the host, 'install -d -o 999 -g 999 -m 0700 backups', or run the service as your own uid (BACKUP_UID, BACKUP_GID in .env)"
}

# ---- metrics -------------------------------------------------------------------------------------
# write_metrics NAME: stdin becomes METRICS_DIR/NAME.prom, replaced whole (node_exporter reads
# it at every scrape). A failure (a full disk) is logged, never fatal: the file's age, which
# node_exporter reports, tells the alert.
write_metrics() {
  local f="$METRICS_DIR/$1.prom"
  if ! { [[ -d "$METRICS_DIR" ]] || mkdir -m 0700 "$METRICS_DIR"; } 2>/dev/null \
      || ! cat >"$f.$$.tmp" 2>/dev/null || ! mv -f "$f.$$.tmp" "$f" 2>/dev/null; then
    rm -f "$f.$$.tmp" 2>/dev/null || true
    log "WARNING: cannot write $f (is the disk full?)"
  fi
}

# filesystem_metrics WRITER: the backups' filesystem, labelled with who measured it (the backup
# and the archiver each write their own file; node_exporter refuses one series from two files).
filesystem_metrics() {
  local size avail
  read -r size avail < <(df -P -B1 "$BACKUP_DIR" 2>/dev/null | awk 'NR == 2 { print $2, $4 }') || return 0
  printf '# HELP db_backup_filesystem_size_bytes Size of the filesystem holding the backups and the archive.\n'
  printf '# TYPE db_backup_filesystem_size_bytes gauge\ndb_backup_filesystem_size_bytes{writer="%s"} %s\n' "$1" "$size"
  printf '# HELP db_backup_filesystem_avail_bytes Free space there, for this uid.\n'
  printf '# TYPE db_backup_filesystem_avail_bytes gauge\ndb_backup_filesystem_avail_bytes{writer="%s"} %s\n' "$1" "$avail"
}

# ---- backup --------------------------------------------------------------------------------------
# write_backup CNF HEADER [MARIADB-DUMP OPTIONS...]: dumps the database through CNF into a new
# backup file whose first line is HEADER; sets WRITTEN to its path (in this shell, so that the
# EXIT trap removes a partial file).
WRITTEN=""
write_backup() {
  local cnf="$1" header="$2" ts name final started took size
  shift 2
  need_dir
  ts="$(date -u +%Y%m%dT%H%M%SZ)"
  name="$DB_NAME-$ts.sql.gz"
  final="$BACKUP_DIR/$name"
  [[ ! -e "$final" ]] || die "$final exists already (two backups within one second?)"
  PARTIAL="$BACKUP_DIR/.$name.partial"
  started=$SECONDS
  # --single-transaction: one consistent snapshot, no locks held against the API (and it turns
  # --lock-tables off); --quick: rows streamed, not buffered; --no-tablespaces: no PROCESS
  # privilege needed; no --databases: the dump has no CREATE DATABASE/USE, so it loads into a
  # database of any name.
  if ! { printf '%s\n' "$header" && mariadb-dump --defaults-extra-file="$cnf" --single-transaction \
           --quick --no-tablespaces --routines --events --triggers --hex-blob \
           --default-character-set=utf8mb4 "$@" "$DB_NAME"; } | gzip -6 >"$PARTIAL"; then
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
  WRITTEN="$final"
}

do_backup() {
  local cnf server binlog
  need_dir
  client_cnf "$BACKUP_USER" "$BACKUP_PASSWORD_FILE"
  cnf="$CNF"
  server="$(sql "$cnf" "SELECT CONCAT(@@server_id, ' ', @@log_bin)")" \
    || die "cannot connect to $DB_HOST:$DB_PORT as '$BACKUP_USER' (the error is above); no backup was written"
  log "backup of database '$DB_NAME' on $DB_HOST:$DB_PORT as '$BACKUP_USER' started (the recovery point is this moment)"
  binlog=()
  if [[ "${server#* }" == ON || "${server#* }" == 1 ]]; then
    # the snapshot's position in the binary log, as a comment (from Binlog_snapshot_file and
    # _position: no FLUSH TABLES WITH READ LOCK, no RELOAD privilege)
    binlog=(--master-data=2)
  else
    log "WARNING: the server writes no binary log: this backup cannot be rolled forward (recover --no-archive only)"
  fi
  local began file
  began="$(date +%s)"
  write_backup "$cnf" "$HEADER server_id=${server%% *}" "${binlog[@]}"
  file="$WRITTEN"
  printf '%s\n' "$file"
  {
    printf '# HELP db_backup_last_success_timestamp_seconds When the newest complete backup started (its snapshot).\n'
    printf '# TYPE db_backup_last_success_timestamp_seconds gauge\ndb_backup_last_success_timestamp_seconds %s\n' "$began"
    printf '# HELP db_backup_last_duration_seconds How long it took.\n'
    printf '# TYPE db_backup_last_duration_seconds gauge\ndb_backup_last_duration_seconds %s\n' "$(($(date +%s) - began))"
    printf '# HELP db_backup_last_size_bytes Its size (gzip).\n'
    printf '# TYPE db_backup_last_size_bytes gauge\ndb_backup_last_size_bytes %s\n' "$(stat -c %s "$file")"
    printf '# HELP db_backup_interval_seconds The interval the scheduler keeps (BACKUP_INTERVAL_HOURS).\n'
    printf '# TYPE db_backup_interval_seconds gauge\ndb_backup_interval_seconds %s\n' "$((BACKUP_INTERVAL_HOURS * 3600))"
    filesystem_metrics backup
  } | write_metrics backup
  do_prune
}

# backup_position F: "<binlog file> <position> <server id>" of backup F, or nothing when it has
# none (a server without the binary log, a backup from before the archive). The header's
# binlog= (a recovery's first backup) wins over mariadb-dump's CHANGE MASTER comment.
backup_position() {
  local line server="" file="" pos=""
  while IFS= read -r line; do
    if [[ "$line" == "$HEADER"* ]]; then
      [[ "$line" =~ server_id=([0-9]+) ]] && server="${BASH_REMATCH[1]}"
      [[ "$line" =~ binlog=([^:[:space:]]+):([0-9]+) ]] && file="${BASH_REMATCH[1]}" pos="${BASH_REMATCH[2]}"
    elif [[ -z "$file" && "$line" =~ ^--\ CHANGE\ MASTER\ TO\ MASTER_LOG_FILE=\'([^\']+)\',\ MASTER_LOG_POS=([0-9]+) ]]; then
      file="${BASH_REMATCH[1]}" pos="${BASH_REMATCH[2]}"
    fi
  done < <(gzip -dc "$1" 2>/dev/null | head -n 60 || true)
  [[ -z "$file" || -z "$server" ]] || printf '%s %s %s\n' "$file" "$pos" "$server"
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
  prune_archive
}

# An archived binary log goes once no kept backup can need it: a file of a backup's timeline
# before that backup's position, or a file of a timeline no kept backup starts from that was
# last written before the oldest kept backup (a timeline without a backup yet is newer: kept).
prune_archive() {
  local all=() f pos base num oldest deleted=0
  local -A first=()
  [[ -d "$ARCHIVE_DIR" ]] || return 0
  mapfile -t all < <(backups)
  ((${#all[@]})) || return 0
  for f in "${all[@]}"; do
    read -r pos _ < <(backup_position "$f"; echo) || true
    [[ -n "$pos" ]] || continue
    base="${pos%.*}" num=$((10#${pos##*.}))
    if [[ -z "${first[$base]:-}" ]] || ((num < ${first[$base]})); then first[$base]=$num; fi
  done
  oldest="$(stat -c %Y "${all[0]}")"
  for f in "$ARCHIVE_DIR"/binlog-*.[0-9]*; do
    base="${f##*/}" num="${f##*.}"
    base="${base%.*}"
    [[ "$num" =~ ^[0-9]+$ ]] || continue
    if [[ -n "${first[$base]:-}" ]]; then
      ((10#$num < ${first[$base]})) || continue
    else
      (($(stat -c %Y "$f") < oldest)) || continue
    fi
    rm -f -- "$f"
    deleted=$((deleted + 1))
  done
  ((deleted == 0)) || log "retention: deleted $deleted archived binary log file(s) no kept backup needs"
}

# ---- archive -------------------------------------------------------------------------------------
# archive_start SHOW-BINARY-LOGS-OUTPUT: the server's file to stream from. The newest archived
# file of the server's timeline is fetched again from its start (it may be cut short: the last
# stream ended in it); files the server no longer has cannot be (a gap, which recover refuses).
archive_start() {
  local first base newest=() f next
  first="$(awk 'NR == 1 { print $1 }' <<<"$1")"
  base="${first%.*}"
  for f in "$ARCHIVE_DIR/$base".[0-9]*; do newest=("$f"); done
  if ((${#newest[@]} == 0)); then
    log "timeline $base: nothing archived yet, from $first on"
    printf '%s' "$first"
    return
  fi
  f="${newest[0]##*/}"
  if awk '{ print $1 }' <<<"$1" | grep -qxF "$f"; then
    printf '%s' "$f"
    return
  fi
  next="$(printf '%s.%06d' "$base" $((10#${f##*.} + 1)))"
  if [[ "$next" != "$first" ]]; then
    log "ERROR: the archive of timeline $base ends in $f but the server's oldest file is $first: the files between expired before they were archived (BINLOG_EXPIRE_DAYS); a recovery from a backup before $first stops at that gap"
  fi
  printf '%s' "$first"
}

# archive_lag SHOW-BINARY-LOGS-OUTPUT: the bytes the server has logged and the archive not yet,
# over the files from the archive's newest one of the server's timeline on (all of the server's
# files when it has none of them).
archive_lag() {
  local name size f lag=0 have from=""
  while read -r name size _; do
    [[ -n "$name" ]] || continue
    [[ ! -e "$ARCHIVE_DIR/$name" ]] || from="$name"
  done <<<"$1"
  while read -r name size _; do
    [[ -n "$name" ]] || continue
    [[ -z "$from" || ! "$name" < "$from" ]] || continue
    f="$ARCHIVE_DIR/$name"
    have=0
    [[ ! -e "$f" ]] || have="$(stat -c %s "$f")"
    ((size <= have)) || lag=$((lag + size - have))
  done <<<"$1"
  printf '%s' "$lag"
}

# Every 15 s while the archiver lives: is the stream up (STREAM_PID_FILE's process), how far
# behind the server the archive is, the free space.
archive_metrics_loop() {
  local cnf="$1" logs streaming lag
  sleep 2   # the stream's first start
  while :; do
    streaming=0
    [[ ! -s "$STREAM_PID_FILE" ]] || ! kill -0 "$(<"$STREAM_PID_FILE")" 2>/dev/null || streaming=1
    lag=""
    if logs="$(mariadb --defaults-extra-file="$cnf" --connect-timeout=5 --batch --skip-column-names \
                 -e 'SHOW BINARY LOGS' 2>/dev/null)" && [[ -n "$logs" ]]; then
      lag="$(archive_lag "$logs")"
    fi
    {
      printf '# HELP db_binlog_archive_streaming 1 while the archiver streams the binary log from the server.\n'
      printf '# TYPE db_binlog_archive_streaming gauge\ndb_binlog_archive_streaming %s\n' "$streaming"
      if [[ -n "$lag" ]]; then
        printf '# HELP db_binlog_archive_lag_bytes Bytes the server has logged that the archive does not hold yet.\n'
        printf '# TYPE db_binlog_archive_lag_bytes gauge\ndb_binlog_archive_lag_bytes %s\n' "$lag"
      fi
      filesystem_metrics archive
    } | write_metrics binlog-archive
    sleep 15
  done
}

do_archive() {
  local cnf logs start pid="" rc monitor
  need_dir
  [[ -d "$ARCHIVE_DIR" ]] || mkdir -m 0700 "$ARCHIVE_DIR" || die "cannot create $ARCHIVE_DIR"
  client_cnf "$BACKUP_USER" "$BACKUP_PASSWORD_FILE"
  cnf="$CNF"
  STREAM_PID_FILE="$WORK/stream.pid"
  archive_metrics_loop "$cnf" &
  monitor=$!
  trap 'log "stopping"; kill "$monitor" ${pid:+"$pid"} 2>/dev/null; exit 0' TERM INT
  log "archiving the binary log of $DB_HOST:$DB_PORT into $ARCHIVE_DIR as it is written"
  while :; do
    if logs="$(mariadb --defaults-extra-file="$cnf" --connect-timeout=10 --batch --skip-column-names \
                 -e 'SHOW BINARY LOGS' 2>&1)" && [[ -n "$logs" ]]; then
      start="$(archive_start "$logs")"
      log "streaming from $start"
      # --raw: the server's bytes, in files of the server's names, written as they arrive
      mariadb-binlog --defaults-extra-file="$cnf" --read-from-remote-server --raw --stop-never \
        --stop-never-slave-server-id="$ARCHIVER_SERVER_ID" --result-file="$ARCHIVE_DIR/" "$start" &
      pid=$!
      printf '%s\n' "$pid" >"$STREAM_PID_FILE"
      rc=0
      wait "$pid" || rc=$?
      pid=""
      log "the stream ended (exit $rc; the db restarted or stopped, or the archive cannot be written): again in 5 s"
    else
      log "cannot list the server's binary logs (${logs//$'\n'/ }): again in 5 s"
    fi
    sleep 5 &
    pid=$!
    wait "$pid" || true
    pid=""
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

  load_backup "$cnf" "$force" "$file" restore
  log "start the API again (docker compose start api): it applies newer migrations at startup"
}

# load_backup CNF FORCE FILE COMMAND: replaces the database's tables with backup FILE's, through
# CNF; refuses a database with rows unless FORCE is 1 (COMMAND names the command in messages).
load_backup() {
  local cnf="$1" force="$2" file="$3" cmd="$4" tables t has_rows=() drop started
  tables="$(sql "$cnf" "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME")"
  for t in $tables; do
    [[ "$t" != _sqlx_migrations ]] || continue
    if [[ -n "$(sql "$cnf" "SELECT 1 FROM \`${t//\`/\`\`}\` LIMIT 1")" ]]; then has_rows+=("$t"); fi
  done
  if ((${#has_rows[@]})); then
    ((force)) || die "database '$DB_NAME' is not empty (rows in: ${has_rows[*]}): $cmd --force replaces it; nothing was changed"
    log "--force: replacing database '$DB_NAME' (rows in: ${has_rows[*]})"
  fi

  started=$SECONDS
  # Every table and view goes: tables the backup does not have (a newer migration's) must not
  # survive next to its _sqlx_migrations.
  drop="$(sql "$cnf" "SELECT CONCAT('DROP ', IF(TABLE_TYPE = 'VIEW', 'VIEW', 'TABLE'), ' IF EXISTS \`', REPLACE(TABLE_NAME, '\`', '\`\`'), '\`;') FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_TYPE = 'VIEW' DESC")"
  if [[ -n "$drop" ]]; then
    sql "$cnf" "SET FOREIGN_KEY_CHECKS = 0; $drop" || die "dropping the existing tables failed (the error is above)"
  fi
  log "loading $file into '$DB_NAME'"
  if ! gzip -dc "$file" | mariadb --defaults-extra-file="$cnf" --default-character-set=utf8mb4 --batch --binary-mode "$DB_NAME"; then
    die "loading $file failed part-way (the error is above): the database is incomplete; run $cmd again with --force"
  fi
  log "loaded $file into '$DB_NAME' in $((SECONDS - started)) s"
}

# The archiver's health, from its own metrics file (compose's healthcheck, Kubernetes' probes):
# rewritten within the last 60 s (the loop lives, the disk takes writes) and streaming.
do_archive_health() {
  local f="$METRICS_DIR/binlog-archive.prom" age alive_only="${1:-}"
  [[ -r "$f" ]] || { echo "no $f yet"; exit 1; }
  age=$(($(date +%s) - $(stat -c %Y "$f")))
  ((age <= 60)) || { echo "$f not rewritten for $age s (a full disk?)"; exit 1; }
  [[ "$alive_only" != --alive ]] || { echo "alive"; return 0; }
  grep -qx 'db_binlog_archive_streaming 1' "$f" || { echo "not streaming (see the archiver's log)"; exit 1; }
  echo "streaming"
}

# ---- recover -------------------------------------------------------------------------------------
binlog_file() { printf '%s.%06d' "$1" "$2"; }

# The time of an event line of mariadb-binlog's output (`#261206  1:47:57 server id ...`, the
# process's time zone: UTC in the container), as YYYY-MM-DD HH:MM:SS.
AWK_EVENT_TIME='function event_time(d, t) { split(t, x, ":"); return sprintf("20%s-%s-%s %02d:%s:%s", substr(d, 2, 2), substr(d, 4, 2), substr(d, 6, 2), x[1], x[2], x[3]) }'

# last_event_time FILE: the time of the last event in binary log FILE.
last_event_time() {
  mariadb-binlog "$1" 2>/dev/null | awk "$AWK_EVENT_TIME"'
    /^#[0-9]+ +[0-9:]+ server id / { t = event_time($1, $2) } END { print t }' || true
}

# archive_chain BASE FIRST SERVER [LAST]: sets CHAIN to the archived files of timeline BASE
# from number FIRST to LAST (default: the newest), once every one is there, each was written by
# server id SERVER, and each but the last ends with the Rotate event into the next one (a file
# cut short, then expired on the server before it was fetched again, is a gap too).
CHAIN=()
archive_chain() {
  local base="$1" first="$2" server="$3" last="${4:-}" f num max=-1 n next gap_end
  local -A have=()
  CHAIN=()
  for f in "$ARCHIVE_DIR/$base".[0-9]*; do
    num="${f##*.}"
    [[ "$num" =~ ^[0-9]+$ ]] || continue
    have[$((10#$num))]="$f"
    ((10#$num <= max)) || max=$((10#$num))
  done
  ((max >= 0)) || die "no archived binary log of this backup's timeline ($base) in $ARCHIVE_DIR: is the binlog-archiver running (db/BACKUP.md)? recover --no-archive loads the backup alone; nothing was changed"
  ((max >= first)) || die "the archive of timeline $base ends with $(binlog_file "$base" "$max"), before this backup's position in $(binlog_file "$base" "$first"): it holds nothing after the backup; recover --no-archive loads the backup alone; nothing was changed"
  [[ -z "$last" ]] || max="$last"
  for ((n = first; n <= max; n++)); do
    if [[ -z "${have[$n]:-}" ]]; then
      gap_end=$((n + 1))
      while ((gap_end <= max)) && [[ -z "${have[$gap_end]:-}" ]]; do gap_end=$((gap_end + 1)); done
      die "the archive has a gap: $(binlog_file "$base" "$n")$( ((gap_end - 1 > n)) && printf ' to %s' "$(binlog_file "$base" $((gap_end - 1)))") missing$( ((n > first)) && printf ' (after %s, whose last change is from %s UTC)' "${CHAIN[-1]##*/}" "$(last_event_time "${CHAIN[-1]}")"): the changes in it are lost, and replaying past them would build a database that never existed; refusing; nothing was changed. recover --until a time before the gap stops short of it"
    fi
    CHAIN+=("${have[$n]}")
  done
  local sid list last_gtid rotate prev="" prev_f=""
  for ((n = 0; n < ${#CHAIN[@]}; n++)); do
    f="${CHAIN[n]}"
    next="$(binlog_file "$base" $((first + n + 1)))"
    # one pass over the file: the server id of its header, the GTID list it starts with, its
    # last GTID, the file its Rotate event switches to
    read -r sid list last_gtid rotate < <(mariadb-binlog --verify-binlog-checksum "$f" 2>"$WORK/binlog.err" | awk '
      /^#[0-9]+ +[0-9:]+ server id / && sid == "" { match($0, /server id [0-9]+/); sid = substr($0, RSTART + 10, RLENGTH - 10) }
      /\tGtid list \[/ && list == "" { match($0, /Gtid list \[[^]]*\]/); list = substr($0, RSTART + 11, RLENGTH - 12); if (list == "") list = "-" }
      /\tGTID [0-9]+-[0-9]+-[0-9]+/ { match($0, /GTID [0-9]+-[0-9]+-[0-9]+/); last = substr($0, RSTART + 5, RLENGTH - 5) }
      /\tRotate to / { match($0, /Rotate to [^ \t]+/); rot = substr($0, RSTART + 10, RLENGTH - 10) }
      END { print (sid == "" ? "-" : sid), (list == "" ? "-" : list), (last == "" ? "-" : last), (rot == "" ? "-" : rot) }')
    [[ "$sid" == "$server" ]] || die "${f##*/} was written by server id $sid, the backup's server is server id $server: the archive is from another server; nothing was changed"
    # the file goes on where the one before ended: the GTID it starts after is that one's last
    if [[ -n "$prev" && "$prev" != - && ",$list," != *",$prev,"* ]]; then
      die "${f##*/} does not continue ${prev_f##*/} (it starts after GTID(s) $list, ${prev_f##*/} ends with $prev): a file of another history under this name; nothing was changed"
    fi
    if ((n + 1 < ${#CHAIN[@]})); then
      [[ ! -s "$WORK/binlog.err" ]] || die "${f##*/} cannot be read: $(head -c 300 "$WORK/binlog.err"); nothing was changed"
      [[ "$rotate" == "${next##*/}" ]] || die "the archive has a gap: ${f##*/} is cut short (it does not end with the switch to ${next##*/}; the server expired it before the archiver fetched all of it), so changes between it and ${next##*/} are lost; refusing; nothing was changed. recover --until '$(last_event_time "$f")' stops short of it"
    fi
    prev="$last_gtid" prev_f="$f"
    [[ "$prev" != - ]] || prev="$list"
  done
}

do_recover() {
  local force=0 no_archive=0 until="" until_file="" until_pos="" file="" pos base num server
  local cnf sock pid stop=() count last new started all=() f ts
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --force) force=1; shift ;;
      --no-archive) no_archive=1; shift ;;
      --until) [[ $# -ge 2 ]] || die "--until needs a time (YYYY-MM-DD HH:MM:SS, UTC) or a position (FILE:POS)"; until="$2"; shift 2 ;;
      --until=*) until="${1#--until=}"; shift ;;
      -*) die "recover: unknown option $1 (recover [--force] [--until TIME|FILE:POS] [--no-archive] [FILE|latest])" ;;
      *) break ;;
    esac
  done
  [[ $# -le 1 ]] || die "recover takes at most one backup file"
  if [[ "$until" =~ ^(binlog-[0-9a-z-]+\.[0-9]+):([0-9]+)$ ]]; then
    until_file="${BASH_REMATCH[1]}" until_pos="${BASH_REMATCH[2]}"
    stop=(--stop-position="$until_pos")
  elif [[ -n "$until" ]]; then
    # the binary log's times are whole seconds, UTC
    until="${until/T/ }" until="${until%Z}"
    [[ "$until" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}\ [0-9]{2}:[0-9]{2}:[0-9]{2}$ ]] && date -u -d "$until" +%s >/dev/null 2>&1 \
      || die "--until $until: not a time (YYYY-MM-DD HH:MM:SS, UTC) nor a position (binlog-...NNNNNN:POS); nothing was changed"
    stop=(--stop-datetime="$until")
  fi
  ((!no_archive)) || [[ -z "$until" ]] || die "--until replays the archive: it does not go with --no-archive"

  if [[ $# -eq 1 ]]; then
    file="$(resolve "$1")"
  elif [[ -n "$until" && -z "$until_file" ]]; then
    # the newest backup taken before that time
    mapfile -t all < <(backups)
    for f in "${all[@]}"; do
      ts="${f##*-}" ts="${ts%.sql.gz}"
      [[ "$ts" =~ ^([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z$ ]] || continue
      [[ "${BASH_REMATCH[1]}-${BASH_REMATCH[2]}-${BASH_REMATCH[3]} ${BASH_REMATCH[4]}:${BASH_REMATCH[5]}:${BASH_REMATCH[6]}" > "$until" ]] || file="$f"
    done
    [[ -n "$file" ]] || die "no backup in $BACKUP_DIR was taken before $until; nothing was changed"
  elif [[ -n "$until_file" ]]; then
    # the newest backup of that position's timeline whose snapshot is at or before it
    mapfile -t all < <(backups)
    for f in "${all[@]}"; do
      read -r pos num _ < <(backup_position "$f"; echo) || true
      [[ -n "$pos" && "${pos%.*}" == "${until_file%.*}" ]] || continue
      if ((10#${pos##*.} < 10#${until_file##*.} || (10#${pos##*.} == 10#${until_file##*.} && num <= until_pos))); then
        file="$f"
      fi
    done
    [[ -n "$file" ]] || die "no backup in $BACKUP_DIR was taken in ${until_file%.*} before $until; nothing was changed"
  else
    file="$(resolve latest)"
  fi
  do_verify "$file"
  # the recovered state is written there as a backup too
  need_dir
  WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/db-backup.XXXXXX")}"

  if ((!no_archive)); then
    read -r pos num server < <(backup_position "$file"; echo) || true
    [[ -n "$pos" ]] || die "${file##*/} records no position in the binary log (taken without it, or before the archive existed): recover --no-archive loads it alone; nothing was changed"
    base="${pos%.*}"
    if [[ -n "$until_file" ]]; then
      [[ "${until_file%.*}" == "$base" ]] || die "--until $until is in timeline ${until_file%.*}, the backup's is $base; nothing was changed"
      ((10#${until_file##*.} >= 10#${pos##*.})) || die "--until $until is before the backup's position $pos:$num; nothing was changed"
      archive_chain "$base" $((10#${pos##*.})) "$server" $((10#${until_file##*.}))
    else
      archive_chain "$base" $((10#${pos##*.})) "$server"
    fi
    # a dry run first: every file readable, and what will be replayed
    read -r count last < <(mariadb-binlog --verify-binlog-checksum --database="$DB_NAME" --start-position="$num" \
        "${stop[@]}" "${CHAIN[@]}" 2>"$WORK/binlog.err" \
      | awk "$AWK_EVENT_TIME"'
          /^#[0-9]+ +[0-9:]+ server id .*\tXid = / { n++; t = event_time($1, $2) }
          END { print n + 0, (t == "" ? "-" : t) }')
    if [[ -s "$WORK/binlog.err" ]]; then
      log "reading the archive's last file stopped at: $(head -c 300 "$WORK/binlog.err") (its last event was cut short when the stream ended: what precedes it is replayed)"
    fi
    log "${file##*/} + the archive from $pos:$num (${#CHAIN[@]} file(s) to ${CHAIN[-1]##*/}): $count transaction(s) to replay${until:+ up to $until}"
  fi

  # the db service must be stopped: its server holds the data files
  if mariadb-admin --no-defaults --protocol=tcp -h "$DB_HOST" -P "$DB_PORT" --connect-timeout=3 ping >/dev/null 2>&1; then
    die "the db server on $DB_HOST:$DB_PORT is running: stop it first (docker compose stop api db), then recover, then docker compose up -d; nothing was changed"
  fi
  [[ -d "$DATADIR" && -w "$DATADIR" ]] || die "$DATADIR is not mounted or not writable by uid $(id -u): recover runs in the compose service 'recover', on the db's volume"

  started=$SECONDS
  log "starting a server of its own on the data volume (unix socket only, no binary log)"
  /bin/db-entrypoint --maintenance >"$WORK/server.log" 2>&1 &
  pid=$!
  SERVER_PID=$pid
  for ((n = 0; ; n++)); do
    kill -0 "$pid" 2>/dev/null || { cat "$WORK/server.log" >&2; die "the server did not start (its log is above; is the db service still running on this volume?)"; }
    # after the entrypoint's exec: the server itself, not the first start's temporary one
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == mariadbd ]]; then
      for sock in /run/mysqld/mysqld.sock /tmp/mysqld/mysqld.sock; do
        [[ -S "$sock" ]] && break
      done
      if [[ -S "$sock" ]]; then
        client_cnf root "$ROOT_PASSWORD_FILE" "$sock"
        cnf="$CNF"
        mariadb-admin --defaults-extra-file="$cnf" ping >/dev/null 2>&1 && break
      fi
    fi
    ((n < 600)) || die "the server did not answer within 300 s"
    sleep 0.5
  done

  load_backup "$cnf" "$force" "$file" recover
  if ((!no_archive)); then
    log "replaying the archive from $pos:$num${until:+ up to $until}"
    local status=()
    {
      mariadb-binlog --database="$DB_NAME" --start-position="$num" "${stop[@]}" "${CHAIN[@]}" 2>"$WORK/replay.err" \
        | mariadb --defaults-extra-file="$cnf" --batch --binary-mode
      status=("${PIPESTATUS[@]}")
    } || true
    ((status[1] == 0)) || die "replaying the archive failed (the error is above): the database holds the backup and part of the archive; run recover again with --force"
    # a last event cut short (the dry run said so) ends the read early; anything else is an error
    ((status[0] == 0)) || [[ -s "$WORK/binlog.err" ]] \
      || die "reading the archive failed part-way: $(head -c 300 "$WORK/replay.err"); run recover again with --force"
    if [[ "$last" == - ]]; then log "replayed nothing: the archive holds no change after the backup"; else log "replayed $count transaction(s), the last from $last UTC"; fi
  fi
  new="$(/bin/db-entrypoint --new-timeline)" || die "starting a new binary-log timeline failed"
  # the recovered state, the first backup of the new timeline: a later recovery starts there
  write_backup "$cnf" "$HEADER server_id=$(sql "$cnf" "SELECT @@server_id") binlog=$(binlog_file "$new" 1):4"
  f="$WRITTEN"
  SERVER_PID=""
  kill -TERM "$pid"
  wait "$pid" || die "the server did not shut down cleanly (its log: $(tail -n 5 "$WORK/server.log"))"
  log "recovered '$DB_NAME' in $((SECONDS - started)) s; new timeline $new, its first backup ${f##*/}; now: docker compose up -d"
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
  recover) do_recover "$@" ;;
  archive) [[ $# -eq 0 ]] || usage; do_archive ;;
  archive-health) [[ $# -eq 0 || ( $# -eq 1 && "$1" == --alive ) ]] || usage; do_archive_health "$@" ;;
  verify) [[ $# -eq 1 ]] || usage; do_verify "$(resolve "$1")" ;;
  list) [[ $# -eq 0 ]] || usage; backups ;;
  prune) [[ $# -eq 0 ]] || usage; need_dir; do_prune ;;
  schedule) [[ $# -eq 0 ]] || usage; do_schedule ;;
  -h|--help|help) usage ;;
  *) log "unknown command '$cmd'"; usage ;;
esac
