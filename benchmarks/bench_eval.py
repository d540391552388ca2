"""Evaluation speed: our metrics vs medpy, and our evaluation loop vs the lineage's.

    python benchmarks/bench_eval.py metrics --cases 20
    python benchmarks/bench_eval.py evaluate --cases 20 --device cuda

``metrics``: HD95 + ASD (+ Dice, Jaccard) of LA-sized masks (176x144x88, realistic atrium-like
blobs): ``vasseg.metrics.binary_metrics`` vs medpy ``binary.dc/jc/hd95/asd``. Results must agree.
``evaluate``: whole-case evaluation (sliding window 112x112x80, strides 18/18/4, the lineage's
VNet with random weights, then metrics) of N LA-sized volumes: ``vasseg.engine.evaluate`` (windows
batched on the device, metrics in the masks' bounding box on a worker thread overlapping the
next case's inference) vs the lineage (one window per forward with host-side NumPy accumulation,
then medpy on the full arrays). The network is shared; the per-case Dice is checked to agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lineage import lineage_sliding_window  # noqa: E402

from vasseg.config import build_experiment  # noqa: E402
from vasseg.engine.hostmem import retain_freed_memory  # noqa: E402
from vasseg.data.synthetic import make_phantom  # noqa: E402
from vasseg.data.volumes import Case, VolumeSet  # noqa: E402
from vasseg.engine.evaluate import evaluate_cases  # noqa: E402
from vasseg.engine.setup import build_method  # noqa: E402
from vasseg.metrics import binary_metrics, dice  # noqa: E402

SHAPE = (176, 144, 88)


def masks(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs (prediction-like, reference) of LA-sized blobs that overlap imperfectly."""
    out = []
    for i in range(n):
        _, ref = make_phantom(SHAPE, 2, seed=100 + i)
        _, other = make_phantom(SHAPE, 2, seed=100 + i)
        pred = np.roll(ref, shift=(2, -1, 1), axis=(0, 1, 2)) | (other & np.roll(ref, 3, axis=0))
        out.append((pred.astype(bool), ref.astype(bool)))
    return out


def medpy_metrics(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float, float]:
    from medpy.metric import binary

    return binary.dc(pred, ref), binary.jc(pred, ref), binary.hd95(pred, ref), binary.asd(pred, ref)


def bench_metrics(args: argparse.Namespace) -> None:
    pairs = masks(args.cases)
    t0 = time.perf_counter()
    ours = [binary_metrics(p, r) for p, r in pairs]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs = [medpy_metrics(p, r) for p, r in pairs]
    t_medpy = time.perf_counter() - t0
    worst = max(abs(o.hd95 - t[2]) + abs(o.asd - t[3]) + abs(o.dice - t[0]) for o, t in zip(ours, theirs))
    print(f"| metrics of {args.cases} LA-sized pairs | vasseg {t_ours:.2f} s | medpy {t_medpy:.2f} s | "
          f"ratio {t_medpy / t_ours:.2f}x | max |difference| {worst:.1e} |")


def bench_evaluate(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    exp = build_experiment({"method": {"name": "supervised"}, "eval": {"batch_size": args.batch},
                            "train": {"device": args.device}})
    method = build_method(exp).to(device).eval()  # random weights: the timing is what matters
    volumes = [make_phantom(SHAPE, 2, seed=200 + i) for i in range(args.cases)]
    cases = VolumeSet([Case(id=f"case{i:02d}", image=torch.from_numpy(img)[None], label=torch.from_numpy(lab),
                            spacing=(0.625,) * 3) for i, (img, lab) in enumerate(volumes)])
    patch, stride = exp.eval_patch, exp.eval.stride

    def lineage() -> list[np.ndarray]:
        preds = []
        for image, label in volumes:
            pred = lineage_sliding_window(method.student, image, patch, stride, 2, device).astype(bool)
            if pred.any():
                medpy_metrics(pred, label.astype(bool))
            preds.append(pred)
        return preds

    if device.type == "cuda":  # warm up cuDNN and the allocator for both
        with torch.no_grad():
            method.student(torch.zeros(args.batch, 1, *patch, device=device))
    t0 = time.perf_counter()
    rows = evaluate_cases(method, cases, exp, device, progress=False)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = lineage()
    t_lin = time.perf_counter() - t0
    ours_dice = np.array([r.dice for r in rows])
    theirs_dice = np.array([dice(p, lab.astype(bool)) if p.any() or lab.any() else 1.0
                            for p, (_, lab) in zip(preds, volumes)])
    print(f"| evaluate {args.cases} LA-sized volumes ({device.type}) | vasseg {t_ours:.1f} s | lineage {t_lin:.1f} s "
          f"| ratio {t_lin / t_ours:.2f}x | max Dice difference {np.nanmax(np.abs(ours_dice - theirs_dice)):.1e} |")


def main() -> None:
    retain_freed_memory()  # as the CLI does (VASSEG_MALLOC=system: glibc's defaults)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["metrics", "evaluate"])
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    {"metrics": bench_metrics, "evaluate": bench_evaluate}[args.what](args)


if __name__ == "__main__":
    main()
