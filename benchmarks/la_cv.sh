#!/usr/bin/env bash
# The CPU-scale 3-fold LA protocol (configs/la_cv/): supervised, mean teacher and VAS, seed 1337+k
# on fold k (k = 0, 1, 2), one run at a time on the CPU, then the intensity check (supervised with
# the files' own intensities, data.intensity=file, on fold 2, which holds 4 of the darkest crops),
# then the report with paired per-case tests against mean teacher.
#   benchmarks/la_cv.sh OUT [override ...]      e.g. benchmarks/la_cv.sh runs/la_cv train.device=cpu
# RESUME=1 benchmarks/la_cv.sh OUT ... skips the finished runs and resumes a cut one from its checkpoint.
# SEEDS="2337 2338 2339" benchmarks/la_cv.sh OUT ...  another seed per fold (the k-th seed trains fold k);
#   the report pools every run in OUT, so a second round into the same OUT gives 2 seeds per fold.
set -euo pipefail
out=${1:?usage: benchmarks/la_cv.sh OUT [override ...]}; shift
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
# shellcheck disable=SC2086  # SEEDS is a list of seeds
"$py" -m vasseg sweep --jobs 1 ${RESUME:+--resume} --configs "$here"/configs/la_cv/{vas,supervised,mean_teacher}_8.yaml \
    --seeds ${SEEDS:-1337 1338 1339} --folds 0 1 2 --out "$out" -- "$@"
"$py" -m vasseg sweep --jobs 1 ${RESUME:+--resume} --configs "$here/configs/la_cv/supervised_8.yaml" --seeds 1339 --folds 2 \
    --out "${out%/}_intensity_file" -- data.intensity=file "$@"
"$py" -m vasseg report "$out" --eval val_last --reference mean_teacher --out "$out/report"
