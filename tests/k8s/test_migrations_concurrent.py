"""Many api replicas starting at once against one fresh database (what a
Deployment rollout or an HPA scale-up does): the migrations run exactly once,
one replica at a time, and every replica becomes ready without a restart.

The release binary (target/release/user-api, or USER_API_BIN) against a
throwaway MariaDB from tests/harness/mariadb.py.

The first test lines the replicas up: a session of its own holds FLUSH TABLES
WITH READ LOCK, so the first statement that writes (the CREATE TABLE of
`_sqlx_migrations`) blocks in every replica that got past the migration lock.
With a working server-side lock exactly one replica is blocked there and all
the others wait on the lock (state "User lock"); then the read lock is lifted
and all must come up. The second test just starts them all together. The
third pins down the server behaviour the lock depends on.
"""

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from k8s_manifests import REPO
from harness import ports, procs
from harness.mariadb import MariaDB, wait_ready

REPLICAS = 6
MIGRATIONS = sorted(int(p.name.split("_", 1)[0]) for p in (REPO / "migrations").glob("*.sql"))


def binary() -> Path:
    path = Path(os.environ.get("USER_API_BIN", REPO / "target" / "release" / "user-api"))
    if not path.is_file():
        pytest.fail(f"{path} is missing: cargo build --release first (or set USER_API_BIN)")
    return path


@pytest.fixture
def server():
    with MariaDB.start() as db:
        wait_ready(db)
        yield db


