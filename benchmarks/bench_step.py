"""Time one training step of registered methods (median over repeats), on CPU or GPU.

    python benchmarks/bench_step.py --device cpu --patch 48 48 32 --steps 5
    python benchmarks/bench_step.py --device cuda --variants lineage,fast --methods mean_teacher,vas

Variants (each a set of engine switches; the method code is identical):
  plain    fp32, contiguous memory, vasseg's batched on-device augmentation
  amp      plain + bf16 autocast (CUDA) + channels-last 3-D
  fast     amp + torch.compile of the networks
  lineage  fp32, per-sample NumPy augmentation in a 4-worker DataLoader (the lineage's way)
  cl       fp32, channels-last 3-D (the CPU-scale configs' setting)
  bf16     cl + bf16 autocast on any device (train.amp=bf16; on a CPU: oneDNN's bf16 kernels)
The volumes are synthetic phantoms of LA size (the timing does not depend on the content).
Prints a markdown table; ``--json`` also writes the numbers. ``--interleave`` times one step of
every (method, variant) per round instead of one pair after the other: on a shared CPU host whose
speed drifts by 20 % over minutes, only interleaved medians give fair ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lineage import LineageBatcher  # noqa: E402

from vasseg.config import build_experiment  # noqa: E402
from vasseg.engine.hostmem import retain_freed_memory  # noqa: E402
from vasseg.data.splits import Split  # noqa: E402
from vasseg.data.synthetic import make_phantom_set  # noqa: E402
from vasseg.data.setup import DataBundle  # noqa: E402
from vasseg.engine.setup import build_method, seed_everything  # noqa: E402
from vasseg.engine.trainer import Trainer  # noqa: E402
from vasseg.methods import available_methods, get_method  # noqa: E402

VARIANTS = {
    "plain": {"amp": "none", "channels_last": "off", "compile": False},
    "amp": {"amp": "auto", "channels_last": "on", "compile": False},
    "fast": {"amp": "auto", "channels_last": "on", "compile": True},
    "lineage": {"amp": "none", "channels_last": "off", "compile": False},
    "cl": {"amp": "none", "channels_last": "on", "compile": False},
    "bf16": {"amp": "bf16", "channels_last": "on", "compile": False},
}


def phantoms(args: argparse.Namespace) -> DataBundle:
    shape = tuple(args.volume)
    labeled = make_phantom_set(4, shape, args.classes, seed=1)
    unlabeled = make_phantom_set(4, shape, args.classes, seed=2)
    split = Split(labeled=labeled.ids, unlabeled=[f"u{i}" for i in range(4)], val=[])
    return DataBundle(split=split, labeled=labeled, unlabeled=unlabeled, val=None)


def method_section(method: str) -> tuple[dict, bool]:
    """(method section, draws unlabeled patches) of a method name or a YAML config (an ablation row)."""
    if method.endswith(".yaml"):
        from vasseg.config import load_config, to_dict

        exp = load_config(method)
        return to_dict(exp)["method"], exp.data.unlabeled_bs > 0
    return {"name": method}, get_method(method).uses_unlabeled


def experiment(method: str, variant: str, args: argparse.Namespace):  # noqa: ANN201
    switches = VARIANTS[variant]
    section, uses_unlabeled = method_section(method)
    raw = {
        "data": {"patch_size": list(args.patch), "labeled_bs": args.labeled_bs, "num_classes": args.classes,
                 "unlabeled_bs": args.unlabeled_bs if uses_unlabeled else 0},
        "model": {"filters": args.filters},
        "method": section,
        "train": {"device": args.device, "iterations": 10**6, "progress": False, **switches,
                  "compile": switches["compile"] and not args.no_compile},
        "run": {"tensorboard": False},
    }
    return build_experiment(raw)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(method: str, variant: str, data: DataBundle, args: argparse.Namespace, folder: Path) -> Trainer:
    """A trainer of ``method`` under ``variant``'s switches, after ``args.warmup`` steps."""
    exp = experiment(method, variant, args)
    seed_everything(0)
    trainer = Trainer(exp, build_method(exp), data, folder, torch.device(args.device))
    if variant == "lineage":
        d = exp.data
        trainer.batcher = LineageBatcher(data.labeled, data.unlabeled if d.unlabeled_bs else None,
                                         d.labeled_bs, d.unlabeled_bs, d.patch_size, workers=args.workers)
    trainer.method.train()
    for _ in range(args.warmup):
        trainer.train_step()
    return trainer


def timed_step(trainer: Trainer) -> float:
    device = trainer.device
    sync(device)
    t0 = time.perf_counter()
    trainer.train_step()
    sync(device)
    return time.perf_counter() - t0


def summary(method: str, variant: str, times: list[float], peak: float) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"method": method, "variant": variant, "ms": 1000 * statistics.median(times),
            "p25": 1000 * q[0], "p75": 1000 * q[2], "peak_gib": peak, "steps": len(times)}


def time_steps(method: str, variant: str, data: DataBundle, args: argparse.Namespace) -> dict:
    """One (method, variant) after the other: peak GPU memory is that of this pair alone."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        trainer = make_trainer(method, variant, data, args, Path(tmp))
        times = [timed_step(trainer) for _ in range(args.steps)]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return summary(method, variant, times, peak)


def time_interleaved(pairs: list[tuple[str, str]], data: DataBundle, args: argparse.Namespace) -> list[dict]:
    """Round-robin: one timed step of every pair per round, so a machine whose speed drifts
    (a shared host) slows every pair alike and the ratios stay fair. No peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        trainers = [make_trainer(m, v, data, args, Path(tmp) / f"{i}") for i, (m, v) in enumerate(pairs)]
        times: list[list[float]] = [[] for _ in pairs]
        for _ in range(args.steps):
            for trainer, series in zip(trainers, times):
                series.append(timed_step(trainer))
    return [summary(m, v, t, float("nan")) for (m, v), t in zip(pairs, times)]


def show(row: dict) -> dict:
    print(f"{Path(row['method']).stem:14s} {row['variant']:8s} {row['ms']:9.1f} ms/step  "
          f"(IQR {row['p25']:.1f}-{row['p75']:.1f}, peak {row['peak_gib']:.2f} GiB)", flush=True)
    return row


def main() -> None:
    retain_freed_memory()  # as the CLI does (VASSEG_MALLOC=system: glibc's defaults)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", default=",".join(available_methods()),
                   help="registered method names and/or config files whose method section to time")
    p.add_argument("--variants", default="plain")
    p.add_argument("--patch", type=int, nargs=3, default=[112, 112, 80])
    p.add_argument("--volume", type=int, nargs=3, default=[176, 144, 88])
    p.add_argument("--labeled-bs", type=int, default=2)
    p.add_argument("--unlabeled-bs", type=int, default=2)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--filters", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--interleave", action="store_true",
                   help="time the pairs round-robin (fair ratios on a host whose speed drifts; no peak memory)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    data = phantoms(args)
    pairs = [(m, v) for m in args.methods.split(",") for v in args.variants.split(",")]
    rows = time_interleaved(pairs, data, args) if args.interleave else []
    for row in rows:
        show(row)
    for method, variant in pairs if not args.interleave else []:
        try:
            rows.append(show(time_steps(method, variant, data, args)))
        except Exception as exc:  # noqa: BLE001 - report the failure, time the rest
            print(f"{method} {variant}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    print("\n| method | variant | ms/step (median) | IQR | peak GiB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {Path(r['method']).stem} | {r['variant']} | {r['ms']:.1f} | {r['p25']:.1f}-{r['p75']:.1f} | {r['peak_gib']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
