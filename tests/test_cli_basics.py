"""The ``tkn`` entry point itself: help, version, exit codes."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tkn
from tkn.cli import build_parser, main


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


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def test_shared_options_are_spelled_one_way():
    """No positional model or checkpoint, no --input: the model and the shape are given the same way everywhere."""
    for name, parser in _commands().items():
        positional = [a.dest for a in parser._actions if not a.option_strings]
        assert positional == [], f"tkn {name} has positional arguments {positional}"
        options = _options(parser)
        assert "--input" not in options, f"tkn {name} still has --input"
        if "--input-size" in options:
            assert options["--input-size"].metavar == "C,H,W"
        if "--checkpoint" in options:
            assert options["--checkpoint"].metavar == "PATH"


def test_readme_command_table_matches_the_parsers():
    """Every command is in the README's table, and every flag the table names exists on that command."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| `tkn (\w+)` \|(.*)\|$", readme, flags=re.M)
    commands = _commands()
    assert sorted(name for name, _ in rows) == sorted(commands)
    for name, cells in rows:
        flags = set(re.findall(r"`(--[a-z-]+)", cells))
        missing = flags - set(_options(commands[name]))
        assert not missing, f"README names {sorted(missing)} for tkn {name}"
