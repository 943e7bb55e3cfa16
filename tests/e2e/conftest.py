"""Fixtures of the end-to-end tests: Compose v2, the images, one compose project for the session.

The tests run in file order (test_10_..., test_20_..., ...) against ONE stack: each file picks up
the state the previous ones left (the users they wrote, a restarted db). Measurements are
printed in a "measured" section before pytest's summary line; a failing test gets the compose
state and the last log lines of each service in its report.

Environment:
  E2E_IMAGES=present   use the images already loaded (the Nix ones: `nix run .#load`), after
                       checking their config against nix/contract.json; default: build stand-ins
  E2E_API_BIN          the user-api binary of the api stand-in (default target/release/user-api)
  E2E_KEEP_IMAGES=1    keep the stand-in images after the run
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `harness`, without PYTHONPATH

from harness import compose, images  # noqa: E402

MEASURED: list[str] = []
CURRENT: dict = {}


def images_mode() -> str:
    mode = os.environ.get("E2E_IMAGES", "stand-in")
    if mode not in ("stand-in", "present"):
        raise pytest.UsageError(f"E2E_IMAGES={mode}: use 'present' or leave it unset")
    return mode


def pytest_report_header(config):
    lines = []
    try:
        how = compose.ensure_plugin()
        v = compose.versions()
        lines.append(f"docker: Engine {v['engine']} (API {v['api']}), docker CLI {v['client']}, "
                     f"Compose {v['compose']} [{how}]")
    except Exception as e:  # noqa: BLE001 (the fixtures fail with the details)
        lines.append(f"docker: not usable: {e}")
    mode = images_mode()
    lines.append("images: " + ("present (E2E_IMAGES=present), checked against nix/contract.json"
                               if mode == "present" else
                               "stand-ins built from this machine's files (tests/harness/images.py)"))
    return lines


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.write_sep("-", "measured")
        for line in MEASURED:
            terminalreporter.write_line(line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    project = CURRENT.get("project")
    if report.when == "call" and report.failed and project is not None:
        text = project.compose("ps", "-a", check=False).stdout
        for service in ("db", "api", "proxy"):
            text += f"\n--- {service} (last 12 log lines)\n" + project.logs(service, tail="12")
        report.sections.append(("compose state", text))


@pytest.fixture(scope="session")
def record():
    """record(line): a measurement for the summary."""
    return MEASURED.append


@pytest.fixture(scope="session")
def compose_plugin():
    return compose.ensure_plugin()


@pytest.fixture(scope="session")
def stack_images(compose_plugin, record):
    """The three images compose expects, loaded: stand-ins, or the present ones checked."""
    if images_mode() == "present":
        try:
            refs = images.check_present()
        except images.ContractError as e:
            pytest.fail(str(e), pytrace=False)
        record("images (present, match nix/contract.json): "
               + "; ".join(images.describe(r) for r in refs.values()))
        yield refs
        return
    try:
        refs = images.build_stand_ins(tag=f"{images.version()}-standin-{os.getpid()}")
    except (FileNotFoundError, RuntimeError) as e:
        pytest.fail(f"building the stand-in images failed: {e}", pytrace=False)
    loaded = {ref: images.image_id(ref) for ref in refs.values()}
    record("images (stand-ins): " + "; ".join(images.describe(r) for r in refs.values()))
    yield refs
    if os.environ.get("E2E_KEEP_IMAGES") != "1":
        images.remove(loaded)


@pytest.fixture(scope="session")
def project(stack_images):
    """The session's compose project, with its secrets; not started."""
    with compose.Project(prefix="e2e", env=images.compose_env(stack_images)) as p:
        p.make_secrets()
        CURRENT["project"] = p
        try:
            yield p
        finally:
            CURRENT.pop("project", None)


@pytest.fixture(scope="session")
def stack(project, record):
    """The project, up and healthy (`up -d --wait`)."""
    try:
        seconds = project.up()
    except compose.ComposeError as e:
        logs = "".join(f"\n--- {s}\n{project.logs(s, tail='30')}" for s in ("db", "api", "proxy"))
        pytest.fail(f"`docker compose up -d --wait` failed: {e}{logs}", pytrace=False)
    project.up_seconds = seconds
    record(f"up -d --wait (first start, empty volume): {seconds:.1f} s; project {project.name}, "
           f"HTTP_PORT {project.port}")
    return project


@pytest.fixture(scope="session")
def acked():
    """userid -> username of every write a test saw acknowledged (201): all must survive."""
    return {}
