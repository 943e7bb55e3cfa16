"""README.md is a newcomer's page: short, the two commands near the top, and a layout table that
names every file of src/ (a new module must be placed for the reader too)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def test_it_stays_short_with_the_prerequisites_and_the_two_commands_at_the_top():
    lines = README.splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; depth belongs in the folder READMEs"
    top = "\n".join(lines[:40])
    assert "## Prerequisites" in top and "nix run .#up" in top and "\ntests/run " in top


def test_the_layout_names_every_file_of_src():
    (row,) = [line for line in README.splitlines() if line.startswith("| `src/` |")]
    named = set(re.findall(r"`([^`]+)`", row))
    for path in sorted((REPO / "src").iterdir()):
        name = f"{path.name}/" if path.is_dir() else path.name
        if name != "README.md":
            assert name in named, f"README.md's layout does not name src/{name}"
