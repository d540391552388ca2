"""Kept for the commands recorded in RESULTS.md: forwards to ``vasseg sweep`` (see
:mod:`vasseg.sweep.runner`), reading the old ``--parallel N`` as ``--jobs N``.

    python benchmarks/sweep.py --configs configs/la_cpu/*_8.yaml --seeds 1337 1338 --out runs/sweep -- ...
"""

import sys

from vasseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *("--jobs" if a == "--parallel" else a for a in sys.argv[1:])]))
