"""Point-in-time recovery (issue 29) with the compose services `binlog-archiver` and `recover`.

- writers through the proxy and two-table transfers; a backup; more writes (the binary log
  switched to new files twice); the db container killed and its volume removed mid-write;
  `recover` from the backup plus the archive: every write acknowledged more than a moment before
  the loss is back, the lost ones are counted, no transfer is half there;
- `recover --until` a recorded second: exactly the writes acknowledged before it; the same
  moment as `--until FILE:POS` (the backup picked by its timeline): the same writes;
- a gap in the archive (a file missing, a file of another timeline or of another server in its
  place), a backup whose timeline has no archive, a time that is not one: refused, the file
  named, nothing changed;
- retention: archived files go once a later backup covers them.
"""

from __future__ import annotations

import datetime
import gzip
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import e2e_support as e2e
from harness.mariadb import MariaDB
from test_60_backup import Transfers, take_backup

root_sql = e2e.root_sql

# What the documentation states as the recovery point of the archive (db/BACKUP.md): a write
# acknowledged longer ago than this before the volume died is never lost.
RECOVERY_POINT_SECONDS = 1.0


@pytest.fixture(scope="module")
def pitr(project):
    """The session's project, up, with ./backups writable by uid 999 and the archiver running."""
    e2e.backups_dir(project)
    project.up()
    start_archiver(project)
    yield project
    # the next modules get the stack as the others leave it: no ledger, no archiver
    project.compose("--profile", "backup-schedule", "rm", "-s", "-f", "-v", "binlog-archiver")
    project.up()
    root_sql(project, "DROP TABLE IF EXISTS a_ledger, z_ledger, m_filler;")


def start_archiver(p):
    """Up and healthy: streaming, its metrics written (`db-backup archive-health`)."""
    p.up("binlog-archiver", profiles=("backup-schedule",), timeout=90)


def archive(p) -> Path:
    return p.dir / "backups" / "binlog"


def archived(p, timeline: str | None = None) -> list[Path]:
    return sorted(f for f in archive(p).glob("binlog-*.[0-9]*")
                  if timeline is None or f.name.startswith(timeline + "."))


def server_binlog(p) -> tuple[str, int]:
    """The file the server writes now and its size."""
    name, pos = root_sql(p, "SHOW MASTER STATUS;").split()[:2]
    return name, int(pos)


def wait_archived(p, within: float = 20):
    """Until the archive holds the server's current file up to its current size."""
    name, pos = server_binlog(p)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        f = archive(p) / name
        if f.exists() and f.stat().st_size >= pos:
            return
        time.sleep(0.2)
    pytest.fail(f"the archive did not reach {name}:{pos} in {within} s:\n"
                + p.logs("binlog-archiver", tail="20"))


def recover(p, *args, check=True):
    return p.compose("--profile", "backup", "run", "--rm", "-T", "recover", *args,
                     check=check, timeout=600)


def lose_the_volume(p):
    """The db container killed (SIGKILL, no shutdown) and its volume removed."""
    p.compose("kill", "-s", "SIGKILL", "db")
    p.compose("rm", "-f", "db")
    volume = f"{p.name}_db-data"
    e2e_volume_rm(volume)


