"""The CLI as a product: ``--version`` and a help text on every option of every command."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

import vasseg
from vasseg.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"vasseg {vasseg.__version__}"
    assert vasseg.__version__ == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_of_every_command_has_help() -> None:
    parser = build_parser()
    commands = _commands(parser)
    assert {"train", "evaluate", "predict", "export", "demo", "prepare", "report"} <= set(commands)
    missing = [f"vasseg {name} {'/'.join(a.option_strings) or a.dest}"
               for name, p in {"": parser, **commands}.items() for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert missing == []
