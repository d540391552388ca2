"""Atomic checkpoints with a ``latest`` pointer, retention, and safe loading.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then renamed
over its final name; only then is the ``latest`` pointer (a one-line text file, itself replaced
atomically) moved to it. A crash at any moment therefore leaves the previous checkpoint and a
pointer that names a complete file. Loading uses ``torch.load(weights_only=True)``: a file that
carries pickled code is refused instead of executed.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

LATEST = "latest"
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, found or trusted; the message names the file."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(folder: Path, name: str, state: dict[str, Any], point_latest: bool = True) -> Path:
    """Write ``state`` atomically as ``folder/name``; optionally move the ``latest`` pointer to it."""
    path = folder / name
    try:
        atomic_write_bytes(path, lambda fh: torch.save(state, fh))
        if point_latest:
            atomic_write_bytes(folder / LATEST, lambda fh: fh.write(f"{name}\n".encode()))
    except OSError as exc:
        raise CheckpointError(f"{path}: could not write checkpoint ({exc.strerror or exc}); "
                              f"the previous checkpoint is intact") from None
    return path


def latest_checkpoint(folder: Path) -> Path | None:
    """The file the ``latest`` pointer names, or None when there is no checkpoint yet."""
    pointer = folder / LATEST
    if not pointer.exists():
        return None
    target = folder / pointer.read_text().strip()
    if not target.is_file():
        raise CheckpointError(f"{pointer}: names {target.name}, which does not exist")
    return target


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (never the one ``latest`` names)."""
    latest = latest_checkpoint(folder)
    steps = sorted(
        (int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := STEP_FILE.match(p.name))
    )
    for _, path in steps[: max(len(steps) - keep, 0)]:
        if latest is None or path.resolve() != latest.resolve():
            path.unlink(missing_ok=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); refuse anything that is not plain data."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for unsafe/corrupt files
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused to load: the file carries pickled objects that could run code "
                f"({text[:160]})"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({text[:160]})") from None
    if not isinstance(state, dict) or "method" not in state:
        raise CheckpointError(f"{path}: not a vasseg checkpoint (no 'method' weights)")
    return state
