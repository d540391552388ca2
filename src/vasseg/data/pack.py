"""Pack the LA training data losslessly into small chunks, and unpack them into the LA layout.

The LA images are z-scored 8-bit MRI: each volume holds at most 256 distinct float32 values. A
volume is stored as its sorted table of distinct values (float32) plus one uint8 index per voxel,
LZMA-compressed, with the uint8 label beside it: decoding gives back the identical float32 array
(checked against a SHA-256 of the original arrays). Cases are grouped into chunk files of at most
``--chunk-mib`` MiB so they can travel to a remote GPU machine one piece at a time; each chunk
unpacks on its own.

    python -m vasseg.data.pack pack ../shared/data/LA .lapack --chunk-mib 60
    python -m vasseg.data.pack unpack .lapack /tmp/LA      # any subset of chunks present
    python -m vasseg.data.pack pack /data/LA .latest --list test.list   # the 20 test cases

Unpacking into a folder that already holds other cases adds to it (a train pack and a test pack
unpack into one LA root); an id list is written only where the folder has none (or the same).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import lzma
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np
from tqdm import tqdm

from vasseg.data.la import TRAIN_DIR, case_path, check_cases_exist, read_h5_case, read_id_list
from vasseg.data.volumes import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LISTS = ("train.list", "test.list")


def digest(image: np.ndarray, label: np.ndarray) -> str:
    """SHA-256 of the raw bytes of both arrays (what 'lossless' is checked against)."""
    h = hashlib.sha256()
    for arr in (image, label):
        h.update(str(arr.shape).encode() + str(arr.dtype).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def encode_case(image: np.ndarray, label: np.ndarray, path: Path) -> dict[str, bytes]:
    """Compressed members of one case; fails if the image has more than 256 distinct values."""
    table, index = np.unique(image, return_inverse=True)
    if table.size > 256:
        raise DataError(f"{path}: {table.size} distinct intensities; lossless uint8 packing needs <= 256")
    index = index.reshape(image.shape).astype(np.uint8)
    header = {"shape": list(image.shape), "sha256": digest(image, label)}
    return {
        "header.json": json.dumps(header).encode(),
        "table.f32": table.astype(np.float32).tobytes(),
        "index.u8.xz": lzma.compress(index.tobytes(), preset=6),
        "label.u8.xz": lzma.compress(np.ascontiguousarray(label, dtype=np.uint8).tobytes(), preset=6),
    }


def decode_case(members: dict[str, bytes], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_case`; verifies the checksum."""
    header = json.loads(members["header.json"])
    shape = tuple(header["shape"])
    table = np.frombuffer(members["table.f32"], dtype=np.float32)
    index = np.frombuffer(lzma.decompress(members["index.u8.xz"]), dtype=np.uint8).reshape(shape)
    label = np.frombuffer(lzma.decompress(members["label.u8.xz"]), dtype=np.uint8).reshape(shape)
    image = table[index]
    if digest(image, label) != header["sha256"]:
        raise DataError(f"{where}: checksum mismatch after unpacking (corrupt chunk?)")
    return image, label


def _chunks(root: Path, ids: list[str], limit: int) -> Iterator[list[tuple[str, dict[str, bytes]]]]:
    """Encode cases in order and yield groups whose total size stays under ``limit`` bytes."""
    group: list[tuple[str, dict[str, bytes]]] = []
    size = 0
    for case_id in tqdm(ids, desc="pack LA", unit="case"):
        image, label = read_h5_case(case_path(root, case_id))
        members = encode_case(image, label, case_path(root, case_id))
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


def pack_la(root: Path, out: Path, chunk_mib: float = 60.0, lists: Sequence[str] = ("train.list",)) -> list[Path]:
    """Pack every case of the id lists ``root/<lists>`` (train.list, test.list or both: the LA
    layout keeps both splits' cases in one folder) into ``out/chunk_NNN.zip`` files; returns them."""
    ids: list[str] = []
    for list_name in lists:
        listed = read_id_list(root / list_name)
        check_cases_exist(root, listed, list_name)
        ids += [i for i in listed if i not in ids]
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


def unpack_la(packed: Path, out_root: Path) -> list[str]:
    """Rebuild the LA layout under ``out_root`` from the chunks present; returns the case ids."""
    manifest_path = packed / MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: missing (not a packed LA folder)")
    manifest = json.loads(manifest_path.read_text())
    for name, text in manifest["lists"].items():  # checked before any case is written
        if (out_root / name).is_file() and (out_root / name).read_text().split() != text.split():
            raise DataError(f"{out_root / name}: exists with other ids than the packed {name} ({packed})")
    done = []
    present = [c for c in manifest["chunks"] if (packed / c).is_file()]
    for chunk in tqdm(present, desc="unpack LA", unit="chunk"):
        for case_id, members in _read_chunk(packed / chunk).items():
            image, label = decode_case(members, f"{packed / chunk}:{case_id}")
            write_h5(out_root / TRAIN_DIR / case_id / "mri_norm2.h5", image, label)
            done.append(case_id)
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
    p = sub.add_parser("unpack")
    p.add_argument("packed", type=Path)
    p.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "pack":
            for path in pack_la(args.root, args.out, args.chunk_mib, args.lists or ("train.list",)):
                log.info("%s: %.1f MiB", path, path.stat().st_size / 2**20)
        else:
            log.info("unpacked %d cases into %s", len(unpack_la(args.packed, args.out)), args.out)
    except DataError as exc:
        sys.stderr.write(f"vasseg pack: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
