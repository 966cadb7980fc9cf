#!/bin/bash
# usage: run.sh TREE LABEL  -> calm 5000 fast + two-storms, JSON under /tmp/i11hp/
TREE=$1; LABEL=$2; MODELS=${3:-/tmp/i11hp/models}
export ROUTING_MODELS_DIR=$MODELS
PY=/work/main/.venv/bin/python
cd $TREE
if [ ! -d $MODELS ] || [ -z "$(ls $MODELS)" ]; then
  PYTHONPATH=$TREE/src $PY -c "
from routing_engine.config import Settings; from routing_engine.service import ensure_model; ensure_model(Settings.from_env())" > /tmp/i11hp/ensure-$LABEL.log 2>&1
fi
echo "=== $LABEL calm $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
PYTHONPATH=$TREE/src $PY bench/flood.py --scenario calm --tickets 5000 --fast --no-progress \
  --json /tmp/i11hp/calm-$LABEL.json --plot /tmp/i11hp/calm-$LABEL.png 2>&1 | grep -v "Loading weights"
echo "=== $LABEL two-storms $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
PYTHONPATH=$TREE/src $PY bench/flood.py --scenario two-storms --no-baseline --no-progress \
  --json /tmp/i11hp/two-storms-$LABEL.json --plot /tmp/i11hp/two-storms-$LABEL.png 2>&1 | grep -v "Loading weights"
echo "=== done $(date +%T)"
