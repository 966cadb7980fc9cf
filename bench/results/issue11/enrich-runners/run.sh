#!/bin/bash
# two enrich read loops in one worker (ROUTING_ENRICH_RUNNERS=2: one ONNX Runtime thread each) against one, alternating
cd "$(dirname "$0")/../../../.." || exit 1
out=bench/results/issue11/enrich-runners
export HF_HUB_OFFLINE=1
run() {
  local name=$1 n=$2; shift 2
  ROUTING_ENRICH_RUNNERS=$n .venv/bin/python bench/flood.py "$@" --no-baseline --json $out/$name.json 2>&1 \
    | grep -av '^2026\|^{\|routed:' > $out/$name.log
  grep -a "throughput\|ceiling (\|cpu sec\|latency ms\|lost" $out/$name.log | sed "s/^/$name /" | cut -c1-230
}
run calm-runners2-1 2 --scenario calm --tickets 20000 --fast
run calm-runners1-1 1 --scenario calm --tickets 20000 --fast
run calm-runners2-2 2 --scenario calm --tickets 20000 --fast
run calm-runners1-2 1 --scenario calm --tickets 20000 --fast
