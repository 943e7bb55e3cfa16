"""The proxy image's entrypoint, src/bin/proxy-preflight.rs (the release build), in front of
production's nginx with the shipped config and TLS listener: nginx never looks at a
certificate's dates, the preflight refuses an expired or not yet valid one with one line and
otherwise becomes nginx. tests/e2e checks the same in the image, with compose's secrets.
"""

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from harness import nginx, ports
from test_tls import REPO, certificate

PREFLIGHT = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "proxy-preflight"


def check_with(directory: Path, wrapper):
    files = {"tls.conf": nginx.tls_conf(ports.free_port(), directory / "tls_cert.pem", directory / "tls_key.pem")}
    return nginx.check(files, wrapper=wrapper)


def test_an_expired_or_not_yet_valid_certificate_stops_it_with_one_line(tmp_path):
    now = datetime.now(timezone.utc)
    cases = {
        "expired": (now - timedelta(days=1), None, "the certificate expired on"),
        "future": (now + timedelta(days=400), now + timedelta(days=1), "the certificate is not valid before"),
    }
    for name, (not_after, not_before, says) in cases.items():
        certificate(tmp_path / name, "localhost", not_after, not_before)
        # nginx alone starts with it: it does not read dates.
        assert check_with(tmp_path / name, ()).returncode == 0
        run = check_with(tmp_path / name, [PREFLIGHT])
        assert run.returncode == 1, run.stderr
        (line,) = run.stderr.strip().splitlines()
        assert line.startswith(f"proxy: {tmp_path / name / 'tls_cert.pem'}: {says} "), line
        assert line.endswith("; nginx is not started"), line


def test_a_valid_certificate_passes_and_nginx_runs(tmp_path):
    certificate(tmp_path, "localhost", datetime.now(timezone.utc) + timedelta(days=30))
    run = check_with(tmp_path, [PREFLIGHT])
    assert run.returncode == 0, run.stderr
    assert "syntax is ok" in run.stderr and "proxy:" not in run.stderr


def test_files_it_cannot_read_are_left_to_nginx_s_own_error(tmp_path):
    (tmp_path / "tls_cert.pem").write_text("not a certificate\n")
    run = check_with(tmp_path, [PREFLIGHT])
    assert run.returncode == 1
    assert "proxy:" not in run.stderr and "[emerg]" in run.stderr and "cannot load certificate" in run.stderr
