"""Keep the committed run folders small: gzip every ``scalars.jsonl`` under benchmarks/ into
``scalars.jsonl.gz`` (``vasseg report`` reads either) and print the size of what git tracks.

Why: a device call carries the working tree plus data in 64 MiB, and the tree's share must stay
<= 5 MiB (tests/test_tree_size.py); CPU-scale VAS runs log ~0.7 MB of scalars each. The committed
copy rounds every float to 4 significant digits (the values are float32 losses, ~7 digits; curves,
and means over many steps, are unchanged at the <= 4 digits RESULTS.md prints; 6 digits until
2026-12-07, when the protocol runs neared the limit) and drops JSON's spaces: ~0.06 MB gzipped per
VAS run instead of 0.16. Superseded runs (the folders in ``ARCHIVED``: searches, confirmations,
the bf16 check, the replaced VAS base) keep one row per 10 steps, each the mean of those steps'
values (``step`` = the window's last step), so means over step ranges that are multiples of 10 are
unchanged; their decisions rest on their ``eval/`` files, which stay whole. A run's own folder
keeps its full log. Run it after adding run folders, then ``git add -A benchmarks``:

    python benchmarks/compress_scalars.py            # round + compress, re-round older .gz, report the size
    python benchmarks/compress_scalars.py --check    # exit 1 if an uncompressed one is left
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TREE_LIMIT_MIB = 5.0
DIGITS = 4  # significant digits kept in a committed log
WINDOW = 10  # steps per row in an archived log
# Superseded run folders (relative to benchmarks/): their logs are window-averaged. Added 2026-12-07
# when issue 27's remaining ~20 runs would not fit under the limit otherwise.
ARCHIVED = ("la_cv_runs/la_cv_search", "la_cv_runs/la_cv_search2", "la_cv_runs/la_cv_confirm",
            "la_cv4_runs/la_cv4_search", "la_cv4_runs/la_cv4_vas_base", "la_cv4_runs/la_cv4_bf16")


def rounded_log(text: str, digits: int = DIGITS) -> bytes:
    """Every line of a ``scalars.jsonl`` text with floats rounded to ``digits`` significant digits
    (integers, strings and keys untouched; idempotent), compact separators."""
    def rnd(value: object) -> object:
        return float(f"{value:.{digits}g}") if isinstance(value, float) else value
    lines = (json.dumps({k: rnd(v) for k, v in json.loads(line).items()}, separators=(",", ":"))
             for line in text.splitlines() if line.strip())
    return "".join(f"{line}\n" for line in lines).encode()


def windowed_log(text: str, window: int = WINDOW) -> str:
    """Rows of a ``scalars.jsonl`` text averaged over consecutive blocks of ``window`` rows: numeric
    values are means over the rows that have the key (NaN and inf carry through), ``step`` and the
    non-numeric values are the block's last. A log already at ``window`` steps per row comes back as is."""
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    steps = [r["step"] for r in rows if "step" in r]
    if len(steps) < 2 or steps[1] - steps[0] >= window:
        return text
    out = []
    for start in range(0, len(rows), window):
        block = rows[start:start + window]
        row = dict(block[-1])
        for key in {k for r in block for k in r} - {"step"}:
            vals = [r[key] for r in block if key in r]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                row[key] = math.fsum(vals) / len(vals)  # fsum: a constant stays exact
        out.append(json.dumps(row))
    return "".join(f"{line}\n" for line in out)


def archived(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in one of the ``ARCHIVED`` folders under ``root``."""
    return any(path.is_relative_to(root / folder) for folder in ARCHIVED)


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


def compress(path: Path, window: bool = False) -> Path:
    """``scalars.jsonl`` -> rounded (and with ``window``, window-averaged) ``scalars.jsonl.gz``,
    then the original goes."""
    target = path.with_suffix(".jsonl.gz")
    text = path.read_text()
    write_gz(target, rounded_log(windowed_log(text) if window else text))
    path.unlink()
    return target


def reround(path: Path, window: bool = False) -> bool:
    """Round (and with ``window``, window-average) an older ``scalars.jsonl.gz`` in place; whether
    it changed."""
    old = gzip.decompress(path.read_bytes())
    new = rounded_log(windowed_log(old.decode()) if window else old.decode())
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
        print(f"{compress(path, archived(path, args.root))}: {before / 2**20:.2f} -> {path.with_suffix('.jsonl.gz').stat().st_size / 2**20:.2f} MiB")
    changed = [p for p in sorted(args.root.rglob("scalars.jsonl.gz")) if reround(p, archived(p, args.root))]
    if changed:
        print(f"rewrote {len(changed)} older logs ({DIGITS} significant digits; archived ones {WINDOW}-step means)")
    size = tracked_mib()
    print(f"tracked tree: {size:.2f} MiB (limit {TREE_LIMIT_MIB:.0f} MiB; `git add -A benchmarks` to record)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
