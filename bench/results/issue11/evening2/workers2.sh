#!/bin/bash
# --workers 2 as the bench now runs it (each worker cores / 2 embedder threads)
cd "$(dirname "$0")/../../../.." || exit 1
out=bench/results/issue11/evening2
export HF_HUB_OFFLINE=1
run() {
  local name=$1; shift
  .venv/bin/python bench/flood.py "$@" --no-baseline --json $out/$name.json 2>&1 | grep -av '^2026\|^{\|routed:' > $out/$name.log
  grep -a "throughput\|latency ms\|urgent tickets  \|grouping\|incidents  \|cpu sec\|lost\|storm-" $out/$name.log | sed "s/^/$name /" | cut -c1-250
}
run two-storms-workers2 --scenario two-storms --workers 2
run calm-workers2 --scenario calm --tickets 20000 --fast --workers 2
