"""The ``tkn`` entry point itself: help, version, exit codes."""
from __future__ import annotations

import subprocess
import sys

import pytest

import tkn
from tkn.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"tkn {tkn.__version__}"


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: tkn" in out


def test_unknown_command_fails_cleanly():
    proc = subprocess.run([sys.executable, "-m", "tkn.cli", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice: 'frobnicate'" in proc.stderr and "Traceback" not in proc.stderr
