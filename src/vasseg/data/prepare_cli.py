"""The ``vasseg prepare`` command: its arguments and its run (the work: :mod:`vasseg.data.prepare`)."""

from __future__ import annotations

import argparse

from vasseg.data.prepare import PAPER_WINDOW, PrepareOptions, prepare_dataset
from vasseg.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vasseg prepare``."""
    parser.add_argument("sources", nargs="*", metavar="SOURCE",
                        help="dataset folder: an nnU-Net v2 raw dataset (dataset.json, imagesTr/, labelsTr/, "
                             "imagesTs/), BTCV-style img*/label* NIfTI pairs or an MSD folder (or give --images "
                             "and --labels)")
    parser.add_argument("--images", help="instead of SOURCE: a folder of images matched to --labels by file name "
                                         "(<name>[_0000].nii.gz), or one image file")
    parser.add_argument("--labels", help="with --images: the folder of label maps (<name>.nii.gz), or one label file")
    parser.add_argument("--unlabeled", action="append", default=[], metavar="DIR",
                        help="images without labels: a folder, a quoted glob or a file (repeatable)")
    parser.add_argument("--out", required=True, help="prepared dataset folder to create (with a planned config.yaml)")
    parser.add_argument("--modality", choices=("auto", "ct", "mr"), default="auto",
                        help="ct: HU window; mr (any non-CT): percentile clip + z-score per volume; auto (default): "
                             "dataset.json's channel name, else ct for integer data below -500")
    parser.add_argument("--label-map",
                        help="btcv, totalsegmentator_v2, paper8 or a YAML file (default: dataset.json's labels for "
                             "nnU-Net, the label values for --images, btcv for BTCV/MSD)")
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                      help="fixed target shape in voxels (default for BTCV/MSD: the paper's 128 128 64)")
    grid.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                      help="target voxel size in mm, shapes vary (default for nnU-Net/--images: the labeled "
                           "cases' median)")
    parser.add_argument("--window", type=float, nargs=2, default=list(PAPER_WINDOW), metavar=("LOW", "HIGH"),
                        help="ct: HU window (default: -200 250)")
    parser.add_argument("--normalize", choices=("minmax", "zscore"), default="minmax",
                        help="ct: minmax: clip + rescale to [0, 1] (default); zscore: then zero mean, unit variance")
    parser.add_argument("--test-fraction", type=float,
                        help="share of the labeled cases in test.list (default: 20/90, the paper's split, for "
                             "BTCV/MSD; 0 for nnU-Net, whose imagesTs/ is the test split, and --images)")
    parser.add_argument("--test-ids", help="file of test ids, one per line (overrides --test-fraction)")
    parser.add_argument("--num-val", type=int,
                        help="labeled cases held out for validation (default: 20 %% of them when >= 5, else 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the deterministic split (default 0)")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes (default 0: one per core, at most 8, from 16 cases on)")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad or mismatched files (logged, listed)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--ignore-label-affine", action="store_true",
                        help="accept a label whose affine differs from its image's (same shape required)")


def run(args: argparse.Namespace) -> int:
    """``vasseg prepare``: prepare the dataset, print the output folder."""
    test_ids = None
    if args.test_ids:
        from vasseg.data.splits import read_id_list

        test_ids = tuple(read_id_list(args.test_ids))
    options = PrepareOptions(
        label_map=args.label_map, shape=tuple(args.shape) if args.shape else None,
        spacing=tuple(args.spacing) if args.spacing else None, modality=args.modality, window=tuple(args.window),
        normalize=args.normalize, test_fraction=args.test_fraction, test_ids=test_ids, num_val=args.num_val,
        unlabeled=tuple(args.unlabeled), seed=args.seed, workers=args.workers, skip_bad=args.skip_bad,
        overwrite=args.overwrite, ignore_label_affine=args.ignore_label_affine)
    if (args.images is None) != (args.labels is None):
        raise ConfigError("--images and --labels: give both (two folders, or one image and its label file)")
    plain = (args.images, args.labels) if args.images else None
    out = prepare_dataset(args.sources, args.out, options, progress=not args.quiet, plain=plain)
    print(out)
    return 0
