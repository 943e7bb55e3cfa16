"""The real ``user-api`` binary as a process on a free loopback port."""

import os
import signal
import subprocess
import tempfile
from pathlib import Path

from . import ports, procs


def binary() -> Path:
    """USER_API_BIN, else the release build (``cargo build --release``)."""
    configured = os.environ.get("USER_API_BIN")
    target = Path(os.environ.get("CARGO_TARGET_DIR", procs.REPO / "target"))
    path = Path(configured) if configured else target / "release" / "user-api"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: build it first (cargo build --release) or set USER_API_BIN")
    return path.resolve()


class Api:
    def __init__(self, database_url: str, env=None, bin_path=None, cwd=None, within: float = 60):
        self.port = ports.free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="user-api-api-"))
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("ROCKET_", "DATABASE_"))}
        clean.update(
            ROCKET_ADDRESS="127.0.0.1",
            ROCKET_PORT=str(self.port),
            DATABASE_URL=database_url,
            **(env or {}),
        )
        # By default its working directory has no Rocket.toml: the built-in
        # defaults apply, as in the image.
        self.process = procs.spawn([bin_path or binary()], self.dir / "api.log", env=clean, cwd=cwd or self.dir)
        try:
            ports.wait_http(self.url("/readyz"), within, "user-api", alive=self.running)
        except (TimeoutError, RuntimeError) as e:
            log = self.log()
            self.close()
            raise RuntimeError(f"{e}; its log:\n{log}") from None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.dir / "api.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> int | None:
        code = procs.stop(self.process, signal.SIGTERM, within=15)
        subprocess.run(["rm", "-rf", str(self.dir)], check=False)
        return code

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
