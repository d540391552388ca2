"""Storage faults for tests: a disk that fills up under one folder, as a write wrapper.

Tests may run as root in a container that cannot mount a small tmpfs, so the full disk is
simulated where Python writes files: ``open`` / ``io.open`` (``Path.write_text``, ``os.fdopen``,
gzip, csv, matplotlib all go through them). A file opened for writing under the folder gets a
wrapper whose writes draw from one shared budget of bytes; the write that exceeds it writes
what still fits (as a real full disk does) and raises ``OSError(ENOSPC)`` without a file name,
as ``write(2)`` does.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path
from typing import Any

import pytest


class _Limited:
    """A file object whose writes fail with ENOSPC once the shared budget is spent."""

    def __init__(self, fh: Any, disk: "FullDisk") -> None:
        self.fh, self.disk = fh, disk

    def write(self, data: Any) -> int:
        if len(data) > self.disk.room:
            self.fh.write(data[: self.disk.room])
            self.disk.room = 0
            self.disk.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.disk.room -= len(data)
        return self.fh.write(data)

    def __enter__(self) -> "_Limited":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()

    def __iter__(self) -> Any:
        return iter(self.fh)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


class FullDisk:
    """``room`` free bytes for every file written under ``folder``; ``refused`` counts failed writes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path, room: int = 0) -> None:
        self.folder, self.room, self.refused = folder.resolve(), room, 0
        real = io.open

        def limited_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            fh = real(file, mode, *args, **kwargs)
            writes = any(c in mode for c in "wax+")
            return _Limited(fh, self) if writes and self._under(file) else fh

        monkeypatch.setattr(builtins, "open", limited_open)
        monkeypatch.setattr(io, "open", limited_open)

    def _under(self, file: Any) -> bool:
        path = Path(os.readlink(f"/proc/self/fd/{file}")) if isinstance(file, int) else Path(file).resolve()
        return path.is_relative_to(self.folder)


def hidden(folder: Path) -> list[str]:
    """Temporary leftovers (names starting with a dot, not an output folder's marker) under ``folder``."""
    from vasseg.outfolder import MARKER

    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name != MARKER)
