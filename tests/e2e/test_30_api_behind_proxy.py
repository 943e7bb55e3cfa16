"""The api restarted and recreated while the proxy keeps running, untouched.

nginx resolves `api` once, at start; compose pins the api's address on the edge network, so a
recreated api comes back where the proxy expects it. The engine has to keep the proxy's ARP
entry right as well: Docker <= 27 derives the MAC from the address (the same address gives the
same MAC), Docker 28 sends gratuitous ARP. Measured here and printed, not assumed.
"""

import shutil
import subprocess
import time

import requests

import e2e_support as e2e

PROBE = "/get_user?userid=1"


def _proxy_identity(stack):
    state = stack.inspect("proxy")
    return state["Id"], state["State"]["StartedAt"]


def _seconds_to_200(stack, within: float) -> float:
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < within:
        try:
            last = requests.get(stack.url(PROBE), timeout=2).status_code
            if last == 200:
                return time.monotonic() - t0
        except requests.RequestException as e:
            last = type(e).__name__
        time.sleep(0.1)
    raise AssertionError(f"no 200 for GET {PROBE} through the proxy within {within:.0f} s "
                         f"(last: {last})")


def _api_edge(stack):
    net = stack.inspect("api")["NetworkSettings"]["Networks"][f"{stack.name}_edge"]
    return net["IPAddress"], net["MacAddress"]


def _proxy_neighbour(stack, address: str) -> str:
    """The proxy's ARP entry for ``address``, read in its network namespace."""
    if not shutil.which("nsenter") or not shutil.which("ip"):
        return "n/a (no nsenter/ip)"
    r = subprocess.run(["nsenter", "-t", str(stack.pid("proxy")), "-n", "ip", "-4", "neigh",
                        "show", address], capture_output=True, text=True)
    return " ".join(r.stdout.split()) or "none"


def test_the_api_restarted_is_served_again_by_the_untouched_proxy(stack, record):
    proxy = _proxy_identity(stack)
    stack.compose("restart", "api")
    took = _seconds_to_200(stack, 10)
    assert _proxy_identity(stack) == proxy, "the proxy was restarted or replaced"
    record(f"api restart: 200 through the proxy {took:.2f} s after `compose restart api` returned")


def test_the_api_recreated_three_times_is_served_again_by_the_untouched_proxy(stack, record):
    proxy = _proxy_identity(stack)
    rounds = []
    for n in (1, 2, 3):
        # Right after a request: the proxy's ARP entry for the api is fresh (REACHABLE), which
        # is what a new MAC behind the same address would break.
        requests.get(stack.url(PROBE), timeout=5)
        address, mac_before = _api_edge(stack)
        old = stack.container_id("api")
        stack.compose("up", "-d", "--force-recreate", "--no-deps", "api")
        new = stack.container_id("api")
        assert new != old, f"round {n}: the api was not recreated"
        took = _seconds_to_200(stack, 10)
        address_after, mac_after = _api_edge(stack)
        assert address_after == address == stack.env["API_ADDR"], \
            f"round {n}: the api moved from {address} to {address_after}"
        rounds.append(f"{took:.2f} s (MAC {mac_before} -> {mac_after}; proxy's entry: "
                      f"{_proxy_neighbour(stack, address)})")
    assert _proxy_identity(stack) == proxy, "the proxy was restarted or replaced"
    e2e.wait_healthy(stack, "api", after=0, within=30)
    record("api recreated 3x at " + stack.env["API_ADDR"] + ": 200 through the untouched proxy "
           "after " + "; ".join(rounds))
