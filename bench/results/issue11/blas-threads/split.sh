#!/bin/bash
# enrich in a worker process of its own, the other stages in a second (bench/flood.py --split), default BLAS threads (1)
cd "$(dirname "$0")/../../../.." || exit 1
out=bench/results/issue11/blas-threads
export HF_HUB_OFFLINE=1
run() {
  local name=$1; shift
  .venv/bin/python bench/flood.py "$@" --no-baseline --json $out/$name.json 2>&1 | grep -av '^2026\|^{\|routed:' > $out/$name.log
  grep -a "throughput\|ceiling (\|cpu sec\|latency ms\|lost" $out/$name.log | sed "s/^/$name /" | cut -c1-230
}
run calm-split-1 --scenario calm --tickets 20000 --fast --split enrich --split fallback,dedup,route
run calm-one-3 --scenario calm --tickets 20000 --fast
run calm-split-2 --scenario calm --tickets 20000 --fast --split enrich --split fallback,dedup,route
run two-storms-split --scenario two-storms --split enrich --split fallback,dedup,route
