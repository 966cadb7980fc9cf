#!/bin/bash
# two enrich consumers of one ONNX Runtime thread each (ROUTING_EMBED_THREADS=1) against one of two threads
cd "$(dirname "$0")/../../../.." || exit 1
out=bench/results/issue11/blas-threads
export HF_HUB_OFFLINE=1
run() {
  local name=$1; shift
  .venv/bin/python bench/flood.py "$@" --no-baseline --json $out/$name.json 2>&1 | grep -av '^2026\|^{\|routed:' > $out/$name.log
  grep -a "throughput\|ceiling (\|cpu sec\|latency ms\|lost" $out/$name.log | sed "s/^/$name /" | cut -c1-230
}
ROUTING_EMBED_THREADS=1 run calm-2enrich-1thread --scenario calm --tickets 20000 --fast --split enrich --split enrich,fallback,dedup,route
run calm-one-4 --scenario calm --tickets 20000 --fast
ROUTING_EMBED_THREADS=1 run calm-w2-1thread --scenario calm --tickets 20000 --fast --workers 2