def e2e_volume_rm(volume: str):
    r = subprocess.run(["docker", "volume", "rm", volume], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def after_recovery(p):
    """The stack up again; the archiver, which kept running, streams again by itself."""
    t0 = e2e.now()
    p.compose("up", "-d", "--wait", "--wait-timeout", "180", timeout=240)
    e2e.wait_healthy(p, "binlog-archiver", after=t0, within=90)


def utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


class AbandonedTransfers(Transfers):
    """Transfers whose session dies with the db: the pipe breaks, and stopping does not ask for
    a clean exit."""

    def _run(self):
        try:
            super()._run()
        except BrokenPipeError:
            pass

    def abandon(self):
        self._halt.set()
        self._thread.join(10)
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(60)


STATE = {}


def test_volume_loss_loses_at_most_the_last_moment(pitr, record):
    transfers = AbandonedTransfers(pitr)
    # ids 700,000-799,999: this module's (test_60 leaves 1,000,001 on)
    writer = e2e.Writer(pitr.base_url, 700_000, "pitr")
    writer.start()
    try:
        assert writer.wait_for_success_after(e2e.now(), 10), "no 201 before the backup"
        backup, _ = take_backup(pitr)
        STATE["backup"] = backup
        # the backup records where in the binary log its snapshot is
        head = gzip.decompress(backup.read_bytes()).decode().splitlines()[:40]
        assert head[0] == "-- db-backup: server_id=1", head[:3]
        assert any(re.match(r"-- CHANGE MASTER TO MASTER_LOG_FILE='binlog-\d{8}-[0-9a-f]{6}\.\d{6}', "
                            r"MASTER_LOG_POS=\d+;", line) for line in head), "\n".join(head)
        # more files than one after the backup: the chain is followed across switches
        for _ in range(2):
            time.sleep(1.5)
            root_sql(pitr, "FLUSH BINARY LOGS;")
        time.sleep(1.5)
        # the mark for --until: no write in flight across it
        writer_b_first = writer.next_id + 10_000
        results_a = writer.stop()
        mark = int(e2e.now()) + 2
        time.sleep(max(0.0, mark - e2e.now()) + 0.2)
        STATE["mark"], STATE["before_mark"] = mark, {r.userid for r in results_a if r.status == 201}
        # the same moment as a position: the log's end now (the transfers go on; no user write)
        log_file, log_pos = root_sql(pitr, "SHOW MASTER STATUS;").split()[:2]
        STATE["mark_position"] = f"{log_file}:{log_pos}"
        writer = e2e.Writer(pitr.base_url, writer_b_first, "pitr-b")
        writer.start()
        assert writer.wait_for_success_after(e2e.now(), 10)
        time.sleep(3)
        wait_archived(pitr)
        t_loss = e2e.now()
        lose_the_volume(pitr)
        time.sleep(1)
    finally:
        results_b = writer.stop()
        transfers.abandon()
    results = results_a + results_b
    acked = {r.userid: (r.username, r.ended) for r in results if r.status == 201}
    STATE["after_mark"] = {r.userid for r in results_b if r.status == 201}
    assert STATE["after_mark"], "no write acknowledged after the mark"
    tl_before = {f.name.rsplit(".", 1)[0] for f in archived(pitr)}
    assert len(archived(pitr)) >= 3, [f.name for f in archived(pitr)]

    pitr.compose("stop", "api")
    t0 = time.monotonic()
    r = recover(pitr)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert "transaction(s) to replay" in out and "new timeline" in out, out
    after_recovery(pitr)

    stored = e2e.all_users(pitr.base_url)
    lost = {u: v for u, v in acked.items() if stored.get(u) != v[0]}
    too_old = {u: v for u, v in lost.items() if v[1] < t_loss - RECOVERY_POINT_SECONDS}
    assert not too_old, f"{len(too_old)} writes acknowledged more than " \
        f"{RECOVERY_POINT_SECONDS} s before the loss are gone: {sorted(too_old)[:10]}"
    broken, moved = Transfers.broken_pairs(pitr)
    assert broken == 0, f"{broken} ledger pairs hold half a transfer"
    assert 0 < moved <= transfers.sent, (moved, transfers.sent)
    # what the server had committed and the API had not acknowledged yet may be there too
    ours = {u for u in stored if 700_000 <= u < 800_000}
    unacked_present = ours - set(acked)
    assert len(unacked_present) <= 2, sorted(unacked_present)
    # the recovered database is the first backup of a new timeline
    new_timeline = server_binlog(pitr)[0].rsplit(".", 1)[0]
    assert new_timeline not in tl_before, new_timeline
    STATE["timelines"] = tl_before
    record(f"volume loss under writes: {len(acked)} writes acknowledged, {len(lost)} lost "
           f"(acknowledged within {RECOVERY_POINT_SECONDS} s of the loss; the stated recovery "
           f"point), {len(unacked_present)} committed but not acknowledged kept; "
           f"{transfers.sent} transfers sent, {moved} recovered, none half; archive: "
           f"{len(archived(pitr))} files; recover took {took:.1f} s (with the dump of the new "
           f"timeline); {e2e.summary(results)}")


def test_recover_until_a_time_gives_exactly_the_writes_before_it(pitr, record):
    if "mark" not in STATE:
        pytest.skip("needs the volume-loss test's archive")
    mark = STATE["mark"]
    pitr.compose("stop", "api")
    # the db still running on its volume: refused
    r = recover(pitr, "--force", "--until", utc(mark), check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "is running: stop it first" in out and "nothing was changed" in out, out
    pitr.compose("stop", "db")
    r = recover(pitr, "--until", utc(mark), check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "--force replaces it" in out, out
    r = recover(pitr, "--force", "--until", utc(mark))
    out = r.stdout + r.stderr
    assert STATE["backup"].name in out, out
    after_recovery(pitr)
    stored = set(e2e.all_users(pitr.base_url))
    missing = STATE["before_mark"] - stored
    extra = STATE["after_mark"] & stored
    assert not missing, f"{len(missing)} writes acknowledged before {utc(mark)} missing"
    assert not extra, f"{len(extra)} writes acknowledged after {utc(mark)} present"
    broken, _ = Transfers.broken_pairs(pitr)
    assert broken == 0
    # The same moment as FILE:POS: recover picks the backup of that position's timeline (the
    # newest backup is now the recovered timeline's first, which that position is not in).
    position = STATE["mark_position"]
    pitr.compose("stop", "api", "db")
    r = recover(pitr, "--force", "--until", position)
    out = r.stdout + r.stderr
    assert STATE["backup"].name in out and f"up to {position}" in out, out
    after_recovery(pitr)
    stored_by_position = set(e2e.all_users(pitr.base_url))
    assert {u for u in stored_by_position if 700_000 <= u < 800_000} == \
        {u for u in stored if 700_000 <= u < 800_000}, "--until FILE:POS and --until its time differ"
    assert Transfers.broken_pairs(pitr)[0] == 0
    record(f"recover --until {utc(mark)}: {len(STATE['before_mark'])} writes before it all "
           f"there, none of the {len(STATE['after_mark'])} after it; --until {position}: the same")


def binlog_of_another_server(name: str, directory: Path) -> Path:
    """A binary-log file named ``name``, written by another server (server id 7): a MariaDB of
    the harness with the same log name, switched to new files until that one exists."""
    base, number = name.rsplit(".", 1)
    with MariaDB.start(extra_args=[f"--log-bin={base}", "--server-id=7", "--binlog-format=ROW"]) as other:
        for _ in range(int(number) - 1):
            other.sql("FLUSH BINARY LOGS;")
        other.sql("CREATE DATABASE elsewhere;")
        made = directory / name
        shutil.copyfile(other.dir / "data" / name, made)
    return made


def refused(p, *args) -> str:
    r = recover(p, *args, check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "nothing was changed" in out, out
    return out


def test_a_gap_or_a_foreign_archive_is_refused_and_changes_nothing(pitr, tmp_path):
    if "timelines" not in STATE:
        pytest.skip("needs the volume-loss test's archive")
    files = [f for tl in sorted(STATE["timelines"]) for f in archived(pitr, tl)]
    chain = [f for f in files if f.name.startswith(files[0].name.rsplit(".", 1)[0])]
    assert len(chain) >= 3, chain
    middle = chain[1]
    foreign = binlog_of_another_server(middle.name, tmp_path)
    state = root_sql(pitr, "CHECKSUM TABLE users;")
    current = server_binlog(pitr)[0].rsplit(".", 1)[0]
    pitr.compose("stop", "api", "db")
    aside = tmp_path / "aside"
    until = utc(STATE["mark"])
    try:
        shutil.move(middle, aside)
        out = refused(pitr, "--force", "--until", until)
        assert "gap" in out and middle.name in out, out
        # a file of another timeline under the missing name: it does not continue the chain
        other = sorted(set(archived(pitr)) - set(chain))[0]
        shutil.copy2(other, middle)
        assert middle.name in refused(pitr, "--force", "--until", until)
        # a file of another server under that name
        shutil.copy2(foreign, middle)
        os.chown(middle, 999, 999)
        out = refused(pitr, "--force", "--until", until)
        assert "server id 7" in out and "another server" in out, out
    finally:
        middle.unlink(missing_ok=True)
        shutil.move(aside, middle)
    # the newest backup (the last recovery's) without its timeline's archive
    hidden = archived(pitr, current)
    for f in hidden:
        shutil.move(f, tmp_path / f.name)
    try:
        out = refused(pitr, "--force")
        assert f"no archived binary log of this backup's timeline ({current})" in out, out
    finally:
        for f in hidden:
            shutil.move(tmp_path / f.name, f)
    # bad input: not a time
    assert "not a time" in refused(pitr, "--until", "yesterday")
    after_recovery(pitr)
    assert root_sql(pitr, "CHECKSUM TABLE users;") == state


def test_retention_keeps_the_archive_a_kept_backup_needs(pitr):
    first, _ = take_backup(pitr)
    root_sql(pitr, "FLUSH BINARY LOGS;")
    wait_archived(pitr)
    time.sleep(1.1)
    second, _ = take_backup(pitr)
    timeline = server_binlog(pitr)[0].rsplit(".", 1)[0]
    before = archived(pitr, timeline)
    assert len(before) >= 2
    pitr.compose("--profile", "backup", "run", "--rm", "-T", "-e", "BACKUP_KEEP_COUNT=1",
                 "backup", "prune")
    after = archived(pitr, timeline)
    assert not first.exists() and second.exists()
    # kept: the files from the kept backup's position on (as its dump records it); older ones of
    # its timeline and every file of the other timelines go
    head = gzip.decompress(second.read_bytes()).decode().splitlines()[:40]
    (start,) = [m.group(1) for line in head
                if (m := re.match(r"-- CHANGE MASTER TO MASTER_LOG_FILE='([^']+)'", line))]
    assert after == [f for f in before if f.name >= start], ([f.name for f in before], start,
                                                               [f.name for f in after])
    assert len(after) < len(before), "nothing was deleted"
    assert all(f.name.startswith(timeline) for f in archived(pitr))
