"""``vasseg report RUN [RUN ...]``: tables and figures (markdown + HTML + PNG) from run folders.

Imported by :mod:`vasseg.cli` to build the parser, so only ``argparse`` is imported at module
level; the report's heavy imports (torch, matplotlib, scikit-learn) happen in :func:`run`.
"""

from __future__ import annotations

import argparse

SKIP_HELP = "tables, boxplot, qualitative (slices + render3d), slices, render3d, features, snapshots, curves"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``report`` subcommand's flags."""
    parser.add_argument("runs", nargs="+", help="run folders, or folders searched (recursively) for run folders")
    parser.add_argument("--out", default="report", help="report folder to write (default: ./report)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder that holds other files (only an earlier report is replaced)")
    parser.add_argument("--eval", dest="eval_name", default="val_last",
                        help="evaluation folder of each run: eval/<split>_<checkpoint>, e.g. val_last "
                             "(default), test_last, test_best, test_step_006000")
    parser.add_argument("--grid", default="primary", choices=("primary", "native", "model"),
                        help="scoring grid to read: primary (default: cases.csv) or cases_<grid>.csv")
    parser.add_argument("--reference", help="method the Wilcoxon tests compare against (default: supervised)")
    parser.add_argument("--cases", help="comma-separated case ids for the qualitative figures "
                                        "(default: the median and the lowest mean Dice over all methods)")
    parser.add_argument("--layer", default="decoder:3",
                        help="feature layer: encoder:0..4 or decoder:0..3 (default decoder:3, the last map)")
    parser.add_argument("--embedding", default="auto", choices=("auto", "tsne", "umap"),
                        help="2-D embedding of features (auto: umap when installed, else t-SNE)")
    parser.add_argument("--feature-run", help="method shown beside the baseline in the feature figure (default: vas)")
    parser.add_argument("--feature-baseline", help="baseline method of the feature figure (default: the reference)")
    parser.add_argument("--feature-voxels", type=int, default=128, help="voxels per class per volume (default 128)")
    parser.add_argument("--feature-cases", type=int, default=4,
                        help="labeled and unlabeled volumes each for the features (default 4)")
    parser.add_argument("--feature-points", type=int, default=2400,
                        help="most voxels per embedding, subsampled per class and stream (default 2400)")
    parser.add_argument("--min-pairs", type=int, default=6,
                        help="fewest untied case pairs for a Wilcoxon p-value (default 6)")
    parser.add_argument("--slice-axis", type=int, default=2, help="axis of the 2-D slices (default 2)")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to leave out: {SKIP_HELP}")
    parser.add_argument("--data-root", help="dataset folder, if it moved since training")
    parser.add_argument("--device", default="auto", help="device for inference (default: auto)")
    parser.add_argument("--title", default="vasseg report", help="title of the report (default: vasseg report)")


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def run(args: argparse.Namespace) -> int:
    """Build the report; prints the path of ``report.html``."""
    from vasseg.report.build import ReportOptions, build_report

    options = ReportOptions(
        eval_name=args.eval_name, grid="" if args.grid == "primary" else args.grid, reference=args.reference, cases=_csv(args.cases), layer=args.layer,
        device=args.device, data_root=args.data_root, skip=frozenset(_csv(args.skip)),
        embedding=args.embedding, feature_run=args.feature_run, feature_baseline=args.feature_baseline,
        feature_voxels=args.feature_voxels, feature_cases=args.feature_cases,
        feature_points=args.feature_points, min_pairs=args.min_pairs,
        slice_axis=args.slice_axis, title=args.title, progress=not args.quiet,
    )
    html = build_report(list(args.runs), args.out, options, overwrite=args.overwrite)
    print(html)
    return 0
