#!/usr/bin/env bash
# Table I of the paper in short GPU windows: every method x setting x seed as one `vasseg sweep`
# (several runs at once on the GPU), started detached, polled, and, where the 20 LA test cases are
# at hand, evaluated on the test split into one report.
#
# On a bare GPU machine that has only the checkout (no ../shared), one stage per remote command:
#   here:  python -m vasseg.data.pack pack /path/LA .lapack --chunk-mib 54        # train cases (git-ignored)
#          python -m vasseg.data.pack pack /path/LA .lapack_test --list test.list  # test cases, if you hold them
#   there: bash benchmarks/gpu_table.sh unpack        # once per carried chunk (any order)
#          bash benchmarks/gpu_table.sh start 16      # detached sweep: SETTING=8|16, SEEDS, METHODS below
#          bash benchmarks/gpu_table.sh poll 540      # wait <= 540 s; results (no checkpoints) -> $OUT/table.tgz
#          bash benchmarks/gpu_table.sh test          # test-split evaluation + report -> $OUT/report.tgz
# A window that ends mid-sweep: `start` again in the next one resumes every unfinished run.
# Back home, a holder of the test cases evaluates the returned run folders (their model.safetensors):
#          RUNS=returned/table LA=/path/LA bash benchmarks/gpu_table.sh test
#
# Environment: LA (data root, /tmp/LA), RUNS (sweep folder, /tmp/table), OUT (what comes back,
# /tmp/out), SEEDS ("1337 1338"), METHODS (the seven of Table I), CONFIGS (their folder,
# configs/la), PACKS (the folder holding .lapack*, the checkout), JOBS (auto), PYTHON (python3).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$here/src:$here/.whl/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
LA=${LA:-/tmp/LA}; RUNS=${RUNS:-/tmp/table}; OUT=${OUT:-/tmp/out}
SEEDS=${SEEDS:-1337 1338}
METHODS=${METHODS:-supervised mean_teacher uamt sassnet dtc mcnet vas}
CONFIGS=${CONFIGS:-$here/configs/la}; PACKS=${PACKS:-$here}
mkdir -p "$OUT"
stage=${1:?usage: gpu_table.sh unpack|start SETTING|poll SECONDS|test}; shift

has_test_cases() {  # every id of $LA/test.list has its file
  [ -f "$LA/test.list" ] || return 1
  while read -r id; do
    [ -z "$id" ] || [ -f "$LA/2018LA_Seg_Training Set/$id/mri_norm2.h5" ] || return 1
  done < "$LA/test.list"
}

case "$stage" in
  unpack)  # every packed folder carried so far (.lapack: train, .lapack_test: test), into $LA
    for packed in "$PACKS"/.lapack*/; do
      [ -f "$packed/manifest.json" ] && "$py" -m vasseg.data.pack unpack "$packed" "$LA" 2>&1 | tail -n 2
    done ;;
  start)
    setting=${1:-16}; shift || true
    configs=(); for m in $METHODS; do configs+=("$CONFIGS/${m}_${setting}.yaml"); done
    # shellcheck disable=SC2086  # SEEDS is a list
    setsid nohup "$py" -m vasseg sweep --resume --quiet --configs "${configs[@]}" --seeds $SEEDS \
      --jobs "${JOBS:-auto}" --out "$RUNS" -- data.root="$LA" "$@" > "$RUNS.log" 2>&1 < /dev/null &
    echo $! > "$RUNS.pid"
    echo "sweep started: ${#configs[@]} configs x seeds $SEEDS -> $RUNS (log $RUNS.log)" ;;
  poll)    # wait for the sweep at most N seconds, then send back what is finished
    end=$((SECONDS + ${1:-540}))
    running() { [ -f "$RUNS.pid" ] && kill -0 "$(cat "$RUNS.pid")" 2> /dev/null; }
    while running && [ $SECONDS -lt $end ]; do sleep 5; done
    if running; then echo "sweep still running"; else echo "sweep finished"; fi
    tail -n 30 "$RUNS.log" || true
    [ -f "$RUNS/sweep.jsonl" ] && echo "$(wc -l < "$RUNS/sweep.jsonl") runs finished"
    tar czf "$OUT/table.tgz" --exclude=checkpoints --exclude=tb --exclude='.*.lock' -C "$(dirname "$RUNS")" \
      "$(basename "$RUNS")"
    du -h "$OUT/table.tgz" ;;
  test)    # each finished run's weights on the test split, then one report with Table I
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
    tar czf "$OUT/report.tgz" -C "$RUNS" report
    echo "report: $RUNS/report (and $OUT/report.tgz)" ;;
  *) echo "gpu_table.sh: unknown stage $stage (unpack, start, poll, test)" >&2; exit 2 ;;
esac
