"""Command line: ``vasseg demo | train | evaluate | predict | export | methods``.

Errors at the boundary (bad config, missing file, bad data, unsafe checkpoint: a
:class:`vasseg.errors.VassegError`, or an OS error naming a path) print one line naming the problem
and exit with status 2; ``--debug`` shows the traceback instead. Any other exception is a bug: its
traceback and a line asking for a report, exit status 70.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

log = logging.getLogger("vasseg")


DEVICE_HELP = "auto (CUDA when available, default), cpu, cuda or cuda:N"
OVERWRITE_FOLDER_HELP = ("write into an output folder that holds other files; only this command's own earlier "
                         "output is replaced, other files stay")
CHECKPOINT_HELP = "for a run folder: last (default) or best (validation-selected)"


def _add_inference(p: argparse.ArgumentParser, precision: str, windows: str) -> None:
    """--precision, --window, --stride, --overlap (see vasseg.inferer.windows); defaults named in the help."""
    p.add_argument("--precision", default=precision, choices=("auto", "fp32", "bf16"),
                   help=f"compute precision; auto: bf16 on CUDA and on CPUs with bf16 instructions, else fp32 "
                        f"(default: {precision})")
    p.add_argument("--window", choices=("sliding", "whole"),
                   help=f"whole: one forward pass on the volume padded to a multiple of 16 (overlap windows when "
                        f"memory does not allow it); sliding: windows (default: {windows})")
    p.add_argument("--stride", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="sliding windows at this stride in the model's voxels, probabilities averaged")
    p.add_argument("--overlap", type=float, metavar="F",
                   help="sliding windows sharing this fraction of the patch, Gaussian-weighted (nnU-Net: 0.5)")


def _inference_args(args: argparse.Namespace, command: str) -> dict[str, object]:
    """``precision`` and ``windows`` keywords from the flags of :func:`_add_inference`."""
    from vasseg.inferer.windows import EVALUATE_DEFAULT, PREDICT_DEFAULT, windows_from_options

    default = PREDICT_DEFAULT if command == "predict" else EVALUATE_DEFAULT
    return {"precision": args.precision,
            "windows": windows_from_options(args.window, args.stride, args.overlap, default)}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    """The ``predict`` subcommand and its flags."""
    p = sub.add_parser("predict", help="segment images (a file, a folder or a glob) into NIfTI label maps")
    p.add_argument("model", help="run folder, checkpoint file or exported model file (.safetensors)")
    p.add_argument("input", help="image (.nii/.nii.gz or LA .h5), a folder of them, or a quoted glob pattern")
    p.add_argument("output", help="label map (.nii.gz) for one input, else a folder (created) of <case>.nii.gz")
    p.add_argument("--checkpoint", default="last", help=CHECKPOINT_HELP)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>.npz beside each label map: float16 class probabilities (K, X, Y, Z)")
    p.add_argument("--tta", action="store_true", help="average over the 4 flips of the x-y plane (4x slower)")
    p.add_argument("--reference", metavar="NIFTI",
                   help=".h5 inputs: take the affine from this NIfTI of the same shape (several inputs: a folder of "
                        "<case>.nii.gz)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help=".h5 inputs without --reference: voxel size in mm (default: the model's data.spacing)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs: a single output file (even an input image), or in a folder "
                        "predict's own earlier label maps (other files there stay)")
    _add_inference(p, "auto", "the config's eval.stride, as evaluate")
    _add_common(p)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    """The ``demo`` subcommand and its flags."""
    p = sub.add_parser("demo", help="phantoms -> train supervised + mean teacher on CPU -> evaluate -> table")
    p.add_argument("--out", default="vasseg-demo", help="output folder (default: ./vasseg-demo)")
    p.add_argument("--iterations", type=int, default=None, help="training steps per method (default: the demo's)")
    p.add_argument("--full-report", action="store_true",
                   help="add the report's feature-space figures (t-SNE/UMAP; minutes on a CPU)")
    p.add_argument("--data-only", metavar="DIR",
                   help="only write the phantoms (LA layout) into the new or empty folder DIR, to train any "
                        "config on (configs/phantoms/demo.yaml fits them)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="with --data-only: phantom size in voxels (default: the demo's 40 40 40)")
    p.add_argument("--cases", type=int, nargs=2, metavar=("TRAIN", "TEST"),
                   help="with --data-only: phantoms in train.list and test.list (default: the demo's 16 6)")
    _add_common(p)


def build_parser() -> argparse.ArgumentParser:
    from vasseg import __version__

    parser = argparse.ArgumentParser(prog="vasseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vasseg {__version__}",
                        help="print the version of vasseg and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an experiment from a YAML config")
    p.add_argument("--config", required=True, help="experiment YAML (e.g. configs/la/vas_16.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.iterations=6000 data.root=/d/LA")
    p.add_argument("--resume", action="store_true", help="continue this configuration's run from its latest checkpoint")
    p.add_argument("--out-dir", help="parent folder of the run folder (overrides run.out_dir)")
    p.add_argument("--deterministic", action="store_true",
                   help="train.deterministic=true: seeded, deterministic algorithms only (slower on GPU)")
    _add_common(p)

    p = sub.add_parser("evaluate", help="score a trained run on a split (per-case CSV + summary table)")
    p.add_argument("run", help="run folder, checkpoint file or exported model file (.safetensors)")
    p.add_argument("--split", default="val", help="val (default), test, labeled, unlabeled or an id-list file")
    p.add_argument("--data-root", help="dataset folder, if it moved since training")
    p.add_argument("--checkpoint", default="last", help="last (default) or best (validation-selected)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--out", help="output folder (default: <run>/eval/<split>_<checkpoint>)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_FOLDER_HELP)
    _add_inference(p, "fp32", "the config's eval.stride, the paper protocol")
    _add_common(p)

    _add_predict(sub)

    p = sub.add_parser("export", help="write a run's network as one portable model file (.safetensors)")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("output", help="model file to write (.safetensors)")
    p.add_argument("--checkpoint", default="last", help=CHECKPOINT_HELP)
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"),
                   help="precision of the weights: fp16 (default, half the size), bf16, or fp32 (exact)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    _add_common(p)

    _add_demo(sub)

    p = sub.add_parser("methods", help="list the registered methods")
    _add_common(p)
    for name, (module, text) in PLUGIN_COMMANDS.items():
        plugin = _plugin(module)
        if plugin is not None:
            p = sub.add_parser(name, help=text)
            plugin.add_arguments(p)
            _add_common(p)
    return parser


# Subcommands implemented next to their feature: the module provides ``add_arguments(parser)`` and
# ``run(args) -> int`` and keeps heavy imports inside ``run``.
PLUGIN_COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("vasseg.data.prepare_cli",
                "prepare a NIfTI dataset (BTCV, MSD or plain image/label pairs) for training"),
    "report": ("vasseg.report.cli", "tables and figures (markdown + HTML + PNG) from run folders"),
    "sweep": ("vasseg.sweep.cli", "train configs x seeds x overrides, several runs at once, with a summary"),
}


def _plugin(module: str):  # noqa: ANN202 - a module object
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def setup_logging(debug: bool, quiet: bool) -> None:
    """Console: INFO, WARNING with ``--quiet``, DEBUG with ``--debug``. vasseg's own records stay
    at INFO or finer, so a run folder's ``train.log`` is complete whatever the console shows."""
    console = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=console, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:  # basicConfig's
            handler.setLevel(console)
    logging.getLogger("vasseg").setLevel(min(console, logging.INFO))


