"""The end-to-end tests' process samplers (tests/e2e/e2e_support.py) report what they cannot read:
a process they could not sample must fail the test that relies on them (the hardening, leak
and pids checks), never pass it with a peak of 0 or an unread command line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import e2e_support  # noqa: E402  (the path above comes first)


def gone_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_service_never_sampled_fails_the_sampler():
    sampler = e2e_support.Sampler({"api": gone_pid()}, interval=0.01)
    sampler.start()
    with pytest.raises(AssertionError, match="could not read .*api"):
        sampler.stop()


def test_an_unreadable_command_line_is_an_error_not_a_process_skipped(monkeypatch):
    real = Path.read_bytes
    mine = f"/proc/{os.getpid()}/cmdline"

    def refuse(path):
        if str(path) == mine:
            raise PermissionError(13, "Permission denied", mine)
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(PermissionError):
        e2e_support.all_command_lines()


def test_an_unreadable_process_tree_is_an_error_not_a_process_skipped(monkeypatch):
    real = Path.read_text

    def refuse(path, *args, **kwargs):
        if path.name == "children":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(PermissionError):
        e2e_support.descendants(os.getpid())


def test_processes_that_end_meanwhile_are_skipped():
    """What the samplers may skip: a process gone between listing and reading."""
    pid = gone_pid()
    assert e2e_support.descendants(pid) == [pid]
    assert "pytest" in e2e_support.all_command_lines()
