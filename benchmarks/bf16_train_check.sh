#!/usr/bin/env bash
# Issue 28, item 3: is bf16 training on a CPU as accurate as fp32? Trains supervised_4 and
# mean_teacher_4 of configs/la_cv4/ with train.amp=bf16 on the same seeds and folds as
# benchmarks/la_cv4.sh (seed 1337+k on fold k) into BF16_OUT, then compares every bf16 run with its
# fp32 twin in FP32_OUT (the protocol's output folder) case by case and checks that every logged
# loss term stayed finite (benchmarks/bf16_compare.py; exit 1 when one did not or a twin is missing).
#   benchmarks/bf16_train_check.sh FP32_OUT BF16_OUT [override ...]
#   e.g. benchmarks/bf16_train_check.sh runs/la_cv4 runs/la_cv4_bf16 train.device=cpu
# METHODS and SEEDS as in la_cv4.sh (default: supervised_4 mean_teacher_4, seeds 1337 1338 1339 on
# folds 0 1 2; SEEDS="2337 2338 2339" for the second seeds); RESUME=1 skips finished runs;
# COMPARE_ONLY=1 trains nothing and only compares what both folders hold.
set -euo pipefail
usage="usage: benchmarks/bf16_train_check.sh FP32_OUT BF16_OUT [override ...]"
fp32_out=${1:?$usage}; bf16_out=${2:?$usage}; shift 2
if [ ! -d "$fp32_out" ]; then echo "$fp32_out: no such folder (the fp32 protocol's output)" >&2; exit 2; fi
if [ "$(realpath -m "$fp32_out")" = "$(realpath -m "$bf16_out")" ]; then
  echo "$bf16_out: must differ from FP32_OUT (the bf16 runs go into their own folder)" >&2; exit 2
fi
for arg in "$@"; do
  case "$arg" in
    train.amp=*|train.seed=*|data.fold=*) echo "$arg: set by this script" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python}
if [ -z "${COMPARE_ONLY:-}" ]; then
  configs=()
  for m in ${METHODS:-supervised_4 mean_teacher_4}; do
    configs+=("$here/configs/la_cv4/$m.yaml")
  done
  # shellcheck disable=SC2086  # SEEDS is a list of seeds
  "$py" -m vasseg sweep --jobs 1 ${RESUME:+--resume} --configs "${configs[@]}" \
      --seeds ${SEEDS:-1337 1338 1339} --folds 0 1 2 --out "$bf16_out" -- train.amp=bf16 "$@"
fi
exec "$py" "$here/benchmarks/bf16_compare.py" "$fp32_out" "$bf16_out"
