#!/bin/bash
cd /work/main
HF_HUB_OFFLINE=1 .venv/bin/python bench/flood.py --scenario calm --tickets 20000 --fast --no-baseline --no-progress \
  --json /tmp/r/prof-flood.json > /tmp/r/prof-flood.txt 2>&1 &
FL=$!
for i in $(seq 1 120); do
  pid=$(pgrep -f "routing_engine.cli worker" | head -1)
  [ -n "$pid" ] && break; sleep 0.5
done
sleep 15
.venv/bin/py-spy record --pid $pid --duration 20 --rate 100 --format raw -o /tmp/r/prof.txt --threads
wait $FL
