#!/bin/bash
export ROUTING_MODELS_DIR=/work/main/state/models HF_HUB_OFFLINE=1
for t in after before; do
  cd /tmp/pair/$t; echo "=== $t $(git rev-parse --short HEAD) $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  PYTHONPATH=/tmp/pair/$t/src /work/main/.venv/bin/python bench/flood.py --scenario two-storms --no-baseline --no-progress \
    --json /tmp/pair/two-storms-$t-2.json --plot /tmp/pair/two-storms-$t-2.png 2>&1 | grep -v 'Loading weights'
done
