#!/bin/bash
# overload on the tree of the evening (BLAS threads 1): the default model at --capacity 200, then the breaker with a
# fallback (state/models-bk: the shipped fast path + a 1-epoch CPU fallback on 3,000 rows, escalation forced below
# 0.6, blend 0.5) at --capacity 50 through the HTTP door, and the fast path alone the same way
cd "$(dirname "$0")/../../../.." || exit 1
out=bench/results/issue11/evening2
export HF_HUB_OFFLINE=1
run() {
  local name=$1; shift
  .venv/bin/python bench/flood.py "$@" --no-baseline --json $out/$name.json 2>&1 | grep -av '^2026\|^{\|routed:' > $out/$name.log
  grep -a "throughput\|latency ms\|urgent\|grouping\|incidents  \|breaker\|why\|cpu sec\|lost\|storm-\|flood" $out/$name.log | sed "s/^/$name /" | cut -c1-250
}
run overload-cap200 --scenario overload --capacity 200
ROUTING_MODELS_DIR=state/models-bk run overload-breaker --scenario overload --door http --capacity 50
ROUTING_MODELS_DIR=state/models-bk ROUTING_ESCALATION=false run overload-fastpath --scenario overload --door http --capacity 50