def client_session(db):
    """A mariadb client kept open: statements written to stdin, one answer line each."""
    return subprocess.Popen(
        [procs.program("mariadb"), "--no-defaults", "--protocol=tcp", "-h127.0.0.1", f"-P{db.port}",
         "-uroot", "--batch", "--skip-column-names", "--unbuffered"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


def say(session, statements):
    session.stdin.write(statements + "\n")
    session.stdin.flush()
    return session.stdout.readline().strip()


def start_replicas(db, database, workdir):
    replicas = []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROCKET_", "DATABASE_"))}
    for i in range(REPLICAS):
        port = ports.free_port()
        replica_env = {
            **env,
            "ROCKET_ADDRESS": "127.0.0.1",
            "ROCKET_PORT": str(port),
            "ROCKET_CONFIG": str(workdir / "no-Rocket.toml"),
            "DATABASE_URL": db.url(database),
        }
        log = workdir / f"replica-{i}.log"
        replicas.append((procs.spawn([binary()], log, env=replica_env, cwd=workdir), port, log))
    return replicas


def stop_all(replicas):
    for process, _, _ in replicas:
        procs.stop(process, within=10)


def logs(replicas):
    return "\n".join(f"--- replica on {port}:\n{log.read_text(errors='replace')}" for _, port, log in replicas)


def wait_all_ready(replicas, within=60):
    deadline = time.monotonic() + within
    pending = list(replicas)
    while pending:
        for r in list(pending):
            process, port, _ = r
            if process.poll() is not None:
                raise AssertionError(f"a replica exited with {process.returncode} "
                                     f"(on Kubernetes: a restart):\n{logs(replicas)}")
            if ports.http_status(f"http://127.0.0.1:{port}/readyz") == 200:
                pending.remove(r)
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} replicas not ready after {within} s:\n{logs(replicas)}")
        time.sleep(0.1)


def check_migrated_once(db, database, replicas):
    rows = db.sql("SELECT version, success FROM _sqlx_migrations ORDER BY version", database)
    applied = [tuple(int(x) for x in line.split("\t")) for line in rows.splitlines()]
    assert applied == [(v, 1) for v in MIGRATIONS], applied
    # The users table works, written through one replica and read through another.
    _, first, _ = replicas[0]
    _, last, _ = replicas[-1]
    body = json.dumps({"userid": 7, "username": "Ada"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{first}/users", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 201
    with urllib.request.urlopen(f"http://127.0.0.1:{last}/users/7", timeout=5) as r:
        assert json.load(r) == {"userid": 7, "username": "Ada"}
    assert db.sql("SELECT COUNT(*) FROM users", database).strip() == "1"


# Where a blocked replica's session waits: on the migration lock, or past it, at the read lock
# (MariaDB implements FLUSH TABLES WITH READ LOCK as its backup lock; MySQL's name is the other).
AT_THE_LOCK = "User lock"
PAST_THE_LOCK = ("Waiting for backup lock", "Waiting for global read lock")


def blocked(db):
    rows = db.sql("SELECT STATE FROM information_schema.PROCESSLIST WHERE STATE IN "
                  f"('{AT_THE_LOCK}', '{PAST_THE_LOCK[0]}', '{PAST_THE_LOCK[1]}')")
    return rows.splitlines()


def test_replicas_take_turns_at_the_migrations(server):
    database = "k8s_migrate_lined_up"
    server.create_database(database)
    holder = client_session(server)
    with tempfile.TemporaryDirectory(prefix="user-api-k8s-migrate-") as tmp:
        replicas = []
        try:
            assert say(holder, "FLUSH TABLES WITH READ LOCK; SELECT 'locked';") == "locked"
            replicas = start_replicas(server, database, Path(tmp))
            # Every replica reaches the migrations and waits inside the server.
            ports.wait_until(lambda: len(blocked(server)) == REPLICAS, 30,
                             f"{REPLICAS} replicas waiting in the server",
                             alive=lambda: all(p.poll() is None for p, _, _ in replicas))
            time.sleep(1)
            states = blocked(server)
            inside = sum(states.count(s) for s in PAST_THE_LOCK)
            assert inside == 1 and states.count(AT_THE_LOCK) == REPLICAS - 1, (
                f"{inside} of {REPLICAS} replicas are inside the migrations at once "
                f"(their sessions' states: {states}): the migration lock does not serialise them")
            assert all(ports.http_status(f"http://127.0.0.1:{port}/readyz") is None for _, port, _ in replicas)

            assert say(holder, "UNLOCK TABLES; SELECT 'unlocked';") == "unlocked"
            wait_all_ready(replicas)
            check_migrated_once(server, database, replicas)
        finally:
            holder.stdin.close()
            holder.wait(10)
            stop_all(replicas)
        # Graceful stop: every replica exits 0 on SIGTERM, as the kubelet sends it.
        assert [p.returncode for p, _, _ in replicas] == [0] * REPLICAS, logs(replicas)


def test_replicas_started_together_migrate_once(server):
    database = "k8s_migrate_race"
    server.create_database(database)
    with tempfile.TemporaryDirectory(prefix="user-api-k8s-migrate-") as tmp:
        replicas = start_replicas(server, database, Path(tmp))
        try:
            wait_all_ready(replicas)
            check_migrated_once(server, database, replicas)
        finally:
            stop_all(replicas)
        assert [p.returncode for p, _, _ in replicas] == [0] * REPLICAS, logs(replicas)


def test_get_lock_waits_only_with_a_positive_timeout(server):
    """What the lock rests on. MySQL waits forever for GET_LOCK(name, -1);
    MariaDB (10.11 and 11.8 alike) answers NULL at once instead, so a migrator that
    sends -1 and ignores the answer (sqlx-mysql 0.7's does) is not locked at
    all on MariaDB. A positive timeout waits and answers 0 on expiry."""
    holder = client_session(server)
    try:
        assert say(holder, "SELECT GET_LOCK('k8s-test', 10);") == "1"
        started = time.monotonic()
        assert server.sql("SELECT GET_LOCK('k8s-test', -1)").strip() == "NULL"
        assert time.monotonic() - started < 1
        started = time.monotonic()
        assert server.sql("SELECT GET_LOCK('k8s-test', 1)").strip() == "0"
        assert time.monotonic() - started >= 0.9
    finally:
        holder.stdin.close()
        holder.wait(10)
