#!/bin/bash
# every shipped scenario + confusable ones, one worker; two-storms with 2 workers; overload at the engine's rate
cd /tmp/final-tree
export PYTHONPATH=/tmp/final-tree/src
echo "commit $(git rev-parse --short HEAD)"
export ROUTING_MODELS_DIR=/work/main/state/models HF_HUB_OFFLINE=1
PY=/work/main/.venv/bin/python
run() { name=$1; shift; echo "=== $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)";
  $PY bench/flood.py "$@" --no-progress --json /tmp/final/$name.json --plot /tmp/final/$name.png 2>&1 | grep -v 'Loading weights'; }
run calm --scenario calm --no-baseline
run single-storm --scenario single-storm --no-baseline
run two-storms --scenario two-storms --no-baseline
run confusable-fx --scenario confusable-fx --no-baseline
run confusable-cards --scenario confusable-cards --no-baseline
run confusable-transfers --scenario confusable-transfers --no-baseline
run two-storms-w2 --scenario two-storms --no-baseline --workers 2
run overload --scenario overload --no-baseline --capacity 200
run calm-fast --scenario calm --tickets 20000 --fast
run calm-fast-w2 --scenario calm --tickets 20000 --fast --workers 2 --no-baseline
echo "=== done $(date +%T)"
