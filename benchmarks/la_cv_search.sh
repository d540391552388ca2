#!/usr/bin/env bash
# Issue 18's search over VAS's paper-silent choices, on validation data only: each variant of
# configs/la_cv/vas_8.yaml trains on fold 0 (seed 1337, the fold `adv_reduction: mean` was chosen
# on); the best is then confirmed on folds 1 and 2 (seeds 1338, 1339) against mean teacher's runs
# there, which never took part in the choice.
#   benchmarks/la_cv_search.sh OUT [override ...]     e.g. benchmarks/la_cv_search.sh runs/la_cv_search train.device=cpu
#   CONFIRM="method.teacher_mode=eval" benchmarks/la_cv_search.sh OUT ...   the confirmation runs of a variant
set -euo pipefail
out=${1:?usage: benchmarks/la_cv_search.sh OUT [override ...]}; shift
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
vas="$here/configs/la_cv/vas_8.yaml"
if [ -n "${CONFIRM:-}" ]; then
  # shellcheck disable=SC2086  # CONFIRM is a list of overrides
  exec "$py" -m vasseg sweep --jobs 1 --resume --configs "$vas" --seeds 1338 1339 --folds 1 2 --out "$out" -- $CONFIRM "$@"
fi
for variant in "method.teacher_mode=eval" "method.byol_pairs=same_voxel" "method.beta=0" \
               "data.labeled_bs=4"; do  # pseudo-labels from the teacher in eval mode; BYOL on a voxel and its
  # own noisy copy; no L_feature; supervised's 4 labeled patches per step (beside the 2 unlabeled)
  # every variant starts from the config the search began with (`teacher_mode: train`, before the
  # search chose `eval`), so the runs are those of RESULTS §6
  "$py" -m vasseg sweep --jobs 1 --resume --configs "$vas" --seeds 1337 --folds 0 --out "$out" \
    -- method.teacher_mode=train "$variant" "$@"
done
# each variant against the pre-search config's fold-0 run (`teacher_mode: train`), case by case (paired Wilcoxon, bootstrap CI)
base="$here/benchmarks/la_cv_runs/la_cv_search/la_vas_8l_s1337_6bcf5eb8"
for run in "$out"/la_vas_8l_s1337_*/; do
  [ "$(basename "$run")" = "$(basename "$base")" ] && continue
  echo "== $(grep -E 'teacher_mode|byol_pairs|^  beta|labeled_bs' "$run/config.yaml" | tr -s ' ' | tr '\n' ' ')"
  "$py" "$here/benchmarks/intensity_ab.py" --root "${LA_ROOT:-$here/../shared/data/LA}" --a "$base" --b "$run" --evals val_last --dark 0
done
