"""Swagger UI at /docs/ in a real browser: Debian's headless Chromium, driven by
Playwright, against the release binary on a throwaway MariaDB, on the API's own
port and through nginx with the shipped configuration (its rate limits on).

The page must list every operation of src/openapi.json, and "Try it out" must
reach the real API: POST /users answers 201, then GET /get_user 200 with the
name just stored. Nothing may go to another origin, the browser may report no
error (a Content-Security-Policy violation is one), and nginx may refuse none
of the page's requests. A screenshot of each run is kept under
BROWSER_ARTIFACTS (default target/browser-artifacts; CI uploads it).
"""

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import sync_playwright

from harness.api import Api
from harness.mariadb import MariaDB
from harness.nginx import Nginx

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS", REPO / "target" / "browser-artifacts"))
# Debian's build of Chromium's headless shell (what Playwright itself runs
# headless); never a browser Playwright downloads.
CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def ways():
    with MariaDB.start() as db:
        url = db.create_database("browser")
        with Api(url, env={"ROCKET_ACCESS_LOG": "false"}) as api:
            with Nginx.start(f"127.0.0.1:{api.port}") as proxy:
                yield {"api": api.url(), "nginx": f"http://127.0.0.1:{proxy.port}"}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("no chromium-headless-shell on PATH: .ci/run installs Debian's package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


def documented_operations() -> set[tuple[str, str]]:
    document = json.loads((REPO / "src" / "openapi.json").read_text())
    return {(method.upper(), path) for path, item in document["paths"].items()
            for method in item if method in METHODS}


class Page:
    """One page of the browser, and everything it did: each request's URL,
    each answer's status, each error the browser reported."""

    def __init__(self, browser, base: str):
        self.base = base
        self.page = browser.new_page()
        self.requests: list[str] = []
        self.statuses: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("response", lambda r: self.statuses.append((r.status, r.url)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open_docs(self):
        self.page.goto(f"{self.base}/docs/")
        self.page.wait_for_selector(".opblock", timeout=15_000)

    def listed_operations(self) -> set[tuple[str, str]]:
        blocks = self.page.locator(".opblock")
        return {
            (block.locator(".opblock-summary-method").inner_text().strip(),
             block.locator(".opblock-summary-path").get_attribute("data-path"))
            for block in blocks.all()
        }

    def try_it_out(self, method: str, path: str, params=None, body=None) -> tuple[str, str]:
        """Expand the operation, fill it in, execute it: the status and the
        body Swagger UI shows from the real answer."""
        block = self.page.locator(f".opblock-{method.lower()}").filter(
            has=self.page.locator(f'.opblock-summary-path[data-path="{path}"]'))
        block.locator(".opblock-summary").click()
        block.locator(".try-out__btn").click()
        for name, value in (params or {}).items():
            block.locator(f'tr[data-param-name="{name}"] input').fill(str(value))
        if body is not None:
            block.locator("textarea.body-param__text").fill(json.dumps(body))
        block.locator("button.execute").click()
        live = block.locator(".live-responses-table .response")
        live.first.wait_for(timeout=15_000)
        status = live.locator(".response-col_status").first.inner_text().strip()
        shown = live.locator(".response-col_description pre.microlight").first.inner_text()
        return status, shown

    def screenshot(self, name: str):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


@pytest.mark.parametrize("way", ["api", "nginx"])
def test_the_docs_page_lists_every_operation_and_runs_them_against_the_api(ways, browser, way):
    page = Page(browser, ways[way])
    page.open_docs()
    assert page.listed_operations() == documented_operations()

    userid = 4100 + len(way)
    status, shown = page.try_it_out("POST", "/users", body={"userid": userid, "username": "Grace"})
    assert status == "201", shown
    assert json.loads(shown) == {"userid": userid, "username": "Grace"}
    status, shown = page.try_it_out("GET", "/get_user", params={"userid": userid})
    assert status == "200", shown
    assert json.loads(shown) == {"userid": userid, "username": "Grace"}
    page.screenshot(f"docs-{way}")

    origin = urlsplit(ways[way]).netloc
    elsewhere = [u for u in page.requests
                 if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != origin]
    assert not elsewhere, f"requests to other origins: {elsewhere}"
    assert not page.errors, f"the browser reported: {page.errors}"
    refused = [(s, u) for s, u in page.statuses if s >= 400]
    assert not refused, f"answers the page did not expect: {refused}"
    # The page's own files, the document, then the two calls.
    assert len(page.requests) >= 8, page.requests
