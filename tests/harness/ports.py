"""Loopback ports: a free one, and waiting until something answers."""

import socket
import time
import urllib.error
import urllib.request


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice).

    Another process may take it before the caller binds it; callers that can
    bind port 0 themselves should do that instead.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_until(condition, within: float, what: str, alive=None, interval: float = 0.05):
    """Polls ``condition()`` until it is true; raises TimeoutError naming ``what``.

    ``alive``, when given, is polled too: once it returns false (the process
    that should answer has exited) waiting stops with RuntimeError.
    """
    deadline = time.monotonic() + within
    while True:
        if condition():
            return
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {within:.0f} s")
        time.sleep(interval)


def wait_port(port: int, within: float, what: str, alive=None):
    wait_until(lambda: port_answers(port), within, f"{what} on 127.0.0.1:{port}", alive)


def http_status(url: str, timeout: float = 2) -> int | None:
    """The status of a GET, or None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def wait_http(url: str, within: float, what: str, alive=None, status: int = 200):
    wait_until(lambda: http_status(url) == status, within, f"{what} at {url}", alive)
