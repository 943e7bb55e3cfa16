"""The Nix build environment declares every program `cargo test` runs. In the check's sandbox (and
in `nix develop`) PATH holds only the declared inputs, so a test that starts running a program the
Nix files do not declare passes here and fails there (issue 24: `ss` was missing). The programs
are read from the tests themselves; the table maps each to the nixpkgs attribute that provides it.
"""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# program -> the nixpkgs attribute providing it. A program missing here fails the first test:
# add it, and the attribute to nix/rust.nix's nativeCheckInputs and nix/devshell.nix.
PROVIDED_BY = {
    "python3": "python3",  # the Rust tests run `python3 -m harness`
    "ss": "iproute2",
    "mariadbd": "mariadb",
    "mariadb-install-db": "mariadb",
    "mariadb": "mariadb",
    "nginx": "nginx",
}


def harness_modules_cargo_runs() -> set[Path]:
    """The harness modules `python3 -m harness` (what the Rust tests run) imports, transitively:
    not the ones only the pytest suites use (testssl.py, compose.py, images.py)."""
    harness = REPO / "tests" / "harness"
    seen, pending = set(), [harness / "__main__.py"]
    while pending:
        path = pending.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        text = path.read_text()
        for names in re.findall(r"^from (?:\.|harness) import ([\w, ]+)", text, re.M):
            pending += [harness / f"{n.strip()}.py" for n in names.split(",")]
        pending += [harness / f"{m}.py" for m in re.findall(r"^from (?:\.|harness\.)(\w+) import", text, re.M)]
        # Imports inside functions (procs.program imports toolchain there).
        pending += [harness / f"{m}.py" for m in re.findall(r"^\s+from \. import (\w+)", text, re.M)]
    return seen


def programs_the_tests_run() -> set[str]:
    found = set()
    for path in [*(REPO / "tests" / "api").glob("*.rs"), *(REPO / "src").rglob("*.rs")]:
        found |= set(re.findall(r'Command::new\("([\w.+-]+)"\)', path.read_text()))
    for path in harness_modules_cargo_runs():
        found |= set(re.findall(r'procs\.program\("([\w.+-]+)"\)', path.read_text()))
    return found


def test_the_harness_modules_cargo_runs_are_found():
    names = {p.name for p in harness_modules_cargo_runs()}
    assert {"__main__.py", "mariadb.py", "nginx.py", "procs.py", "ports.py", "toolchain.py"} <= names, names
    assert "testssl.py" not in names and "compose.py" not in names, names


def nix_list(text: str, attribute: str) -> set[str]:
    """The identifiers in `attribute = [ ... ];` and in any `lib.optionals ... [ ... ]` after it."""
    match = re.search(rf"{attribute} = \[(.*?)\](.*?);", text, re.S)
    assert match, f"no `{attribute} = [ ... ]`"
    body = match.group(1) + " ".join(re.findall(r"optionals [^\[]*\[(.*?)\]", match.group(2), re.S))
    body = re.sub(r"#[^\n]*", "", body)
    return set(re.findall(r"[A-Za-z_][\w-]*", body))


def test_every_program_the_tests_run_is_in_the_table():
    programs = programs_the_tests_run()
    assert {"python3", "ss", "mariadbd", "nginx"} <= programs, programs
    unknown = programs - set(PROVIDED_BY)
    assert not unknown, f"the tests run {sorted(unknown)}: say which nixpkgs attribute provides it"


def test_the_user_api_check_declares_them():
    rust = (REPO / "nix" / "rust.nix").read_text()
    tests_derivation = rust[rust.index("user-api-tests = "):]
    declared = nix_list(tests_derivation, "nativeCheckInputs")
    needed = {PROVIDED_BY[p] for p in programs_the_tests_run()}
    assert needed <= declared, f"nix/rust.nix's user-api-tests lacks {sorted(needed - declared)}"


def test_the_dev_shell_provides_them():
    declared = nix_list((REPO / "nix" / "devshell.nix").read_text(), "packages")
    needed = {PROVIDED_BY[p] for p in programs_the_tests_run()}
    assert needed <= declared, f"nix/devshell.nix lacks {sorted(needed - declared)}"
