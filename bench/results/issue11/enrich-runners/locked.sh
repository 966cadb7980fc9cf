#!/bin/bash
# two enrich read loops sharing one two-thread embedder (ROUTING_ENRICH_RUNNERS=2 ROUTING_EMBED_THREADS=2: one embeds
# at a time on both cores while the other classifies and commits), against the default, alternating
cd "$(dirname "$0")/../../../.." || exit 1
out=bench/results/issue11/enrich-runners
export HF_HUB_OFFLINE=1
run() {
  local name=$1 n=$2 t=$3; shift 3
  ROUTING_ENRICH_RUNNERS=$n ROUTING_EMBED_THREADS=$t .venv/bin/python bench/flood.py "$@" --no-baseline \
    --json $out/$name.json 2>&1 | grep -av '^2026\|^{\|routed:' > $out/$name.log
  grep -a "throughput\|cpu sec\|latency ms\|grouping\|lost" $out/$name.log | sed "s/^/$name /" | cut -c1-230
}
run calm-locked-1 2 2 --scenario calm --tickets 20000 --fast
run calm-default-5 1 0 --scenario calm --tickets 20000 --fast
run two-storms-locked-1 2 2 --scenario two-storms
run two-storms-default-3 1 0 --scenario two-storms
run calm-locked-2 2 2 --scenario calm --tickets 20000 --fast
run two-storms-locked-2 2 2 --scenario two-storms
