#!/bin/bash
# Live: calm 20,000 --fast with two workers (each cores / 2 embedder threads), three runs; then one worker and
# two-storms --workers 2 as checks that nothing else moved.
cd "$(dirname "$0")/../../.." || exit 1
out=bench/results/issue13-workers2
export HF_HUB_OFFLINE=1
run() {
  local name=$1; shift
  .venv/bin/python bench/flood.py "$@" --no-baseline --json $out/$name.json 2>&1 | grep -av '^2026\|^{\|routed:' > $out/$name.log
  grep -a "throughput\|latency ms\|incidents  \|lost\|storm-" $out/$name.log | sed "s/^/$name /" | cut -c1-250
}
for i in 1 2 3 4; do run calm-w2-$i --scenario calm --tickets 20000 --fast --workers 2; done
run two-storms-w2 --scenario two-storms --workers 2
run two-storms --scenario two-storms
