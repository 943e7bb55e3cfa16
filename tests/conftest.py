"""Shared by every pytest suite under tests/: the harness package is
importable as ``harness`` (tests/ is the rootdir of the suites)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_report_header(config):
    from harness import toolchain

    try:
        return [toolchain.describe()]
    except toolchain.ToolchainError as e:
        return [f"servers: {e}"]
