"""Stop, down, up, down -v: clean exits, data kept by `down`, nothing left by `down -v`."""

import requests

import e2e_support as e2e
from harness import compose

SERVICES = ("db", "api", "proxy")


def test_compose_stop_exits_all_three_cleanly(stack, record):
    t0 = e2e.now()
    db_id = stack.container_id("db")
    stack.compose("stop")
    took = e2e.now() - t0
    codes = {s: stack.inspect(s)["State"]["ExitCode"] for s in SERVICES}
    record(f"compose stop: {took:.1f} s, exit codes {codes}")
    assert codes == {"db": 0, "api": 0, "proxy": 0}, \
        f"exit codes {codes}: a non-zero code is a crash or a SIGKILL after the grace period"
    lines = e2e.log_lines(db_id, t0)
    assert e2e.first_line(lines, e2e.NORMAL_SHUTDOWN) and \
        e2e.first_line(lines, e2e.SHUTDOWN_COMPLETE), "MariaDB's log shows no clean shutdown"


def test_down_then_up_keeps_every_acknowledged_write(stack, acked, record):
    stack.compose("down")
    left = stack.resources()
    assert not left["containers"], f"containers left after down: {left['containers']}"
    assert left["volumes"], "down removed the data volume"
    t0 = e2e.now()
    seconds = stack.up()
    record(f"up -d --wait after down (existing volume): {seconds:.1f} s")
    r = requests.get(stack.url("/get_user?userid=1"), timeout=10)
    assert r.status_code == 200 and r.json() == {"userid": 1, "username": "John"}, r.text
    assert requests.get(stack.url("/users/2"), timeout=10).json()["username"] == "Ada L."
    stored = e2e.all_users(stack.base_url)
    missing = {u: n for u, n in acked.items() if stored.get(u) != n}
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes missing: " \
        f"{sorted(missing.items())[:10]}"
    record(f"down + up: volume kept; seed user, REST changes and all {len(acked)} acknowledged "
           "writes of the outage tests present")
    # The stop before was clean: this start did no crash recovery.
    lines = e2e.log_lines(stack.container_id("db"), t0)
    assert e2e.first_line(lines, e2e.CRASH_RECOVERY) is None, \
        "MariaDB did crash recovery after a clean `compose stop` + `down`"


def test_down_v_leaves_no_container_network_or_volume(stack):
    stack.compose("down", "-v")
    left = stack.resources()
    assert not any(left.values()), f"left behind by down -v: {left}"
    # and by name, in case a label was lost
    for kind, cmd in (("containers", ["ps", "-a"]), ("networks", ["network", "ls"]),
                      ("volumes", ["volume", "ls"])):
        names = compose.docker(*cmd, "--format", "{{.Names}}" if kind == "containers"
                               else "{{.Name}}").stdout.split()
        assert not [n for n in names if stack.name in n], f"{kind} named {stack.name}* remain"
