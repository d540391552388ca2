#!/usr/bin/env bash
# LA runs in one lent GPU window (device tool: one command <= 10 min and <= 2,000 characters, tree +
# <= 8 carried paths <= 64 MiB, <= 8 files of <= 16 MiB back; the machine starts empty every time),
# and, where the 20 LA test cases are at hand, their evaluation on the test split.
#
#   here:  bash benchmarks/gpu_table.sh pack /path/LA   # .lapack/: chunks sized to what the tree leaves
#          bash benchmarks/gpu_table.sh plan [--weights] # carry / command / returns lines, runs planned
#   there: bash benchmarks/gpu_table.sh window [--budget-s 500] [--weights] [-- overrides]
#          (carry .lapack/manifest.json and .lapack/chunk_000.zip; unpack, 20-step smoke test, runs
#          sized to the budget, 2 at once, validated on 16 cases; $OUT: summary.md, sweep.jsonl,
#          window.tgz, weights.tar.partNN with --weights)
#   home:  tar xzf window.tgz && cat weights.tar.part* | tar x     # run folders with their weights
#          RUNS=window LA=/path/LA bash benchmarks/gpu_table.sh test  # test split + report
#
# Environment: LA (data root, /tmp/LA), RUNS (run folders, /tmp/window), OUT (what comes back,
# /tmp/out), PACKS (the folder holding .lapack*, the checkout), PYTHON (python3).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$here/src:$here/.whl/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
LA=${LA:-/tmp/LA}; RUNS=${RUNS:-/tmp/window}; OUT=${OUT:-/tmp/out}; PACKS=${PACKS:-$here}
stage=${1:?usage: gpu_table.sh pack LA_ROOT|plan|unpack|window|test}; shift

has_test_cases() {  # every id of $LA/test.list has its file
  [ -f "$LA/test.list" ] || return 1
  while read -r id; do
    [ -z "$id" ] || [ -f "$LA/2018LA_Seg_Training Set/$id/mri_norm2.h5" ] || return 1
  done < "$LA/test.list"
}

packs() { for p in "$PACKS"/.lapack*/; do [ -f "$p/manifest.json" ] && echo "${p%/}"; done; true; }

case "$stage" in
  pack) "$py" "$here/benchmarks/gpu_plan.py" pack "$@" ;;
  plan) "$py" "$here/benchmarks/gpu_plan.py" plan "$@" ;;
  unpack)  # every packed folder carried (.lapack: train, .lapack_test: test) into $LA; idempotent
    for packed in $(packs); do "$py" -m vasseg.data.pack unpack "$packed" "$LA"; done ;;
  window)
    mapfile -t found < <(packs)
    mkdir -p "$OUT"
    "$py" "$here/benchmarks/gpu_window.py" --la "$LA" --runs "$RUNS" --out "$OUT" --packs "${found[@]}" "$@" ;;
  test)    # each returned run's weights on the test split, then one report with Table I
    if ! has_test_cases; then
      echo "no test cases in $LA (carry .lapack_test and run the unpack stage): nothing to evaluate"; exit 0
    fi
    n=0
    for weights in "$RUNS"/*/model.safetensors; do
      [ -f "$weights" ] || continue
      run=$(dirname "$weights")
      [ -f "$run/eval/test_last/cases.csv" ] || \
        "$py" -m vasseg evaluate "$weights" --split test --data-root "$LA" --out "$run/eval/test_last" --quiet > /dev/null
      n=$((n + 1))
    done
    echo "$n runs evaluated on the test split"
    [ "$n" -gt 0 ] || exit 1
    rm -rf "$RUNS/report"
    "$py" -m vasseg report "$RUNS" --eval test_last --out "$RUNS/report" --skip features,snapshots,qualitative \
      --data-root "$LA" --quiet
    mkdir -p "$OUT"
    tar czf "$OUT/report.tgz" -C "$RUNS" report
    echo "report: $RUNS/report (and $OUT/report.tgz)" ;;
  *) echo "gpu_table.sh: unknown stage $stage (pack, plan, unpack, window, test)" >&2; exit 2 ;;
esac
