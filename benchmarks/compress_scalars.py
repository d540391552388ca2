"""Keep the committed run folders small: gzip every ``scalars.jsonl`` under benchmarks/ into
``scalars.jsonl.gz`` (``vasseg report`` reads either) and print the size of what git tracks.

Why: a device call carries the working tree plus data in 64 MiB, and the tree's share must stay
<= 5 MiB (tests/test_tree_size.py); CPU-scale VAS runs log ~0.7 MB of scalars each. The committed
copy rounds every float to 4 significant digits (the values are float32 losses, ~7 digits; curves,
and means over many steps, are unchanged at the <= 4 digits RESULTS.md prints; 6 digits until
2026-12-07, when the protocol runs neared the limit) and drops JSON's spaces: ~0.06 MB gzipped per
VAS run instead of 0.16. A run's own folder keeps its full log. Run it after adding run folders,
then ``git add -A benchmarks``:

    python benchmarks/compress_scalars.py            # round + compress, re-round older .gz, report the size
    python benchmarks/compress_scalars.py --check    # exit 1 if an uncompressed one is left
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TREE_LIMIT_MIB = 5.0
DIGITS = 4  # significant digits kept in a committed log


def rounded_log(text: str, digits: int = DIGITS) -> bytes:
    """Every line of a ``scalars.jsonl`` text with floats rounded to ``digits`` significant digits
    (integers, strings and keys untouched; idempotent), compact separators."""
    def rnd(value: object) -> object:
        return float(f"{value:.{digits}g}") if isinstance(value, float) else value
    lines = (json.dumps({k: rnd(v) for k, v in json.loads(line).items()}, separators=(",", ":"))
             for line in text.splitlines() if line.strip())
    return "".join(f"{line}\n" for line in lines).encode()


def write_gz(target: Path, data: bytes) -> None:
    """Level 9, no name or time in the header (the same log gives the same bytes), atomically."""
    tmp = target.with_suffix(".gz.tmp")
    tmp.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    tmp.replace(target)


def tracked_mib(repo: Path = REPO) -> float:
    """Size of the files git tracks (as in the working tree), MiB."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    paths = [repo / n for n in names.decode().split("\0") if n]
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def compress(path: Path) -> Path:
    """``scalars.jsonl`` -> rounded ``scalars.jsonl.gz``, then the original goes."""
    target = path.with_suffix(".jsonl.gz")
    write_gz(target, rounded_log(path.read_text()))
    path.unlink()
    return target


def reround(path: Path) -> bool:
    """Round an older ``scalars.jsonl.gz`` in place; whether it changed."""
    old = gzip.decompress(path.read_bytes())
    new = rounded_log(old.decode())
    if new == old:
        return False
    write_gz(path, new)
    return True


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
    changed = [p for p in sorted(args.root.rglob("scalars.jsonl.gz")) if reround(p)]
    if changed:
        print(f"re-rounded {len(changed)} older logs to {DIGITS} significant digits")
    size = tracked_mib()
    print(f"tracked tree: {size:.2f} MiB (limit {TREE_LIMIT_MIB:.0f} MiB; `git add -A benchmarks` to record)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
