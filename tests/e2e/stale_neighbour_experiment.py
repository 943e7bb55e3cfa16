"""Experiment (not a test): what a new MAC behind the same address does to the api.

    PYTHONPATH=tests python tests/e2e/stale_neighbour_experiment.py

The old podman runs lost the database for 27-53 s after `compose restart db` although MariaDB
was ready after 1 s. podman/netavark gives a container a new random MAC on every start and sends
no gratuitous ARP, so the api's ARP entry for the db's (unchanged) address still names the old
MAC. This script reproduces that on Docker: it restarts the db under writes twice, first plainly
(Docker <= 27 gives it the MAC derived from its address again: the control), then changing the
db's MAC inside its network namespace right after the restart, before MariaDB listens (what
podman did). Printed: the outage the writer saw and the api's neighbour entry for the db.

Measured on Engine 20.10.24 (kernel defaults: base_reachable_time 30 s, so REACHABLE lasts
15-45 s; delay_first_probe_time 5 s; 3 unicast probes 1 s apart): every MAC change cost 30-37 s
of 503s (6 runs: 30.6-36.9 s): REACHABLE on the old MAC for 22-28 s, DELAY 5 s, PROBE 3 s, then
the new MAC. With the MAC unchanged (the control) no request failed: the api's requests waited
out the ~1 s MariaDB needs to start.
"""

import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import e2e_support as e2e  # noqa: E402
from harness import compose, images  # noqa: E402


def netns(pid: int, *cmd: str) -> str:
    r = subprocess.run(["nsenter", "-t", str(pid), "-n", *cmd], capture_output=True, text=True,
                       check=True)
    return r.stdout


def set_mac(pid: int, mac: str):
    """A new MAC on the container's eth0 (down/up drops its routes: they are put back)."""
    routes = netns(pid, "ip", "-4", "route", "show").splitlines()
    for args in (("down",), ("address", mac), ("up",)):
        netns(pid, "ip", "link", "set", "eth0", *args)
    for route in routes:
        netns(pid, "ip", "route", "replace", *route.split())


def main():
    compose.ensure_plugin()
    images.build_stand_ins()
    with compose.Project(prefix="neigh") as p:
        p.make_secrets()
        p.up()
        net = p.inspect("db")["NetworkSettings"]["Networks"][f"{p.name}_backend"]
        address, derived = net["IPAddress"], net["MacAddress"]
        for n, mac in enumerate((None, "02:42:de:ad:be:01")):
            writer = e2e.Writer(p.base_url, 100_000 * (n + 1), f"exp{n}")
            writer.start()
            writer.wait_for_success_after(e2e.now(), 10)
            time.sleep(1)  # the api's entry for the db is fresh: REACHABLE
            t0 = e2e.now()
            p.compose("restart", "db")
            if mac:
                set_mac(p.pid("db"), mac)
            seen = []
            while e2e.now() - t0 < 90:
                entry = " ".join(netns(p.pid("api"), "ip", "-4", "neigh", "show", address)
                                 .split()[2:]) or "none"
                if not seen or seen[-1][1] != entry:
                    seen.append((e2e.now() - t0, entry))
                later = [r for r in writer.results if r.started > t0]
                if len(later) > 5 and all(r.status == 201 for r in later[-5:]) \
                        and e2e.now() - t0 > 5:
                    break
                time.sleep(0.2)
            results = [r for r in writer.stop() if r.started > t0 - 0.5]
            outage = e2e.outage(results)
            print(f"restart db, {f'MAC changed to {mac}' if mac else f'MAC kept ({derived})'}: "
                  f"outage {outage.seconds:.1f} s; {e2e.summary(results)}")
            for t, entry in seen:
                print(f"  +{t:5.1f} s  the api's entry for {address}: {entry}")


if __name__ == "__main__":
    main()
