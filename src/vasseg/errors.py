"""The user's errors: one base class, so that a bug is never shown as one.

Everything vasseg raises for a problem *the user* can fix (a bad config key, a missing or
unreadable file, an unsafe checkpoint, a wrong option) is a :class:`VassegError`; the CLI prints
its message as one line and exits with status 2. Any other exception is a bug in vasseg: the CLI
shows its traceback and asks for a report (:func:`is_user_error` is the one rule).

The classes keep the built-in base they had before (``ConfigError`` and ``DataError`` are
``ValueError``\\ s, ``CheckpointError`` a ``RuntimeError``), so ``except ValueError`` still catches
them. A foundation module: it imports nothing of vasseg.
"""

from __future__ import annotations

import errno

BUG_REPORT = "this is a bug in vasseg, please report it on the issue tracker (with the traceback above)"
# Errors with which storage refuses a write (rather than a path being wrong): full disk, quota,
# file-size limit, read-only file system. The environment's failures, not vasseg's.
STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


class VassegError(Exception):
    """A problem the user can fix; the message is one line naming the file, key or option."""


class ConfigError(VassegError, ValueError):
    """A configuration or option problem; the message names the key path, option or file."""


class DataError(VassegError, ValueError):
    """A dataset, image or label problem; the message names the file or case."""


class CheckpointError(VassegError, RuntimeError):
    """A checkpoint cannot be written, found or trusted; the message names the file."""


class PathNotFound(VassegError, FileNotFoundError):
    """A path the user named does not exist (or does not hold what it should)."""


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's (or the environment's) problem rather than vasseg's.

    A :class:`VassegError`, or an ``OSError`` about a named path (``FileNotFoundError``,
    ``PermissionError``, ``IsADirectoryError``... carrying ``filename``) or one with which storage
    refused a write (disk full, quota, read-only file system). Everything else is a bug.
    """
    if isinstance(exc, VassegError):
        return True
    return isinstance(exc, OSError) and (exc.filename is not None or exc.errno in STORAGE_ERRORS)
