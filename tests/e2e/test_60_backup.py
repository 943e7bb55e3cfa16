"""Backups and restores (issue 14) with the compose `backup` service, on the real stack.

- a backup under a steady write load, `down -v`, a fresh `up`, the restore: every create
  acknowledged before the backup started is back with its exact name, the snapshot has no hole,
  the API serves again;
- a corrupted, truncated, cut-short or unchecksummed file is refused before anything changes;
  a database with data is not overwritten without --force, nor while the API is connected;
- a backup of an older schema (no _sqlx_migrations) restores, and the API migrates it forward;
- a backup written by MariaDB 10.11 (tests/e2e/fixtures) restores into the running 11.x;
- a volume without the backup account (made before backups existed) gets it at its next start,
  with only the read grants; retention by count and age;
- 100,000 users: backup and restore time and size (recorded in the `measured` section).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

import e2e_support as e2e

BULK = 100_000
# the backup account's grants: what mariadb-dump --single-transaction --no-tablespaces needs,
# and, on every database, what the binlog archiver reads the binary log with
BACKUP_GRANTS = {"SELECT", "SHOW VIEW", "TRIGGER", "EVENT"}
ARCHIVE_GRANTS = {"REPLICATION SLAVE", "BINLOG MONITOR"}


@pytest.fixture(scope="module")
def bk(project):
    """The session's project, up, with ./backups writable by the backup service's uid 999."""
    e2e.backups_dir(project)
    project.up()
    return project


def backup_cmd(p, *args, check=True, env=()):
    extra = [a for kv in env for a in ("-e", kv)]
    return p.compose("--profile", "backup", "run", "--rm", "-T", *extra, "backup", *args,
                     check=check, timeout=600)


def take_backup(p) -> tuple[Path, float]:
    t0 = time.monotonic()
    r = backup_cmd(p)
    took = time.monotonic() - t0
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.parent == Path("/backups"), r.stdout + r.stderr
    return p.dir / "backups" / path.name, took


def restore(p, f: Path, *flags, check=True):
    return backup_cmd(p, "restore", *flags, f"backups/{f.name}", check=check)


root_sql = e2e.root_sql


class Transfers:
    """Transactions that move 1 from a_ledger.bal to z_ledger.bal of one id (two tables, one
    transaction each), as fast as one root session over the socket runs them. The dump reads the
    tables in name order, and m_filler (100,000 rows) between the two takes a while: a dump that
    is not one snapshot reads z_ledger after transfers that its a_ledger did not see (a pair
    whose sum is not 1000; checked: with --skip-lock-tables instead of --single-transaction this
    test fails)."""

    PAIRS = 1000

    def __init__(self, p):
        root_sql(p, f"""
            CREATE TABLE a_ledger (id INT PRIMARY KEY, bal BIGINT NOT NULL) ENGINE=InnoDB;
            CREATE TABLE z_ledger (id INT PRIMARY KEY, bal BIGINT NOT NULL) ENGINE=InnoDB;
            CREATE TABLE m_filler (id INT PRIMARY KEY, pad VARCHAR(200)) ENGINE=InnoDB;
            INSERT INTO a_ledger SELECT seq, 1000 FROM seq_1_to_{self.PAIRS};
            INSERT INTO z_ledger SELECT seq, 0 FROM seq_1_to_{self.PAIRS};
            INSERT INTO m_filler SELECT seq, MD5(seq) FROM seq_1_to_100000;""")
        script = ('s=/run/mysqld/mysqld.sock; [ -S "$s" ] || s=/tmp/mysqld/mysqld.sock; '
                  'exec mariadb --defaults-extra-file=<(printf "[client]\\nuser=root\\npassword=%s\\n" '
                  '"$(cat /run/secrets/db_root_password)") --socket="$s" --batch user_api')
        self.proc = subprocess.Popen(p.command("exec", "-T", "db", "bash", "-c", script),
                                     env=p.env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.sent = 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        k = 0
        while not self._halt.is_set():
            k = k % self.PAIRS + 1
            self.proc.stdin.write(
                f"START TRANSACTION; UPDATE a_ledger SET bal = bal - 1 WHERE id = {k}; "
                f"UPDATE z_ledger SET bal = bal + 1 WHERE id = {k}; COMMIT;\n")
            self.proc.stdin.flush()
            self.sent += 1
            time.sleep(0.002)

    def stop(self):
        self._halt.set()
        self._thread.join(10)
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0, self.proc.stderr.read()

    @staticmethod
    def broken_pairs(p) -> tuple[int, int]:
        """(pairs whose sum is not 1000, units moved) in the database now."""
        out = root_sql(p, "SELECT COUNT(*) FROM a_ledger JOIN z_ledger USING (id) "
                          "WHERE a_ledger.bal + z_ledger.bal <> 1000; "
                          "SELECT SUM(bal) FROM z_ledger;")
        broken, moved = out.split()
        return int(broken), int(moved)


def restart_api(p):
    p.compose("start", "api")
    p.up()


def leaks(p, text: str) -> list[str]:
    return [n for n in ("db_password", "db_root_password", "db_backup_password")
            if p.secret(n) in text]


def test_backup_under_writes_down_v_restore(bk, record):
    transfers = Transfers(bk)
    writer = e2e.Writer(bk.base_url, 600_000, "backup")
    writer.start()
    try:
        assert writer.wait_for_success_after(e2e.now(), 10), "no 201 before the backup"
        time.sleep(2)
        t_backup = e2e.now()
        before = {r.userid: r.username for r in list(writer.results)
                  if r.status == 201 and r.ended < t_backup}
        r_started = e2e.now()
        file, took = take_backup(bk)
        t_done = e2e.now()
        time.sleep(2)   # the API keeps writing after the backup
    finally:
        results = writer.stop()
        transfers.stop()
    during = [r for r in results if r_started <= r.started <= t_done]
    assert during and all(r.status == 201 for r in during), (
        f"writes during the backup were not all acknowledged: {e2e.summary(during)}")
    after_backup = {r.userid for r in results if r.status == 201 and r.started > t_done}
    assert after_backup, "no write acknowledged after the backup"

    # the file: checksummed, complete, no secret in it or in the service's output
    sums = file.with_name(file.name + ".sha256").read_text().split()
    assert sums == [hashlib.sha256(file.read_bytes()).hexdigest(), file.name], sums
    dump = gzip.decompress(file.read_bytes()).decode()
    assert dump.rstrip("\n").splitlines()[-1].startswith("-- Dump completed"), dump[-200:]
    assert not leaks(bk, dump), "a password is in the dump"
    assert re.fullmatch(r"user_api-\d{8}T\d{6}Z\.sql\.gz", file.name), file.name

    bk.compose("down", "-v")
    assert not bk.resources()["volumes"], "down -v kept the volume"
    bk.up()
    assert len(e2e.all_users(bk.base_url)) == 0, "the database survived down -v"

    # the API connected: refused, nothing changed
    r = restore(bk, file, check=False)
    assert r.returncode != 0 and "stop it first" in r.stderr, r.stderr
    t0 = time.monotonic()
    bk.compose("stop", "api")
    r = restore(bk, file)   # the fresh database has the schema but no rows: no --force needed
    restore_took = time.monotonic() - t0
    assert not leaks(bk, r.stdout + r.stderr + bk.logs("db")), "a password in a log"
    restart_api(bk)

    stored = e2e.all_users(bk.base_url)
    missing = {u: n for u, n in before.items() if stored.get(u) != n}
    assert not missing, f"{len(missing)} of {len(before)} writes acknowledged before the backup " \
        f"missing or renamed: {sorted(missing.items())[:10]}"
    # consistent: one row per id, and the snapshot is a prefix of the writer's acknowledged
    # creates (no later write without every earlier one)
    count, distinct = map(int, root_sql(bk, "SELECT COUNT(*), COUNT(DISTINCT userid) FROM users")
                          .split())
    assert count == distinct == len(stored), (count, distinct, len(stored))
    ours = sorted(u for u in stored if u >= 600_000)
    acked_ids = sorted(r.userid for r in results if r.status == 201)
    assert ours == [u for u in acked_ids if u <= ours[-1]], "the restored writes have a hole"
    assert not (set(ours) & after_backup), "a write made after the backup is in it"
    # no half transaction: every transfer in the snapshot is whole
    broken, moved = Transfers.broken_pairs(bk)
    assert broken == 0, f"{broken} ledger pairs hold half a transfer"
    assert 0 < moved < transfers.sent, (moved, transfers.sent)
    root_sql(bk, "DROP TABLE a_ledger, z_ledger, m_filler;")
    r = requests.post(bk.url("/users"), json={"userid": 699_999, "username": "after restore"},
                      timeout=10)
    assert r.status_code == 201, r.text
    assert requests.get(bk.url("/users/699999"), timeout=10).json()["username"] == "after restore"
    record(f"backup under writes: {took:.1f} s ({file.stat().st_size} bytes, {count} users), "
           f"{len(before)} acknowledged before it all restored after down -v; restore "
           f"(stop api + restore) {restore_took:.1f} s; writes during the backup: "
           f"{e2e.summary(during)}; two-table transfers: {transfers.sent} sent, {moved} in the "
           "snapshot, none half")


def _state(p) -> str:
    return root_sql(p, "CHECKSUM TABLE users; SELECT COUNT(*) FROM users;"
                       " SELECT COUNT(*) FROM _sqlx_migrations;")


def test_no_password_on_any_command_line_during_healthcheck_backup_restore_restart(bk, record):
    """The process list, read every 20 ms while the db's healthcheck, a backup, a restore and a
    `restart db` run: their clients get passwords from files, never from arguments."""
    names = ("db_password", "db_root_password", "db_backup_password", "db_exporter_password")
    with e2e.CommandLineWatch({n: bk.secret(n) for n in names}) as watch:
        bk.exec("db", "healthcheck.sh", "--connect", "--innodb_initialized")
        file, _ = take_backup(bk)
        bk.compose("stop", "api")
        try:
            restore(bk, file, "--force")
        finally:
            restart_api(bk)
        t0 = e2e.now()
        bk.compose("restart", "db")
        e2e.wait_healthy(bk, "db", after=t0, within=120)
        bk.up()
    assert watch.samples > 50, watch.samples
    # The watch saw the clients at work (so it was looking while they ran).
    assert {"mariadb-dump", "mariadb"} & watch.programs, sorted(watch.programs)
    assert not watch.found, watch.found
    record(f"process list read {watch.samples}x during healthcheck, backup, restore, restart db:"
           f" no password (saw {sorted({'mariadb-dump', 'mariadb', 'mariadbd'} & watch.programs)})")


def test_a_bad_backup_file_is_refused_and_changes_nothing(bk):
    good, _ = take_backup(bk)
    bk.compose("stop", "api")
    try:
        state = _state(bk)
        data = good.read_bytes()
        sums = good.with_name(good.name + ".sha256").read_text()

        def case(name: str, body: bytes, checksum: str | None):
            f = good.with_name(f"user_api-{name}.sql.gz")
            f.write_bytes(body)
            if checksum is not None:
                f.with_name(f.name + ".sha256").write_text(checksum)
            os.chown(f, 999, 999)
            return f

        own = lambda b: f"{hashlib.sha256(b).hexdigest()}  x\n"  # noqa: E731
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        lines = gzip.decompress(data).decode().splitlines(keepends=True)
        cut_short = gzip.compress("".join(lines[: len(lines) * 2 // 3]).encode())
        cases = {
            "corrupted": (case("corrupted", bytes(flipped), sums), "checksum mismatch"),
            "truncated": (case("truncated", data[: len(data) // 2], sums), "checksum mismatch"),
            "truncated-resummed": (case("truncated-resummed", data[: len(data) // 2],
                                        own(data[: len(data) // 2])),
                                   "not a complete gzip stream"),
            "cut-short": (case("cut-short", cut_short, own(cut_short)), "does not end with"),
            "unchecksummed": (case("unchecksummed", data, None), "no checksum file"),
        }
        for what, (f, words) in cases.items():
            r = restore(bk, f, "--force", check=False)
            assert r.returncode != 0, f"{what}: the restore succeeded"
            assert words in r.stderr and "nothing was changed" in r.stderr, f"{what}: {r.stderr}"
            assert _state(bk) == state, f"{what}: the database changed"
        # a good file, but the database holds data: --force is needed
        r = restore(bk, good, check=False)
        assert r.returncode != 0 and "not empty" in r.stderr and "--force" in r.stderr, r.stderr
        assert _state(bk) == state
        restore(bk, good, "--force")
        assert _state(bk) == state, "restoring the latest backup changed the data"
    finally:
        restart_api(bk)


def test_an_older_schema_backup_restores_and_migrates_forward(bk, record):
    """A backup from before migrations were tracked: the users table as the first migration
    makes it (no column a later one adds), its rows, no _sqlx_migrations."""
    bk.compose("stop", "api")
    first = sorted((Path(__file__).resolve().parents[2] / "migrations").glob("*.sql"))[0]
    root_sql(bk, "DROP TABLE _sqlx_migrations; RENAME TABLE users TO users_newer;\n"
                 + first.read_text()
                 + "\nINSERT INTO users (userid, username, created_at)"
                   " SELECT userid, username, created_at FROM users_newer;"
                   " DROP TABLE users_newer;")
    try:
        old, _ = take_backup(bk)
    finally:
        restart_api(bk)   # migrates again: _sqlx_migrations is back
    dump = gzip.decompress(old.read_bytes()).decode()
    assert "CREATE TABLE `users`" in dump and "_sqlx_migrations" not in dump
    assert "`version`" not in dump, "the older schema has no column of a later migration"
    old_users = e2e.all_users(bk.base_url)
    r = requests.post(bk.url("/users"), json={"userid": 777_777, "username": "newer"}, timeout=10)
    assert r.status_code == 201, r.text

    bk.compose("stop", "api")
    restore(bk, old, "--force")
    tables = set(root_sql(bk, "SHOW TABLES;").split())
    assert tables == {"users"}, f"tables after the restore of the old backup: {tables}"
    restart_api(bk)
    migrated = root_sql(bk, "SELECT version, success FROM _sqlx_migrations;").split()
    applied = sorted(int(p.name.split("_")[0]) for p in
                     (Path(__file__).resolve().parents[2] / "migrations").glob("*.sql"))
    assert migrated == [x for v in applied for x in (str(v), "1")], migrated
    assert e2e.all_users(bk.base_url) == old_users, "the old backup's users are not what it held"
    r = requests.post(bk.url("/users"), json={"userid": 777_777, "username": "newer"}, timeout=10)
    assert r.status_code == 201, f"after the migrated restore: {r.status_code} {r.text}"
    record(f"older-schema backup (no _sqlx_migrations): restored, the API applied {applied}")


# A backup written by the db image of MariaDB 10.11 (Debian bookworm's, the stand-in before the
# test bench moved to production's versions): mariadb-dump 10.11.19 with backup.sh's flags, of a
# database the API had migrated and written four users to (one with non-ASCII letters).
OLD_SERVER_DUMP = Path(__file__).resolve().parent / "fixtures" / "user_api-20261205T143151Z.sql.gz"
OLD_SERVER_USERS = {1: "Old user 1", 2: "Old user 2", 3: "Old user 3", 4: "Ünïcode ✓ 名前"}


def test_a_backup_from_mariadb_10_11_restores_into_the_running_server(bk, record):
    version = root_sql(bk, "SELECT VERSION();").strip()
    dump = gzip.decompress(OLD_SERVER_DUMP.read_bytes()).decode()
    assert "Distrib 10.11." in dump.splitlines()[1], dump.splitlines()[:2]
    for f in (OLD_SERVER_DUMP, OLD_SERVER_DUMP.with_name(OLD_SERVER_DUMP.name + ".sha256")):
        target = bk.dir / "backups" / f.name
        shutil.copyfile(f, target)
        os.chown(target, 999, 999)
    bk.compose("stop", "api")
    try:
        restore(bk, OLD_SERVER_DUMP, "--force")
    finally:
        restart_api(bk)
    assert e2e.all_users(bk.base_url) == OLD_SERVER_USERS
    r = requests.post(bk.url("/users"), json={"userid": 5, "username": "after"}, timeout=10)
    assert r.status_code == 201, r.text
    record(f"a MariaDB 10.11 backup restored into {version}: {len(OLD_SERVER_USERS)} users back")


def test_a_volume_without_the_backup_account_gets_it_at_the_next_start(bk, record):
    # as a volume initialised before this change: no account, no fingerprint file
    root_sql(bk, "DROP USER 'backup'@'%';")
    bk.exec("db", "rm", "-f", "/var/lib/mysql/.db-backup-account")
    r = backup_cmd(bk, check=False)
    assert r.returncode != 0 and "Access denied" in r.stderr, r.stderr
    assert not list((bk.dir / "backups").glob(".*partial*")), "a failed backup left a file"

    t0 = e2e.now()
    bk.compose("restart", "db")
    e2e.wait_healthy(bk, "db", after=t0, within=120)
    lines = e2e.log_lines(bk.container_id("db"), t0)
    assert e2e.first_line(lines, "backup account 'backup' ready"), "no account made at start"
    grants = root_sql(bk, "SHOW GRANTS FOR 'backup'@'%';")
    # (batch output escapes the grant's backslash: `user\\\\_api`)
    on_db = [g for g in grants.splitlines() if re.search(r"ON `user\\+_api`\.\*", g)]
    assert len(on_db) == 1, grants
    privs = set(re.match(r"GRANT (.*) ON", on_db[0]).group(1).split(", "))
    assert privs == BACKUP_GRANTS, privs
    global_grants = [g for g in grants.splitlines() if " ON *.* " in g]
    assert len(global_grants) == 1, grants
    assert set(re.match(r"GRANT (.*) ON", global_grants[0]).group(1).split(", ")) \
        == ARCHIVE_GRANTS, grants
    take_backup(bk)

    # read only: the backup account cannot write
    r = bk.compose("--profile", "backup", "run", "--rm", "-T", "--entrypoint", "bash", "backup",
                   "-c", 'mariadb --defaults-extra-file=<(printf "[client]\\nuser=backup\\n'
                   'password=%s\\nhost=db\\n" "$(cat /run/secrets/db_backup_password)") user_api '
                   '-e "DELETE FROM users"', check=False)
    assert r.returncode != 0 and "command denied" in r.stderr, r.stderr

    # once: the next start execs the server directly
    t1 = e2e.now()
    bk.compose("restart", "db")
    e2e.wait_healthy(bk, "db", after=t1, within=120)
    lines = e2e.log_lines(bk.container_id("db"), t1)
    assert not e2e.first_line(lines, "temporary server"), "the account was made again"
    bk.up()
    record("backup account: recreated at the first start of a volume without it "
           f"(grants {sorted(privs)} and {sorted(ARCHIVE_GRANTS)}); later starts skip it")


def test_retention_keeps_the_newest_by_count_and_age(bk):
    d = bk.dir / "backups"
    for f in d.glob("*.sql.gz*"):
        f.unlink()
    old = time.time() - 20 * 86400
    names = [f"user_api-2026010{i}T000000Z.sql.gz" for i in range(1, 7)]
    for i, n in enumerate(names):
        for f in (d / n, d / f"{n}.sha256"):
            f.write_text("x")
            os.chown(f, 999, 999)
            if i < 2:
                os.utime(f, (old, old))
    backup_cmd(bk, "prune", env=["BACKUP_KEEP_COUNT=3", "BACKUP_KEEP_DAYS=14"])
    left = sorted(f.name for f in d.glob("*.sql.gz"))
    assert left == names[3:], left
    assert sorted(f.name for f in d.glob("*.sha256")) == [f"{n}.sha256" for n in names[3:]]
    # age alone; the newest survives even when old
    for f in d.glob("*"):
        os.utime(f, (old, old))
    backup_cmd(bk, "prune", env=["BACKUP_KEEP_COUNT=10", "BACKUP_KEEP_DAYS=14"])
    assert sorted(f.name for f in d.glob("*.sql.gz")) == names[-1:]


def test_the_scheduler_backs_up_at_once_and_stops_cleanly(bk, record):
    d = bk.dir / "backups"
    before = set(d.glob("*.sql.gz"))
    prof = ("--profile", "backup-schedule")
    bk.compose(*prof, "up", "-d", "backup-scheduler")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not set(d.glob("*.sql.gz")) - before:
            time.sleep(0.5)
        new = set(d.glob("*.sql.gz")) - before
        assert len(new) == 1, f"the scheduler made {len(new)} backups in its first minute"
        f = new.pop()
        assert f.with_name(f.name + ".sha256").exists()
        backup_cmd(bk, "verify", f.name)
        assert bk.inspect("backup-scheduler")["State"]["Running"], "the scheduler exited"
    finally:
        t0 = time.monotonic()
        bk.compose(*prof, "stop", "backup-scheduler")
        took = time.monotonic() - t0
    state = bk.inspect("backup-scheduler")["State"]
    # Exit 0 is the contract (SIGTERM ends the wait cleanly); the time is recorded.
    assert state["ExitCode"] == 0, (state["ExitCode"], took)
    record(f"backup scheduler: stopped in {took:.1f} s, exit 0")
    # -v: the db image declares /var/lib/mysql a volume, so the scheduler's container has an
    # anonymous one; without -v it outlived the run (one stray volume per e2e run).
    bk.compose(*prof, "rm", "-f", "-v", "backup-scheduler")


def test_100k_users_backup_and_restore(bk, record):
    bk.compose("stop", "api")
    try:
        root_sql(bk, "INSERT INTO users (userid, username) SELECT 1000000 + seq, "
                     "CONCAT('bulk user n°', seq) FROM seq_1_to_100000;")
        total = int(root_sql(bk, "SELECT COUNT(*) FROM users;"))
        assert total >= BULK
        state = _state(bk)
        file, took = take_backup(bk)
        # From an emptied table: restoring identical data would pass even if restore did nothing.
        root_sql(bk, "TRUNCATE TABLE users;")
        assert _state(bk) != state
        t0 = time.monotonic()
        restore(bk, file, "--force")
        restore_took = time.monotonic() - t0
        assert _state(bk) == state, "the restored 100k database differs"
    finally:
        restart_api(bk)
    size = file.stat().st_size
    raw = len(gzip.decompress(file.read_bytes()))
    line = (f"{total} users: backup {took:.1f} s, {size / 1e6:.2f} MB gzip ({raw / 1e6:.1f} MB "
            f"SQL); restore --force {restore_took:.1f} s (each including compose run's container "
            "start)")
    record(line)  # figures, not bounds: speed is the bench's to measure
