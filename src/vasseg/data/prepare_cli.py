"""The ``vasseg prepare`` command: its arguments and its run (the work: :mod:`vasseg.data.prepare`)."""

from __future__ import annotations

import argparse

from vasseg.data.prepare import (
    PAPER_SHAPE,
    PAPER_TEST_FRACTION,
    PAPER_WINDOW,
    PrepareOptions,
    prepare_dataset,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vasseg prepare``."""
    parser.add_argument("sources", nargs="*", metavar="SOURCE",
                        help="dataset folder: BTCV-style img*/label* NIfTI pairs or an MSD folder with dataset.json "
                             "(or give --images and --labels)")
    parser.add_argument("--images", help="instead of SOURCE: a folder of images matched to --labels by file name "
                                         "(<name>[_0000].nii.gz), or one image file")
    parser.add_argument("--labels", help="with --images: the folder of label maps (<name>.nii.gz), or one label file")
    parser.add_argument("--out", required=True, help="prepared dataset folder to create")
    parser.add_argument("--label-map", default="btcv",
                        help="btcv (BTCV/Gibson ids, default), totalsegmentator_v2, paper8, or a YAML file")
    parser.add_argument("--shape", type=int, nargs=3, default=list(PAPER_SHAPE), metavar=("X", "Y", "Z"),
                        help="target shape in voxels (default: the paper's 128 128 64)")
    parser.add_argument("--window", type=float, nargs=2, default=list(PAPER_WINDOW), metavar=("LOW", "HIGH"),
                        help="HU window (default: -200 250)")
    parser.add_argument("--normalize", choices=("minmax", "zscore"), default="minmax",
                        help="minmax: clip + rescale to [0, 1] (default); zscore: then zero mean, unit variance")
    parser.add_argument("--test-fraction", type=float, default=PAPER_TEST_FRACTION,
                        help="share of cases in test.list (default 20/90, the paper's split)")
    parser.add_argument("--test-ids", help="file of test ids, one per line (overrides --test-fraction)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the deterministic split (default 0)")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad or mismatched pairs (logged, listed)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--ignore-label-affine", action="store_true",
                        help="accept a label whose affine differs from its image's (same shape required)")


def run(args: argparse.Namespace) -> int:
    """``vasseg prepare``: prepare the dataset, print the output folder."""
    test_ids = None
    if args.test_ids:
        from vasseg.data.splits import read_id_list

        test_ids = tuple(read_id_list(args.test_ids))
    options = PrepareOptions(label_map=args.label_map, shape=tuple(args.shape), window=tuple(args.window),
                             normalize=args.normalize, test_fraction=args.test_fraction, test_ids=test_ids,
                             seed=args.seed, skip_bad=args.skip_bad, overwrite=args.overwrite,
                             ignore_label_affine=args.ignore_label_affine)
    if (args.images is None) != (args.labels is None):
        raise ValueError("--images and --labels: give both (two folders, or one image and its label file)")
    plain = (args.images, args.labels) if args.images else None
    out = prepare_dataset(args.sources, args.out, options, progress=not args.quiet, plain=plain)
    print(out)
    return 0
