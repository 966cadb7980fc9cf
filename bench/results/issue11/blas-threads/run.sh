#!/bin/bash
# ROUTING_BLAS_THREADS=1 (the default since this change) against 0 (the libraries' default: one per core), alternating.
cd "$(dirname "$0")/../../../.." || exit 1
out=bench/results/issue11/blas-threads
export HF_HUB_OFFLINE=1
run() {  # name, blas, flood args...
  local name=$1 blas=$2; shift 2
  ROUTING_BLAS_THREADS=$blas .venv/bin/python bench/flood.py "$@" --no-baseline --json $out/$name.json 2>&1 \
    | grep -av '^2026\|^{\|routed:' > $out/$name.log
  grep -a "throughput\|ceiling (\|cpu sec\|latency ms\|lost" $out/$name.log | sed "s/^/$name /" | cut -c1-220
}
run calm-blas0-1 0 --scenario calm --tickets 20000 --fast
run calm-blas1-1 1 --scenario calm --tickets 20000 --fast
run calm-blas0-2 0 --scenario calm --tickets 20000 --fast
run calm-blas1-2 1 --scenario calm --tickets 20000 --fast
run two-storms-blas0 0 --scenario two-storms
run two-storms-blas1 1 --scenario two-storms
run calm-w2-blas0 0 --scenario calm --tickets 20000 --fast --workers 2
run calm-w2-blas1 1 --scenario calm --tickets 20000 --fast --workers 2
