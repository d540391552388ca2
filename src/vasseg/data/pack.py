"""Pack the LA training data losslessly into small chunks, and unpack them into the LA layout.

The LA images are z-scored 8-bit MRI: each volume holds at most 256 distinct float32 values. A
volume is stored as its value table plus predicted uint8 indices, LZMA-compressed, with the uint8
label beside it (:mod:`vasseg.data.pack_codec`): decoding gives back the identical float32 array
(checked against a SHA-256 of the original arrays). Cases are grouped into chunk files of at most
``--chunk-mib`` MiB so they can travel to a remote GPU machine one piece at a time; each chunk
unpacks on its own. ``--first N --last M`` packs the first N and last M ids of the list first
(the labeled and validation cases), so the first chunk holds what a run cannot do without.

    python -m vasseg.data.pack pack ../shared/data/LA .lapack --chunk-mib 60 --first 16 --last 16
    python -m vasseg.data.pack unpack .lapack /tmp/LA      # any subset of chunks present
    python -m vasseg.data.pack pack /data/LA .latest --list test.list   # the 20 test cases

Unpacking into a folder that already holds other cases adds to it (a train pack and a test pack
unpack into one LA root); an id list is written only where the folder has none (or the same).
Unpacking again skips the chunks already unpacked there (recorded with their SHA-256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
from tqdm import tqdm

from vasseg.data.la import TRAIN_DIR, case_path, check_cases_exist, read_h5_case, read_id_list
from vasseg.data.pack_codec import decode_case, encode_case
from vasseg.data.volumes import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LISTS = ("train.list", "test.list")
DONE = ".unpacked.json"  # chunk name -> SHA-256 of the chunks unpacked into a folder


def priority_order(ids: list[str], first: int = 0, last: int = 0) -> list[str]:
    """``ids`` with its first ``first`` and last ``last`` ids moved to the front (in that order)."""
    head = ids[:first]
    tail = [i for i in ids[len(ids) - last:] if i not in head] if last else []
    return head + tail + [i for i in ids if i not in head and i not in tail]


def _encoded(root: Path, ids: list[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    for case_id in tqdm(ids, desc="pack LA", unit="case"):
        image, label = read_h5_case(case_path(root, case_id))
        yield case_id, encode_case(image, label, case_path(root, case_id))


def _chunks(root: Path, ids: list[str], limit: int) -> Iterator[list[tuple[str, dict[str, bytes]]]]:
    """Encode cases in order and yield groups whose total size stays under ``limit`` bytes."""
    group: list[tuple[str, dict[str, bytes]]] = []
    size = 0
    for case_id, members in _encoded(root, ids):
        n = sum(len(v) for v in members.values()) + 1024  # zip headers
        if n > limit:
            raise DataError(f"{case_path(root, case_id)}: one case needs {n} bytes, above the chunk limit")
        if group and size + n > limit:
            yield group
            group, size = [], 0
        group.append((case_id, members))
        size += n
    if group:
        yield group


def _listed_ids(root: Path, lists: Sequence[str]) -> list[str]:
    ids: list[str] = []
    for list_name in lists:
        listed = read_id_list(root / list_name)
        check_cases_exist(root, listed, list_name)
        ids += [i for i in listed if i not in ids]
    return ids


def pack_la(root: Path, out: Path, chunk_mib: float = 60.0, lists: Sequence[str] = ("train.list",),
            first: int = 0, last: int = 0) -> list[Path]:
    """Pack every case of the id lists ``root/<lists>`` (train.list, test.list or both: the LA
    layout keeps both splits' cases in one folder) into ``out/chunk_NNN.zip`` files of at most
    ``chunk_mib`` MiB, the first ``first`` and last ``last`` ids first; returns the chunks."""
    ids = priority_order(_listed_ids(root, lists), first, last)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: output folder is not empty")
    tmp = Path(tempfile.mkdtemp(prefix=".pack-", dir=out.parent if out.parent.exists() else None))
    try:
        chunks, where = [], {}
        for i, group in enumerate(_chunks(root, ids, int(chunk_mib * 2**20))):
            path = tmp / f"chunk_{i:03d}.zip"
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
                for case_id, members in group:
                    for name, data in members.items():
                        zf.writestr(f"{case_id}/{name}", data)
                    where[case_id] = path.name
            chunks.append(path.name)
        lists = {name: (root / name).read_text() for name in LISTS if (root / name).is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"chunks": chunks, "cases": where, "lists": lists}, indent=1))
        out.mkdir(parents=True, exist_ok=True)
        for item in tmp.iterdir():
            shutil.move(str(item), out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [out / c for c in chunks]


def _read_chunk(path: Path) -> dict[str, dict[str, bytes]]:
    cases: dict[str, dict[str, bytes]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                case_id, member = name.split("/", 1)
                cases.setdefault(case_id, {})[member] = zf.read(name)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: unreadable chunk ({exc})") from None
    return cases


def write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    """Write one case in the LA release's layout (``image`` float32, ``label`` uint8), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".h5.tmp")
    with h5py.File(tmp, "w") as h:
        h.create_dataset("image", data=image, compression="gzip", compression_opts=1)
        h.create_dataset("label", data=label, compression="gzip", compression_opts=1)
    tmp.replace(path)


def _unpack_case(members: dict[str, bytes], where: str, path: Path) -> None:
    image, label = decode_case(members, where)
    write_h5(path, image, label)


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unpack_chunk(path: Path, out_root: Path, workers: int) -> list[str]:
    """Decode one chunk's cases (``workers`` processes) into the LA layout; returns their ids."""
    cases = _read_chunk(path)
    targets = {c: out_root / TRAIN_DIR / c / "mri_norm2.h5" for c in cases}
    if workers <= 1:
        for case_id, members in cases.items():
            _unpack_case(members, f"{path}:{case_id}", targets[case_id])
    else:
        with ProcessPoolExecutor(workers) as pool:
            for fut in [pool.submit(_unpack_case, m, f"{path}:{c}", targets[c]) for c, m in cases.items()]:
                fut.result()
    return list(cases)


def _check_lists(manifest: dict, packed: Path, out_root: Path) -> None:
    for name, text in manifest["lists"].items():
        if (out_root / name).is_file() and (out_root / name).read_text().split() != text.split():
            raise DataError(f"{out_root / name}: exists with other ids than the packed {name} ({packed})")


def unpack_la(packed: Path, out_root: Path, workers: int = 1) -> list[str]:
    """Rebuild the LA layout under ``out_root`` from the chunks present; returns the case ids of
    the chunks unpacked now or before (a chunk already unpacked there, same SHA-256, is skipped)."""
    manifest_path = packed / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: missing (not a packed LA folder)")
    manifest = json.loads(manifest_path.read_text())
    _check_lists(manifest, packed, out_root)  # before any case is written
    done_path = out_root / DONE
    done_chunks = json.loads(done_path.read_text()) if done_path.is_file() else {}
    done = []
    present = [c for c in manifest["chunks"] if (packed / c).is_file()]
    for chunk in tqdm(present, desc="unpack LA", unit="chunk"):
        sha = _file_sha(packed / chunk)
        ids = [c for c, ch in manifest["cases"].items() if ch == chunk]
        if done_chunks.get(chunk) == sha and all((out_root / TRAIN_DIR / c / "mri_norm2.h5").is_file() for c in ids):
            done += ids
            continue
        done += _unpack_chunk(packed / chunk, out_root, workers)
        done_chunks[chunk] = sha
        done_path.write_text(json.dumps(done_chunks, indent=1))
    for name, text in manifest["lists"].items():
        if not (out_root / name).is_file():
            (out_root / name).write_text(text)
    missing = sorted(set(manifest["cases"]) - set(done))
    if missing:
        log.warning("%d cases are in chunks not present yet: %s", len(missing), ", ".join(missing[:5]))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vasseg.data.pack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("root", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--chunk-mib", type=float, default=60.0)
    p.add_argument("--list", dest="lists", action="append", default=None,
                   help="id list(s) whose cases to pack (default train.list; e.g. --list test.list)")
    p.add_argument("--first", type=int, default=0, help="pack the first N ids first (the labeled ones)")
    p.add_argument("--last", type=int, default=0, help="then the last N ids (the validation split)")
    p = sub.add_parser("unpack")
    p.add_argument("packed", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "pack":
            chunks = pack_la(args.root, args.out, args.chunk_mib, args.lists or ("train.list",), args.first, args.last)
            for path in chunks:
                log.info("%s: %.2f MiB", path, path.stat().st_size / 2**20)
        else:
            log.info("%d cases in %s", len(unpack_la(args.packed, args.out, args.workers)), args.out)
    except DataError as exc:
        sys.stderr.write(f"vasseg pack: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
