"""testssl.sh (production's: the forky root's 3.2, or PATH's) over one HTTPS URL, and the judgement
every suite applies to its report: tests/tls scans the shipped config on a local nginx,
tests/e2e the port compose publishes.

    findings = testssl.scan("https://localhost:8443/get_user?userid=7", ca_file, workdir)
    assert not testssl.serious(findings)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from . import procs, toolchain

# The one finding about where the local certificate comes from, not about the server: a local CA
# whose key is destroyed (nix/local-tls.sh) can publish no revocation list, and testssl.sh rates
# "Neither CRL nor OCSP URI provided" HIGH. Named, so that any other finding fails.
NOT_THE_SERVERS = {("cert_revocation", "Neither CRL nor OCSP URI provided")}


class ScanError(RuntimeError):
    """testssl.sh wrote no report, or reported that it could not scan."""


def scan(url: str, ca_file: Path, workdir: Path, ip: str = "127.0.0.1") -> list[dict]:
    """Every finding of testssl.sh's JSON report for ``url``, connecting to ``ip`` and trusting
    ``ca_file`` besides the system's roots."""
    report = workdir / "testssl.json"
    report.unlink(missing_ok=True)
    # From the forky root, testssl.sh must run the root's own OpenSSL: PATH's first `openssl` is
    # the harness's wrapper for the host, which cannot start from inside the root.
    in_root = ["--openssl", "/usr/bin/openssl"] if toolchain.mode() == "forky" else []
    run = subprocess.run(
        [procs.program("testssl"), *in_root, "--quiet", "--warnings", "off", "--color", "0",
         "--add-ca", ca_file, "--ip", ip, "--jsonfile", report, url],
        capture_output=True, text=True, timeout=600)
    if not report.exists():
        raise ScanError(run.stdout[-3000:] + run.stderr[-2000:])
    findings = json.loads(report.read_text())
    problems = [f for f in findings if f["id"] == "scanProblem"]
    if problems:
        raise ScanError(f"{problems}\n{run.stdout[-3000:]}")
    return findings


def serious(findings: list[dict]) -> list[dict]:
    """Findings of medium severity or above, but the local CA's (:data:`NOT_THE_SERVERS`)."""
    return [f for f in findings if f.get("severity") in ("MEDIUM", "HIGH", "CRITICAL")
            and (f["id"], f["finding"]) not in NOT_THE_SERVERS]


def protocols(findings: list[dict]) -> dict[str, str]:
    """What testssl.sh says of each protocol: SSLv2 ... TLS1_3 -> "offered" / "not offered..."."""
    offered = {f["id"]: f["finding"] for f in findings}
    return {p: offered[p] for p in ("SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3")}