def cmd_train(args: argparse.Namespace) -> int:
    from vasseg.config import load_config
    from vasseg.training import train

    overrides = list(args.overrides) + ([f"run.out_dir={args.out_dir}"] if args.out_dir else [])
    if args.deterministic:
        overrides.append("train.deterministic=true")
    if args.quiet:
        overrides.append("train.progress=false")
    exp = load_config(args.config, overrides)
    run_dir = train(exp, resume=args.resume)  # with the hooks the config asks for (feature snapshots)
    print(run_dir)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vasseg.inference.evaluate import evaluate_run

    out_dir, table = evaluate_run(args.run, args.split, args.checkpoint, args.data_root, args.device,
                                  args.out, progress=not args.quiet, overwrite=args.overwrite,
                                  **_inference_args(args, "evaluate"))
    print(table)
    print(f"results: {out_dir}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from vasseg.inference.predict import PredictionFailed, PredictOptions, predict_paths

    options = PredictOptions(
        checkpoint=args.checkpoint, device=args.device, save_probabilities=args.save_probabilities, tta=args.tta,
        reference=args.reference, spacing=tuple(args.spacing) if args.spacing else None, overwrite=args.overwrite,
        progress=not args.quiet, **_inference_args(args, "predict"),
    )
    result = predict_paths(args.model, args.input, args.output, options)
    for path in result.written:
        print(path)
    if result.failed:
        raise PredictionFailed(result.summary())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vasseg.inference.export import export_run

    print(export_run(args.run, args.output, args.checkpoint, args.dtype, args.overwrite))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vasseg.demo import run_demo, write_phantoms
    from vasseg.errors import ConfigError

    if args.data_only is None and (args.shape or args.cases):
        raise ConfigError("--shape and --cases go with --data-only DIR")
    if args.data_only is not None:
        print(write_phantoms(args.data_only, args.shape, args.cases), end="")
        return 0
    print(run_demo(args.out, iterations=args.iterations, progress=not args.quiet, full_report=args.full_report))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from vasseg.methods import available_methods

    print("\n".join(available_methods()))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "demo": cmd_demo,
    "methods": cmd_methods,
}


BUG_EXIT = 70  # EX_SOFTWARE: an internal error (sysexits.h)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug, args.quiet)
    from vasseg.engine.hostmem import retain_freed_memory

    retain_freed_memory()  # large CPU tensors without page faults (VASSEG_MALLOC=system: off)
    try:
        if args.command in PLUGIN_COMMANDS:
            return _plugin(PLUGIN_COMMANDS[args.command][0]).run(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("vasseg: interrupted", file=sys.stderr)
        return 130
    except _interrupted() as exc:  # SIGTERM/SIGINT during training: checkpoint saved
        print(f"vasseg {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into the user's errors and bugs
        return _failure(args, exc)


def _failure(args: argparse.Namespace, exc: Exception) -> int:
    """A user error (:func:`vasseg.errors.is_user_error`): one line, exit 2. Anything else is a bug:
    the traceback and a line asking for a report, exit :data:`BUG_EXIT` (``--debug``: re-raised)."""
    import traceback

    from vasseg.errors import BUG_REPORT, is_user_error

    if args.debug or _out_of_memory(exc):
        raise exc  # out of memory: the machine's limit, not a bug; its traceback as before
    if is_user_error(exc):
        print(f"vasseg {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    traceback.print_exception(exc, file=sys.stderr)
    print(f"vasseg {args.command}: {BUG_REPORT}", file=sys.stderr)
    return BUG_EXIT


def _out_of_memory(exc: Exception) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"  # torch's, without torch


def _interrupted() -> type[BaseException]:
    from vasseg.engine.trainer import TrainingInterrupted

    return TrainingInterrupted


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
