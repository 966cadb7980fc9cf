#!/bin/bash
cd /tmp/re-before
export PYTHONPATH=/tmp/re-before/src ROUTING_MODELS_DIR=/work/main/state/models
for sc in overload two-storms; do
  echo "=== $sc start $(date -u +%T)"
  flock /tmp/bench.lock /work/main/.venv/bin/python bench/flood.py --scenario $sc --json /work/main/bench/out/$sc-before.json --plot /tmp/re-before/$sc.png --no-progress
  echo "=== $sc rc $? end $(date -u +%T)"
done
