#!/bin/bash
# two-storms (not a backlog: latency) with one and two enrich read loops, alternating
cd "$(dirname "$0")/../../../.." || exit 1
out=bench/results/issue11/enrich-runners
export HF_HUB_OFFLINE=1
run() {
  local name=$1 n=$2; shift 2
  ROUTING_ENRICH_RUNNERS=$n .venv/bin/python bench/flood.py "$@" --no-baseline --json $out/$name.json 2>&1 \
    | grep -av '^2026\|^{\|routed:' > $out/$name.log
  grep -a "throughput\|cpu sec\|latency ms\|urgent tickets  \|grouping\|lost" $out/$name.log | sed "s/^/$name /" | cut -c1-230
}
run two-storms-runners2-1 2 --scenario two-storms
run two-storms-runners1-1 1 --scenario two-storms
run two-storms-runners2-2 2 --scenario two-storms
run two-storms-runners1-2 1 --scenario two-storms
