#!/usr/bin/env bash
# Issue 27's CPU-scale 3-fold LA protocol at 4 labeled (configs/la_cv4/): seed 1337+k on fold k
# (k = 0, 1, 2), one run at a time, fold by fold (every method of fold 0 first, so a cut sweep
# still leaves paired comparisons), then two reports with paired per-case tests (against supervised
# and against mean teacher).
#   benchmarks/la_cv4.sh OUT [override ...]       e.g. benchmarks/la_cv4.sh runs/la_cv4 train.device=cpu
# METHODS="supervised_4 mean_teacher_4 vas_4 admt_4" (default: the 24 main runs with 2 seeds) picks
# the configs (also supervised_4_bs2, the like-for-like control, bcp_4, uamt_4, dtc_4, mcnet_4, sassnet_4);
# SEEDS="2337 2338 2339" trains a second seed per fold into the same OUT (the report pools them);
# RESUME=1 skips finished runs and resumes a cut one from its checkpoint.
set -euo pipefail
out=${1:?usage: benchmarks/la_cv4.sh OUT [override ...]}; shift
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
configs=()
for m in ${METHODS:-supervised_4 mean_teacher_4 vas_4 admt_4}; do
  configs+=("$here/configs/la_cv4/$m.yaml")
done
# shellcheck disable=SC2086  # SEEDS is a list of seeds
"$py" -m vasseg sweep --jobs 1 ${RESUME:+--resume} --configs "${configs[@]}" \
    --seeds ${SEEDS:-1337 1338 1339} --folds 0 1 2 --out "$out" -- "$@"
# paired tests against supervised (Table I's reference) and against mean teacher (the method to beat)
"$py" -m vasseg report "$out" --eval val_last --reference supervised --out "$out/report" --overwrite
"$py" -m vasseg report "$out" --eval val_last --reference mean_teacher --out "$out/report_vs_mean_teacher" --overwrite
