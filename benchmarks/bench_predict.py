"""Per-case inference time of every window mode and precision, and our sliding window against MONAI's.

    python benchmarks/bench_predict.py modes --cases 3 --modes overlap,whole --precisions fp32,bf16
    python benchmarks/bench_predict.py monai --cases 2 --repeats 3

``modes``: the lineage's full-resolution VNet (112x112x80 patch, filters 16, random weights: the
time does not depend on them) on real LA images (``--data``, z-scored, their own shapes), each
(mode, precision) once per case, the order rotating from case to case. Modes: ``stride`` (the
dense 18x18x4), ``stride2x`` (36x36x8), ``overlap`` (0.5), ``overlap0.75``, ``whole``; ``--skip K``
starts after the first K ids of ``train.list``. A first, untimed case warms the kernels up (not for ``stride``, the dense 18x18x4, whose 30-60 windows per case
amortise them; tens of seconds per case: give it its own run); a new shape still costs oneDNN a
kernel set in ``whole`` mode, and that cost is in the numbers (every case of a real dataset has
its own shape).

``monai``: the dense windows of the CPU-scale protocol (48x48x32 patch, stride 9x9x2, LA images
down-sampled by 2) through :func:`vasseg.inferer.sliding.sliding_window_probs` and MONAI's
``sliding_window_inference`` (``mode="constant"``, per-axis overlap ``1 - stride / patch``, which
gives the same windows), the same predictor, interleaved; their largest difference is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from vasseg.engine.hostmem import retain_freed_memory
from vasseg.inferer.sliding import sliding_window_probs
from vasseg.models.outputs import probs_from_logits
from vasseg.inferer.precision import cpu_bf16_reason
from vasseg.inferer.windows import Windows, infer_probs
from vasseg.models.vnet import VNet

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "LA"
MODES = {"stride": Windows("stride"), "stride2x": Windows("stride", (36, 36, 8)),
         "overlap": Windows("overlap", overlap=0.5), "overlap0.75": Windows("overlap", overlap=0.75),
         "whole": Windows("whole")}
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}



def make_predictor(net: torch.nn.Module):  # noqa: ANN201 - a Predictor
    """The network's softmax probabilities of a batch of windows."""
    return lambda windows: probs_from_logits(net(windows).logits.float(), "softmax")

def la_images(root: Path, count: int, skip: int = 0) -> list[tuple[str, torch.Tensor]]:
    """The first ``count`` training images after ``skip``, z-scored, ``(1, X, Y, Z)`` float32."""
    ids = (root / "train.list").read_text().split()[skip : skip + count]
    out = []
    for case in ids:
        with h5py.File(root / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", "r") as f:
            image = f["image"][()].astype(np.float32)
        out.append((case, torch.from_numpy((image - image.mean()) / (image.std() + 1e-8))[None]))
    return out


def network(channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    net = VNet(in_channels=1, num_classes=2, filters=16).eval()
    return net.to(memory_format=torch.channels_last_3d) if channels_last else net


def run_modes(args: argparse.Namespace) -> None:
    net = network(args.channels_last)
    predict = make_predictor(net)
    combos = [(m, p) for m in args.modes.split(",") for p in args.precisions.split(",")]
    patch, stride = (112, 112, 80), (18, 18, 4)
    warm, *cases = la_images(Path(args.data), args.cases + 1, args.skip)
    for mode, prec in [c for c in combos if c[0] != "stride"]:  # untimed: the window shapes' kernels once
        infer_probs(predict, warm[1], patch, MODES[mode], stride, 2, args.batch, dtype=PRECISIONS[prec],
                    channels_last=args.channels_last)
    times: dict[tuple[str, str], list[float]] = {c: [] for c in combos}
    for i, (case, image) in enumerate(cases):
        order = combos[i % len(combos):] + combos[: i % len(combos)]
        for mode, prec in order:
            start = time.perf_counter()
            infer_probs(predict, image, patch, MODES[mode], stride, 2, args.batch, dtype=PRECISIONS[prec],
                        channels_last=args.channels_last)
            times[(mode, prec)].append(time.perf_counter() - start)
        shape = "x".join(map(str, image.shape[1:]))
        print(f"{case} ({shape}): " + ", ".join(f"{m} {p} {times[(m, p)][-1]:.2f}s" for m, p in combos),
              file=sys.stderr, flush=True)
    print(f"VNet filters 16, patch 112x112x80, {len(cases)} LA cases, channels_last={args.channels_last}, "
          f"torch threads {torch.get_num_threads()}, CPU bf16: {cpu_bf16_reason()}\n")
    print("| mode | precision | s/case (median) | min | max |\n|---|---|---|---|---|")
    for (mode, prec), values in times.items():
        print(f"| {MODES[mode].describe(stride)} | {prec} | {statistics.median(values):.2f} | "
              f"{min(values):.2f} | {max(values):.2f} |")


def run_monai(args: argparse.Namespace) -> None:
    from monai.inferers import sliding_window_inference

    predict = make_predictor(network(False))  # the evaluate path: contiguous
    patch, stride = (48, 48, 32), (9, 9, 2)
    overlap = [1 - s / p for s, p in zip(stride, patch)]
    images = [(c, F.interpolate(x[None], scale_factor=0.5, mode="trilinear", align_corners=False)[0])
              for c, x in la_images(Path(args.data), args.cases)]
    dtype = PRECISIONS[args.precisions.split(",")[0]]

    def ours(x: torch.Tensor) -> torch.Tensor:
        return infer_probs(predict, x, patch, Windows("stride", stride), stride, 2, args.batch, dtype=dtype)

    def theirs(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            return sliding_window_inference(x[None], roi_size=patch, sw_batch_size=args.batch, predictor=predict,
                                            overlap=overlap, mode="constant")[0].float()

    ours(images[0][1]), theirs(images[0][1])  # warm-up
    times: dict[str, list[float]] = {"vasseg": [], "monai": []}
    worst = 0.0
    for r in range(args.repeats):
        for case, x in images:
            results = {}
            for name, fn in (("vasseg", ours), ("monai", theirs))[:: 1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                results[name] = fn(x)
                times[name].append(time.perf_counter() - start)
            worst = max(worst, float((results["vasseg"] - results["monai"]).abs().max()))
            print(f"{case} repeat {r}: vasseg {times['vasseg'][-1]:.2f}s, monai {times['monai'][-1]:.2f}s",
                  file=sys.stderr, flush=True)
    ratio = statistics.median(times["monai"]) / statistics.median(times["vasseg"])
    print(f"dense windows 48x48x32 / 9x9x2, {len(images)} half-resolution LA cases x {args.repeats} repeats, "
          f"{args.precisions.split(',')[0]}, batch {args.batch}; largest probability difference {worst:.2e}\n")
    print("| sliding window | s/case (median) | min | max |\n|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    print(f"\nMONAI / vasseg median time: {ratio:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("modes", "monai"))
    parser.add_argument("--data", default=str(DATA), help="the LA dataset folder")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--skip", type=int, default=0, help="modes: start after this many train.list ids "
                        "(split a long measurement into short runs)")
    parser.add_argument("--modes", default="overlap,whole")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=3, help="monai: rounds over the cases")
    parser.add_argument("--batch", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--contiguous", dest="channels_last", action="store_false",
                        help="modes: contiguous network and input (default: channels-last 3-D, as vasseg predict)")
    args = parser.parse_args(argv)
    retain_freed_memory()
    torch.set_grad_enabled(False)
    run_modes(args) if args.what == "modes" else run_monai(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
