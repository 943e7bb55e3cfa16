"""The api restarted and recreated while the proxy keeps running, untouched.

nginx follows the name `api` (`server api:8000 resolve`, re-resolved every 2 s), so a recreated
api is served wherever it comes back. Measured here and printed, not assumed.
"""

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


def test_the_api_restarted_is_served_again_by_the_untouched_proxy(stack, record):
    proxy = _proxy_identity(stack)
    stack.compose("restart", "api")
    took = _seconds_to_200(stack, 10)
    assert _proxy_identity(stack) == proxy, "the proxy was restarted or replaced"
    record(f"api restart: 200 through the proxy {took:.2f} s after `compose restart api` returned")


def test_the_api_recreated_three_times_is_served_again_by_the_untouched_proxy(stack, record):
    """A recreated api comes back at whatever address the engine gives it; the proxy follows the
    name (`server api:8000 resolve`), without a restart or a reload."""
    proxy = _proxy_identity(stack)
    rounds = []
    for n in (1, 2, 3):
        requests.get(stack.url(PROBE), timeout=5)
        address, mac_before = _api_edge(stack)
        old = stack.container_id("api")
        stack.compose("up", "-d", "--force-recreate", "--no-deps", "api")
        new = stack.container_id("api")
        assert new != old, f"round {n}: the api was not recreated"
        took = _seconds_to_200(stack, 30)
        address_after, mac_after = _api_edge(stack)
        rounds.append(f"{took:.2f} s ({address} -> {address_after}, MAC {mac_before} -> {mac_after})")
    assert _proxy_identity(stack) == proxy, "the proxy was restarted or replaced"
    e2e.wait_healthy(stack, "api", after=0, within=30)
    record("api recreated 3x: 200 through the untouched proxy after " + "; ".join(rounds))
