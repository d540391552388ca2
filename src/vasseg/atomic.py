"""Atomic file and folder writes: readers see the old complete version or the new one, never half.

A file is written to a temporary name in its own folder, flushed and fsynced, then renamed over
the target (``os.replace`` is atomic within one file system); the folder is fsynced so that the
rename itself survives a crash. A folder is filled under a temporary name and swapped in place.
Checkpoints, logs, predictions, evaluation folders and reports all go through here; so do the
early check that an output folder can be written and the one-line error of a full disk.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable

from vasseg.errors import STORAGE_ERRORS, ConfigError, VassegError


class WriteError(VassegError, OSError):
    """An output could not be written; the one-line message names it and what was kept."""


def check_output_dir(folder: Path) -> None:
    """Fail now, not after hours of work, when ``folder`` cannot be created or written.

    ``os.access`` also reports a read-only file system (EROFS), for root too.
    """
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{folder}: cannot create the output folder ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{folder}: output folder is not writable ({probe} is read-only)")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory``; not supported on every platform, hence best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, fsync, then rename over it.

    The file gets the mode a plain ``open()`` would give (0666 minus the umask, not mkstemp's
    0600). On any failure the temporary file is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; it becomes ``final`` only if the block succeeds.

    Readers therefore see either the previous complete folder or the new complete one, never a
    half-written one (e.g. a ``cases.csv`` cut short by a full disk). On failure the temporary
    folder is removed and a previous ``final`` is left untouched. Replacing an existing folder
    moves it aside first (``rename`` cannot replace a non-empty folder), then deletes it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; a results folder should follow the umask
    try:
        yield tmp
        _swap_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(final.parent)


def _swap_dir(new: Path, final: Path) -> None:
    """Put folder ``new`` in place of ``final`` (which may exist)."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(final, old)
    try:
        os.replace(new, final)
    except OSError:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def storage_errors(final: Path, what: str) -> Iterator[None]:
    """Storage refusing a write (disk full, quota, read-only) becomes one `WriteError` line naming
    ``final``: the write itself usually fails without naming its file."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in STORAGE_ERRORS:
            raise
        kept = "the previous one is untouched" if final.exists() else "nothing was left behind"
        where = f": {exc.filename}" if exc.filename else ""
        raise WriteError(f"{final}: could not write {what} ({exc.strerror}{where}); {kept}") from None


@contextmanager
def published_dir(final: Path | str, what: str) -> Iterator[Path]:
    """:func:`atomic_dir`, with :func:`storage_errors`."""
    final = Path(final)
    with storage_errors(final, what), atomic_dir(final) as tmp:
        yield tmp
