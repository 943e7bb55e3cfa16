"""Child processes that never outlive the test run that started them."""

import ctypes
import os
import shutil
import signal
import subprocess
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

REPO = Path(__file__).resolve().parents[2]


def _die_with_parent():
    # The kernel sends SIGKILL to the child when this process ends, even by
    # SIGKILL, where no atexit handler or finally block runs.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv, log_path=None, env=None, cwd=None, stdout=None) -> subprocess.Popen:
    """Starts ``argv`` with stdin closed and output to ``log_path`` (appended)."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else out,
            stderr=out,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )
    finally:
        if log_path:
            out.close()


def stop(process: subprocess.Popen, sig=signal.SIGTERM, within: float = 30) -> int | None:
    """Sends ``sig`` and waits; SIGKILL after ``within`` seconds. The exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(within)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def program(name: str) -> str:
    """A server program by name: the forky root's when that is in use
    (``toolchain``), else PATH, then the sbin directories a non-root PATH
    often lacks (Debian installs mariadbd and nginx there)."""
    from . import toolchain

    wrapped = toolchain.wrapper(name)
    if wrapped:
        return wrapped
    path = os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin:/sbin"
    found = shutil.which(name, path=path)
    if not found:
        raise FileNotFoundError(f"{name} is not installed (Debian: apt-get install mariadb-server mariadb-client nginx)")
    return found


def prefix(name: str) -> str:
    """The installation prefix of a program (`<prefix>/bin/<name>` or `<prefix>/sbin/<name>`), as
    the program itself sees it: /usr inside the forky root, the store path of a Nix package."""
    from . import toolchain

    if toolchain.wrapper(name):
        return "/usr"
    return str(Path(os.path.realpath(program(name))).parents[1])


def running_as_root() -> bool:
    return os.geteuid() == 0
