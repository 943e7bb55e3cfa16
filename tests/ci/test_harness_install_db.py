"""The harness installs MariaDB's data directory with `--basedir` (issue 24): nixpkgs builds
MariaDB in the STANDALONE layout, whose mariadb-install-db otherwise looks for
./bin/my_print_defaults relative to the working directory, so every MariaDB test in the Nix check
would fail. Here the prefix is read from a fake Nix-style layout and from the forky root."""

import os
from pathlib import Path

from harness import mariadb, procs, toolchain


def test_basedir_is_the_prefix_of_mariadbd_on_path(tmp_path, monkeypatch):
    store = tmp_path / "nix" / "store" / "abc-mariadb-server-11.4.5"
    (store / "bin").mkdir(parents=True)
    for name in ("mariadbd", "mariadb-install-db", "my_print_defaults"):
        program = store / "bin" / name
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    profile = tmp_path / "profile" / "bin"
    profile.mkdir(parents=True)
    (profile / "mariadbd").symlink_to(store / "bin" / "mariadbd")  # as a Nix profile links it
    (profile / "mariadb-install-db").symlink_to(store / "bin" / "mariadb-install-db")
    monkeypatch.setattr(toolchain, "wrapper", lambda name: None)
    monkeypatch.setenv("PATH", f"{profile}:{os.environ['PATH']}")
    argv = mariadb._install_db(tmp_path / "data")
    assert f"--basedir={store}" in argv, argv
    assert argv.index(f"--basedir={store}") < argv.index(f"--datadir={tmp_path / 'data'}")


def test_basedir_is_usr_inside_the_forky_root(monkeypatch):
    monkeypatch.setattr(toolchain, "wrapper", lambda name: f"/cache/bin/{name}")
    assert procs.prefix("mariadbd") == "/usr"
    assert "--basedir=/usr" in mariadb._install_db(Path("/tmp/data"))
