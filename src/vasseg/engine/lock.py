"""An exclusive lock on a run folder for the life of one training.

Two trainings writing one run folder would interleave their checkpoints and logs. The lock is an
``flock`` on ``<out_dir>/.<run name>.lock``, beside the run folder rather than in it: it can be
taken before the folder exists and outlives its removal (a run that fails before its first step
removes its folder while still holding the lock). The kernel releases an ``flock`` when its
process ends, however it ends (SIGKILL and power loss included), so the lock of a dead process is
free: the next training takes it over and logs whose it was. The file records the holder (pid,
host, start time, command) so that a refused training is told which one is running.

POSIX only (``fcntl``). On a file system without locks a warning says the folder is unguarded.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vasseg.rundir import RunDir
from vasseg.typed import ConfigError

log = logging.getLogger(__name__)


class RunFolderBusy(ConfigError):
    """Another live training holds the run folder's lock; the message names the folder and it."""


def lock_path(run_dir: Path) -> Path:
    """``<out_dir>/.<run name>.lock``: the lock file of ``run_dir``."""
    return RunDir(run_dir).lock


@contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` for the ``with`` block; released on any exit from it.

    Raises `RunFolderBusy` at once (no waiting) when a live process holds it.
    """
    path = lock_path(run_dir)
    fd = _acquire(path, run_dir)
    try:
        yield path
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)  # while still locked: a racing opener sees another inode
            os.close(fd)


def _acquire(path: Path, run_dir: Path) -> int | None:
    """The locked descriptor of ``path``, with this process recorded in it (None: no locking)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{run_dir.parent}: cannot create the output folder ({exc.strerror or exc})") from None
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderBusy(f"{run_dir}: run folder is in use by another training ({holder}); wait "
                                f"for it to end or choose another run.name / run.out_dir") from None
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: some network and FUSE file systems
            os.close(fd)
            log.warning("%s: cannot lock the run folder (%s); a second training into it would not be "
                        "stopped", run_dir, exc.strerror or exc)
            return None
        if _still_at(fd, path):
            break
        os.close(fd)  # the previous holder removed the file between our open and our lock: again
    stale = _holder(fd)
    if stale != "holder unknown":
        log.warning("%s: took over the lock of a training that ended without releasing it (%s)", run_dir, stale)
    _record_self(fd)
    return fd


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create the run folder's lock ({exc.strerror or exc})") from None


def _still_at(fd: int, path: Path) -> bool:
    """Whether the locked descriptor is still the file at ``path`` (not an unlinked one)."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def _record_self(fd: int) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)


def _holder(fd: int) -> str:
    """Who the lock file names, for messages; "holder unknown" when it names no one (yet)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        return f"pid {info['pid']} on {info['host']} since {info['started']}: {info['command'][:200]}"
    except (OSError, ValueError, TypeError, KeyError):  # empty, being written, or not ours
        return "holder unknown"
