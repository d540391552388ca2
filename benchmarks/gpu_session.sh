#!/usr/bin/env bash
# The GPU measurements of benchmarks/RESULTS.md, as run on a lent H100 (device tool), one stage
# per remote command of <= 10 minutes. Data arrive as lossless LA chunks (.lapack, see
# vasseg.data.pack) and are unpacked to /tmp/LA; nibabel/medpy travel as sources in .whl/site.
set -uo pipefail
export PYTHONPATH="$PWD/src:$PWD/.whl/site" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
stage=$1; shift
case "$stage" in
  unpack)
    python3 -m vasseg.data.pack unpack .lapack /tmp/LA 2>&1 | tail -2 ;;
  bench)  # per-step times (issues 2, 3, 4, 8) and evaluation speed (issue 8)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    python3 benchmarks/bench_step.py --device cuda --methods supervised,mean_teacher,vas \
      --variants plain,amp,fast --steps 20 --warmup 5 --json "$OUT/steps_main.json"
    python3 benchmarks/bench_step.py --device cuda --methods uamt,sassnet,dtc,mcnet \
      --variants plain,amp --steps 20 --warmup 5 --json "$OUT/steps_baselines.json"
    python3 benchmarks/bench_step.py --device cuda --methods mean_teacher,vas --variants lineage \
      --steps 20 --warmup 5 --workers 4 --json "$OUT/steps_lineage.json"
    python3 benchmarks/bench_eval.py evaluate --cases 20 --device cuda ;;
  sweep)  # the CPU-scale LA protocol (fp32 as on CPU), several seeds, several runs at a time
    python3 -m vasseg sweep --configs "$@" --seeds 1337 1338 --jobs 7 --out /tmp/sweep \
      -- data.root=/tmp/LA train.device=cuda train.amp=none
    tar czf "$OUT/sweep.tgz" --exclude=checkpoints --exclude=tb -C /tmp sweep ;;
  full)   # a full-resolution run in the background (survives this command while the machine is held)
    cfg=$1; shift
    setsid nohup python3 -m vasseg train --quiet --config "$cfg" data.root=/tmp/LA run.out_dir=/tmp/full "$@" \
      > "/tmp/full_$(basename "$cfg" .yaml).log" 2>&1 < /dev/null &
    echo "started $cfg" ;;
  wait)   # wait up to N seconds for the background runs, then pack their results
    end=$((SECONDS + ${1:-540}))
    while pgrep -f "vasseg train" > /dev/null && [ $SECONDS -lt $end ]; do sleep 10; done
    pgrep -fa "vasseg train" || echo "no run left"
    tail -n 3 /tmp/full_*.log
    tar czf "$OUT/full.tgz" --exclude=checkpoints --exclude=tb -C /tmp full $(cd /tmp && ls full_*.log) ;;
esac
