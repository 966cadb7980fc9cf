#!/bin/bash
# step 3 before/after: the tree at b6aec35 (before) and at the step-3 commit (after), same models dir, alternating
export ROUTING_MODELS_DIR=/tmp/b11/models
PY=/work/main/.venv/bin/python
cd /tmp/b11/after && PYTHONPATH=/tmp/b11/after/src $PY -c "
from routing_engine.config import Settings; from routing_engine.service import ensure_model; ensure_model(Settings.from_env())" > /tmp/b11/ensure.log 2>&1
for sc in "calm --tickets 2000 --fast" "two-storms"; do
  name=$(echo $sc | cut -d' ' -f1)
  for tree in before after; do
    echo "=== $tree $sc $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    cd /tmp/b11/$tree && PYTHONPATH=/tmp/b11/$tree/src $PY bench/flood.py --scenario $sc --no-progress \
      --json /tmp/b11/$name-$tree.json --plot /tmp/b11/$name-$tree.png 2>&1 | grep -v "Loading weights"
  done
done
