#!/bin/bash
# py-spy on the worker during a calm flood (the README's profile recipe, run for real)
export ROUTING_MODELS_DIR=/tmp/b11/models
PY=/work/main/.venv/bin/python
cd /tmp/b11/after
PYTHONPATH=/tmp/b11/after/src $PY bench/flood.py --scenario calm --tickets 5000 --fast --no-baseline --no-progress \
  --json /tmp/b11/prof-flood.json --plot /tmp/b11/prof-flood.png > /tmp/b11/prof-flood.txt 2>&1 &
FL=$!
for i in $(seq 1 120); do
  pid=$(pgrep -f "routing_engine.cli worker" | head -1)
  [ -n "$pid" ] && break; sleep 0.5
done
# wait until the worker is busy (models loaded, tickets flowing)
sleep 15
/work/main/.venv/bin/py-spy record --pid $pid --duration 15 --rate 100 --native --format raw -o /tmp/b11/prof.txt
/work/main/.venv/bin/py-spy dump --pid $pid > /tmp/b11/prof-dump.txt 2>&1
wait $FL
