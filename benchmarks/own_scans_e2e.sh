#!/usr/bin/env bash
# The three commands of README "Train on your own scans", timed on synthetic MR-like scans:
# nnU-Net layout, LABELED labeled + UNLABELED unlabeled scans of SHAPE voxels, TEST test scans.
#   benchmarks/own_scans_e2e.sh [ITERATIONS]      (run it under /work/quiet.sh for timings)
set -euo pipefail
ITER=${1:-8}
LABELED=8 UNLABELED=24 TEST=4 SHAPE="96, 96, 32"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
python - <<PY
from vasseg.data.synthetic_nnunet import write_synthetic_nnunet, write_unlabeled_scans
write_synthetic_nnunet("Dataset042_Heart", labeled=$LABELED, test=$TEST, shape=($SHAPE), seed=0)
write_unlabeled_scans("more_scans", $UNLABELED, shape=($SHAPE))
PY
t() { local s=$(date +%s.%N); "$@" > out.txt; local e=$(date +%s.%N); printf '%-8s %6.1f s\n' "$1 $2" "$(echo "$e - $s" | bc)"; }
t vasseg prepare Dataset042_Heart --unlabeled more_scans/ --out prepared/ --quiet
grep -E "patch_size|labeled|num_val|method:|  name" prepared/config.yaml | sed 's/^/    /'
t vasseg train --config prepared/config.yaml train.iterations="$ITER" --quiet
run=$(tail -1 out.txt)
grep -h "trained .* steps in" "$run/train.log" | sed 's/^.*INFO /    /'
t vasseg predict "$run" Dataset042_Heart/imagesTs predictions/ --quiet
echo "predictions: $(ls predictions | wc -l)"
