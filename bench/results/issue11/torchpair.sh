#!/bin/bash
PY=/work/main/.venv/bin/python
cd /tmp/b11/after
for cfg in torch int8; do
  if [ $cfg = torch ]; then export ROUTING_MODELS_DIR=/tmp/b11/models-torch ROUTING_EMBEDDER=torch; else export ROUTING_MODELS_DIR=/tmp/b11/models ROUTING_EMBEDDER=auto; fi
  echo "=== $cfg $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  PYTHONPATH=/tmp/b11/after/src $PY bench/flood.py --scenario calm --tickets 2000 --fast --no-progress \
     --json /tmp/b11/pipe-$cfg.json --plot /tmp/b11/pipe.png 2>&1 | grep -v "Loading weights"
done
