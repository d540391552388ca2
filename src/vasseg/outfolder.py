"""Output folders a command owns: the overwrite rule of every command that writes a folder.

A command that writes a folder (``evaluate --out``, ``report --out``, ``predict`` into a folder,
``prepare --out``) leaves a marker in it, :data:`MARKER` (JSON: the command and the entries it
wrote). The rule, checked before any work:

* a new or empty folder, or one holding only the command's own earlier output (its marker, or
  for outputs made before the marker existed: only entries named like its outputs), is written;
* any other folder is refused in one line unless ``--overwrite``;
* even with ``--overwrite`` only the command's own entries are replaced: every other entry stays,
  and a foreign entry with the name of one the command writes is refused instead of replaced.

Publishing keeps :func:`vasseg.atomic.published_dir`'s guarantee (the new output appears whole
or not at all; a full disk leaves the previous one intact): a folder holding only the command's
own output is swapped whole; a folder with foreign entries gets the new entries one rename each,
undone on failure, with the marker written last.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from vasseg.atomic import atomic_write_bytes, check_output_dir, fsync_dir, published_dir, storage_errors
from vasseg.typed import ConfigError

log = logging.getLogger(__name__)

MARKER = ".vasseg-output.json"


@dataclass(frozen=True)
class Owner:
    """A command that writes a folder.

    ``writes``: glob patterns of the entries it writes (its legacy output is a folder holding only
    such entries; a foreign entry matching one is never replaced). ``replaces_own``: whether its
    own earlier output is replaced without ``--overwrite`` (evaluate, report) or only with it
    (predict, prepare: a rerun must not silently replace label maps or a dataset).
    """

    command: str
    writes: tuple[str, ...]
    replaces_own: bool = True
    legacy: bool = True  # False: a folder without the marker is never taken for earlier output


def read_marker(folder: Path) -> dict | None:
    """The marker of ``folder``, or None when there is none or it is not one of ours."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and isinstance(data.get("command"), str) and isinstance(data.get("files"), list)
    return data if ok else None


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != MARKER) if folder.is_dir() else []


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def own_entries(folder: Path, owner: Owner) -> set[str]:
    """Entries of ``folder`` that ``owner``'s earlier runs wrote (by its marker, or legacy names)."""
    entries = _entries(folder)
    marker = read_marker(folder)
    if marker is not None:
        return set(entries) & {str(f) for f in marker["files"]} if marker["command"] == owner.command else set()
    if owner.legacy and entries and all(_matches(e, owner.writes) for e in entries):
        return set(entries)
    return set()


def check_folder(folder: Path, owner: Owner, overwrite: bool, names: Iterable[str] = ()) -> set[str]:
    """Refuse, before any work, an output folder the command may not write (module docstring).

    ``names``: entries the command will write, when known in advance (else ``owner.writes``).
    Returns the command's own entries already there.
    """
    check_output_dir(folder)
    own = own_entries(folder, owner)
    foreign = [e for e in _entries(folder) if e not in own]
    command = f"vasseg {owner.command}"
    if foreign and not overwrite:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ConfigError(f"{folder}: holds {foreign[0]!r}{more}, not written by {command}; give a new or empty "
                          f"folder, or pass --overwrite to write beside them (only {command}'s own files are "
                          f"ever replaced)")
    if own and not owner.replaces_own and not overwrite:
        raise ConfigError(f"{folder}: holds earlier output of {command} ({sorted(own)[0]!r}); pass --overwrite "
                          f"to replace it")
    _refuse_clashes(folder, foreign, list(names) or list(owner.writes), command)
    return own


def _refuse_clashes(folder: Path, foreign: list[str], names: list[str], command: str) -> None:
    clash = next((e for e in foreign if _matches(e, names)), None)
    if clash is not None:
        raise ConfigError(f"{folder / clash}: has the name of an output of {command} but was not written by it; "
                          f"not replaced, even with --overwrite (move it away first)")


def write_marker(folder: Path, owner: Owner, files: Iterable[str]) -> None:
    """Record (atomically) that ``owner`` wrote ``files`` into ``folder``."""
    from vasseg import __version__

    body = {"command": owner.command, "created_by": f"vasseg {__version__}", "files": sorted(set(files))}
    atomic_write_bytes(folder / MARKER, lambda fh: fh.write(json.dumps(body, indent=1).encode()))


def add_to_marker(folder: Path, owner: Owner, files: Iterable[str]) -> None:
    """Add ``files`` to the marker's list (predict writes into its folder case by case)."""
    write_marker(folder, owner, set(own_entries(folder, owner)) | set(files))


@contextmanager
def published_folder(final: Path | str, owner: Owner, what: str) -> Iterator[Path]:
    """Yield a temporary folder; on success its entries replace ``owner``'s own output in ``final``.

    Call :func:`check_folder` first. A folder with only the command's output is swapped whole
    (:func:`vasseg.atomic.published_dir`); one with foreign entries keeps them (:func:`install`).
    """
    final = Path(final)
    own = own_entries(final, owner)
    if not set(_entries(final)) - own:
        with published_dir(final, what) as tmp:
            yield tmp
            write_marker(tmp, owner, _entries(tmp))
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{final.parent}/.{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with storage_errors(final, what):
            tmp.mkdir()
            yield tmp
            install(tmp, final, owner)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(new: Path, final: Path, owner: Owner) -> None:
    """Make the finished folder ``new`` the output ``final``: renamed whole when ``final`` does not
    exist yet, else :func:`install` (only ``owner``'s own entries are replaced)."""
    if final.exists():
        install(new, final, owner)
        return
    write_marker(new, owner, _entries(new))
    os.replace(new, final)
    fsync_dir(final.parent)


def install(new: Path, final: Path, owner: Owner) -> None:
    """Move the entries of folder ``new`` into ``final``, replacing ``owner``'s own earlier entries
    there and no others; every rename is undone if one fails. The marker is written last."""
    own = own_entries(final, owner)
    names = _entries(new)
    _refuse_clashes(final, [e for e in _entries(final) if e not in own], names, f"vasseg {owner.command}")
    trash = Path(f"{final.parent}/.{final.name}.{uuid.uuid4().hex[:8]}.old")
    trash.mkdir()
    moves: list[tuple[Path, Path]] = []
    try:
        for name in sorted(own):  # the earlier output goes aside (deleted at the end)
            _move(final / name, trash / name, moves)
        for name in names:
            _move(new / name, final / name, moves)
        write_marker(final, owner, names)
    except BaseException:
        for src, dst in reversed(moves):
            os.replace(dst, src)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    fsync_dir(final)


def _move(src: Path, dst: Path, moves: list[tuple[Path, Path]]) -> None:
    os.replace(src, dst)
    moves.append((src, dst))
