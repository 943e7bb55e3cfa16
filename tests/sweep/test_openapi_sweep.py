"""Bad-input sweep generated from the OpenAPI document: schemathesis against
the release binary on a throwaway MariaDB, directly and through nginx with
the shipped config.

Checks: all of schemathesis' (no 5xx; every status, content type, header and
body as documented; invalid input rejected, valid input accepted; a deleted
user is gone) except ``unsupported_method``: Rocket answers a method it does
not know at all (e.g. QUERY) 400, where that check wants 405. Bounded:
SWEEP_MAX_EXAMPLES cases per operation (default 200 direct, a quarter of
that through nginx), a fixed seed (SWEEP_SEED), a 10 s per-request timeout
and SWEEP_TIMEOUT (170 s) for a whole run. SWEEP_SCHEMA=file tries an edited
document against the real API.
"""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.api import Api
from harness.mariadb import MariaDB
from harness.nginx import Nginx

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
MAX_EXAMPLES = int(os.environ.get("SWEEP_MAX_EXAMPLES", "200"))


@pytest.fixture(scope="module")
def api():
    with MariaDB.start() as db:
        url = db.create_database("sweep")
        with Api(url, env={"ROCKET_ACCESS_LOG": "false"}) as api:
            # Some users to find, rename and delete (ids the generator likes).
            db.sql(
                "INSERT INTO users (userid, username) VALUES "
                "(1,'one'),(2,'two'),(3,'three'),(2147483647,'max')",
                database="sweep",
            )
            yield api


def documented_operations() -> list[str]:
    """"METHOD /path" of every operation src/openapi.json documents, but the document's own:
    schemathesis leaves out the operation that serves the document it loaded (10 of 11 here;
    tests/api/openapi.rs checks that one)."""
    document = json.loads((Path(__file__).resolve().parents[2] / "src" / "openapi.json").read_text())
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return [f"{m.upper()} {path}" for path, item in document["paths"].items() for m in item
            if m in methods and path != "/openapi.json"]


def sweep(target: str, max_examples: int, tmp_path: Path):
    if not SCHEMATHESIS.exists():
        pytest.fail(f"{SCHEMATHESIS} missing: install tests/requirements.txt into this venv")
    location = [f"{target}/openapi.json"]
    if os.environ.get("SWEEP_SCHEMA"):
        location = [str(Path(os.environ["SWEEP_SCHEMA"]).resolve()), "--url", target]
    report = tmp_path / "junit.xml"
    run = subprocess.run(
        [
            SCHEMATHESIS,
            "--config-file", Path(__file__).with_name("schemathesis.toml"),
            "run",
            *location,
            "--checks", os.environ.get("SWEEP_CHECKS", "all"),
            "--exclude-checks", os.environ.get("SWEEP_EXCLUDE_CHECKS", "unsupported_method"),
            "--max-examples", str(max_examples),
            "--seed", os.environ.get("SWEEP_SEED", "20261128"),
            "--workers", "1",
            "--request-timeout", "10",
            "--no-color",
            "--report", "junit",
            "--report-junit-path", report,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=int(os.environ.get("SWEEP_TIMEOUT", "170")),
    )
    cases = list(ET.parse(report).getroot().iter("testcase")) if report.exists() else []
    failed = [c.get("name") for c in cases if c.find("failure") is not None or c.find("error") is not None]
    # Every documented operation, not merely some: a sweep that reached one passed before.
    names = {c.get("name") or "" for c in cases}
    missing = [op for op in documented_operations() if op not in names]
    assert not missing, (f"schemathesis did not run {missing} (ran {names}):\n"
                         f"{run.stdout[-4000:]}\n{run.stderr[-2000:]}")
    assert not failed and run.returncode == 0, (
        f"schemathesis failed {failed or '(see output)'}:\n{run.stdout[-8000:]}\n{run.stderr[-2000:]}"
    )


def test_the_api_answers_every_generated_request_as_documented(api, tmp_path):
    sweep(api.url(), MAX_EXAMPLES, tmp_path)


def test_through_nginx_too(api, tmp_path):
    # The sweep sends hundreds of requests a second from one address.
    exempt = {"rate_limit_exempt.conf": '127.0.0.1 "";\n'}
    with Nginx.start(f"127.0.0.1:{api.port}", files=exempt, access_log=False) as proxy:
        sweep(f"http://127.0.0.1:{proxy.port}", max(MAX_EXAMPLES // 4, 1), tmp_path)
