"""Peak memory of evaluation over many cases vs few: it must not grow with their number.

    python benchmarks/bench_eval_memory.py --cases 4 44 --shape 128 128 80 --malloc keep system

Writes phantom volumes in the LA layout to a temporary folder, trains a one-step tiny run on
them (CPU), then evaluates the first N test cases in a fresh process per measurement and reports
that process's peak resident set size (``ru_maxrss``):

- ``streamed``: ``vasseg evaluate RUN --split <id list>``, which reads one case at a time;
- ``preloaded``: the same evaluation after loading every case first (``load_cases`` into one
  ``VolumeSet``), as ``vasseg evaluate`` did before cases were streamed: the reference for what
  streaming saves.

Both under vasseg's default allocator policy (``keep``: freed memory stays in the process, see
``vasseg.engine.hostmem``; its peak also depends on how the metrics thread's frees interleave with
the next case's allocations) and under glibc's defaults (``system``: ``VASSEG_MALLOC=system``).
Memory, not time, is measured: the numbers hold on a busy host. One window covers a whole
volume (``eval.patch_size`` = the volume) so that inference stays cheap on a CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from vasseg.config import build_experiment
from vasseg.data.synthetic import write_phantom_la_layout
from vasseg.engine.run import train_experiment


def peak_mib() -> float:
    """This process's peak resident set size so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, run: str, ids: str) -> None:
    """One measurement (in its own process): evaluate, then print the peak RSS in MiB.

    ``streamed`` also prints the peak before each case is read (``trace``): flat after the
    first cases when nothing accumulates.
    """
    if mode == "streamed":
        import vasseg.data.setup as setup
        from vasseg.cli import main

        trace, read_case = [], setup.read_case
        setup.read_case = lambda exp, case_id: (trace.append(peak_mib()), read_case(exp, case_id))[1]
        assert main(["evaluate", run, "--split", ids, "--device", "cpu", "--quiet", "--out", f"{ids}.eval"]) == 0
        print("trace", *(f"{t:.0f}" for t in trace))
    else:
        import torch

        from vasseg.data.la import read_id_list
        from vasseg.engine.evaluate import evaluate_cases
        from vasseg.engine.hostmem import retain_freed_memory
        from vasseg.inference.open import open_model
        from vasseg.data.setup import load_cases

        retain_freed_memory()  # as every vasseg command does
        loaded = open_model(run, "last", torch.device("cpu"))
        cases = load_cases(loaded.exp, read_id_list(ids), progress=False)
        evaluate_cases(loaded.method, cases, loaded.exp, torch.device("cpu"), progress=False)
    print(f"peak_rss_mib {peak_mib():.1f}")


def train_tiny_run(root: Path, out: Path, shape: list[int]) -> Path:
    exp = build_experiment({
        "data": {"root": str(root), "labeled": 2, "num_val": 0, "patch_size": [16, 16, 16],
                 "spacing": [1.0, 1.0, 1.0]},
        "model": {"filters": 4},
        "train": {"iterations": 1, "ckpt_every": 1, "device": "cpu", "progress": False},
        "eval": {"patch_size": shape, "stride": shape, "batch_size": 1},
        "run": {"out_dir": str(out), "tensorboard": False},
    })
    return train_experiment(exp)


def measure(mode: str, run: Path, ids: Path, malloc: str) -> tuple[float, list[str]]:
    """(peak RSS in MiB, the streamed child's peaks before each case) of one child process."""
    env = dict(os.environ, VASSEG_MALLOC="system" if malloc == "system" else "")
    proc = subprocess.run([sys.executable, __file__, "_child", mode, str(run), str(ids)],
                          capture_output=True, text=True, check=True, env=env)
    lines = {ln.split()[0]: ln.split()[1:] for ln in proc.stdout.splitlines() if ln.startswith(("peak", "trace"))}
    return float(lines["peak_rss_mib"][0]), lines.get("trace", [])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "_child":
        child(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[4, 44])
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 80])
    parser.add_argument("--malloc", nargs="+", default=["keep", "system"], choices=("keep", "system"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vasseg-evalmem-") as tmp:
        tmp_path = Path(tmp)
        root = write_phantom_la_layout(tmp_path / "LA", n_train=2, n_test=max(args.cases), shape=args.shape)
        run = train_tiny_run(root, tmp_path / "runs", args.shape)
        test_ids = (root / "test.list").read_text().split()
        case_mib = (4 + 1) * args.shape[0] * args.shape[1] * args.shape[2] / 2**20  # float32 image + uint8 label
        print(f"volumes {tuple(args.shape)}: {case_mib:.1f} MiB of image + label per case in memory")
        print("| allocator | cases | streamed (vasseg evaluate) peak RSS | preloaded peak RSS |")
        print("|---|---|---|---|")
        traces = {}
        for malloc in args.malloc:
            for n in args.cases:
                ids = tmp_path / f"first_{n}.list"
                ids.write_text("".join(f"{i}\n" for i in test_ids[:n]))
                streamed, traces[malloc] = measure("streamed", run, ids, malloc)
                preloaded, _ = measure("preloaded", run, ids, malloc)
                print(f"| {malloc} | {n} | {streamed:.0f} MiB | {preloaded:.0f} MiB |", flush=True)
        for malloc, trace in traces.items():  # of the largest case count
            print(f"{malloc}, streamed: peak RSS (MiB) before each case: {' '.join(trace)}")


if __name__ == "__main__":
    main()
