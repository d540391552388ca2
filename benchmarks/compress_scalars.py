"""Keep the committed run folders small: gzip every ``scalars.jsonl`` under benchmarks/ into
``scalars.jsonl.gz`` (``vasseg report`` reads either) and print the size of what git tracks.

Why: a device call carries the working tree plus data in 64 MiB, and the tree's share must stay
<= 5 MiB (tests/test_tree_size.py); CPU-scale VAS runs log ~0.7 MB of scalars each, ~0.16 MB
gzipped. Run it after adding run folders, then ``git add -A benchmarks``:

    python benchmarks/compress_scalars.py            # compress, then report the tracked size
    python benchmarks/compress_scalars.py --check    # exit 1 if an uncompressed one is left
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TREE_LIMIT_MIB = 5.0


def tracked_mib(repo: Path = REPO) -> float:
    """Size of the files git tracks (as in the working tree), MiB."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    paths = [repo / n for n in names.decode().split("\0") if n]
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def compress(path: Path) -> Path:
    """``scalars.jsonl`` -> ``scalars.jsonl.gz`` (level 9, no name or time in the header, so the
    same log gives the same bytes), then the original goes."""
    target = path.with_suffix(".jsonl.gz")
    tmp = target.with_suffix(".gz.tmp")
    tmp.write_bytes(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))
    tmp.replace(target)
    path.unlink()
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "benchmarks")
    parser.add_argument("--check", action="store_true", help="only list uncompressed logs (exit 1 if any)")
    args = parser.parse_args(argv)
    found = sorted(args.root.rglob("scalars.jsonl"))
    if args.check:
        for path in found:
            print(f"uncompressed: {path}")
        return 1 if found else 0
    for path in found:
        before = path.stat().st_size
        print(f"{compress(path)}: {before / 2**20:.2f} -> {path.with_suffix('.jsonl.gz').stat().st_size / 2**20:.2f} MiB")
    size = tracked_mib()
    print(f"tracked tree: {size:.2f} MiB (limit {TREE_LIMIT_MIB:.0f} MiB; `git add -A benchmarks` to record)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
