"""Helpers for tests of the CLI's failure contract: exit 2, one line naming file and problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vasseg.cli import main


def cli_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """Run ``vasseg *argv``; assert the failure contract and return the error line."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert rc == 2, f"exit {rc}; stdout={out!r} stderr={err!r}"
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line: {err!r}"
    assert lines[0].startswith(f"vasseg {argv[0]}: error: "), lines[0]
    assert out == "", f"nothing is printed on stdout for a failed command: {out!r}"
    return lines[0]


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (relative), hidden ones included; [] when it does not exist."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
