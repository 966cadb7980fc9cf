#!/bin/bash
# Live, before (the previous tree, checked out at /tmp/before and put first on PYTHONPATH: the workers inherit it)
# against after (this tree), alternating, on one box, the same model (state/models).
#   git worktree add /tmp/before 3b32259 && bash bench/results/issue13-storm-prior/live.sh
cd "$(dirname "$0")/../../.." || exit 1
out=bench/results/issue13-storm-prior
export HF_HUB_OFFLINE=1
run() {
  local name=$1; shift
  .venv/bin/python bench/flood.py "$@" --no-baseline --json $out/$name.json 2>&1 | grep -av '^2026\|^{\|routed:' > $out/$name.log
  grep -a "throughput\|latency ms\|incidents  \|lost\|storm-\|pairs\|background" $out/$name.log | sed "s/^/$name /" | cut -c1-250
}
# EXTRA: more flood.py arguments, e.g. EXTRA="--capacity 200" for overload (its rates are relative)
for sc in "$@"; do
  PYTHONPATH=/tmp/before/src run before-$sc --scenario $sc $EXTRA
  run after-$sc --scenario $sc $EXTRA
done
