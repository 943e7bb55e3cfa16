"""Self-signed certificates for the tests, one home for the openssl call: the proxy's TLS and
preflight tests, the monitoring stack's HTTPS, the e2e's expired certificate and pebble's own
endpoint all make theirs here.

Every certificate is ECDSA P-256 with an unencrypted key. Dates: ``days`` from now (any
OpenSSL), or explicit ``not_before``/``not_after`` (``-not_before``/``-not_after``: OpenSSL 3.4+,
which the servers' forky root has; bookworm's 3.0 lacks them), to make one expired or not yet
valid.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta
from pathlib import Path

from . import procs


def _stamp(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%SZ")


def self_signed(cert: Path, key: Path, subject: str, *, days: int | None = None,
                not_after: datetime | None = None, not_before: datetime | None = None,
                san: str | None = None) -> tuple[Path, Path]:
    """Writes ``cert`` and ``key`` for CN=``subject`` (``san``: a subjectAltName value such as
    ``DNS:pebble,IP:127.0.0.1``); valid ``days`` from now, or from ``not_before`` (default: 90
    days before) to ``not_after``. Returns (cert, key)."""
    if (days is None) == (not_after is None):
        raise ValueError("give either days or not_after")
    if days is not None:
        validity = ["-days", str(days)]
    else:
        start = not_before or not_after - timedelta(days=90)
        validity = ["-not_before", _stamp(start), "-not_after", _stamp(not_after)]
    Path(cert).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [procs.program("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-noenc", "-subj", f"/CN={subject}", *validity,
         *(["-addext", f"subjectAltName={san}"] if san else []),
         "-keyout", key, "-out", cert],
        check=True, capture_output=True)
    return Path(cert), Path(key)
