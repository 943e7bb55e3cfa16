"""The end-to-end tests run the same scenarios against the real Nix images (E2E_IMAGES=present,
the pipeline's e2e job) as against the stand-in images (the default, .ci/run): the mode may only
change where the images come from.

Proven by collecting tests/e2e in both modes (pytest --collect-only: nothing is started) and by
reading the suite: no test module looks at the mode, and in conftest.py only the fixture that
provides the images and the report header do.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "tests" / "e2e"
MODE_WORDS = ("E2E_IMAGES", "images_mode")
# conftest.py functions allowed to look at the mode.
MODE_READERS = {"images_mode", "stack_images", "pytest_report_header"}

pytestmark = pytest.mark.skipif(not list(E2E.glob("test_*.py")), reason="tests/e2e has no test modules yet")


def collected(mode: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "E2E_IMAGES"}
    if mode is not None:
        env["E2E_IMAGES"] = mode
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "--no-header", "-p", "no:cacheprovider", str(E2E)],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_both_modes_collect_the_same_scenarios():
    stand_in = collected(None)
    present = collected("present")
    assert stand_in, "tests/e2e collects no test"
    assert present == stand_in


def test_no_scenario_looks_at_the_mode():
    for module in sorted(E2E.glob("test_*.py")):
        text = module.read_text()
        for word in MODE_WORDS:
            assert word not in text, f"{module.name} reads {word}: a scenario would differ between the modes"


def test_only_the_image_fixture_reads_the_mode():
    conftest = E2E / "conftest.py"
    tree = ast.parse(conftest.read_text())
    readers = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = ast.unparse(node)
            if any(word in body for word in MODE_WORDS) and node.name != "images_mode":
                readers.add(node.name)
    assert readers <= MODE_READERS, f"conftest.py functions that read the mode: {sorted(readers)}"
    assert "stack_images" in readers, "the image fixture chooses stand-ins or present images"
