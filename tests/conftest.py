"""Shared by every pytest suite under tests/: the harness package is
importable as ``harness`` (tests/ is the rootdir of the suites)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
