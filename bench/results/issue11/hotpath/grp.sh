#!/bin/bash
PY=/work/main/.venv/bin/python
export ROUTING_MODELS_DIR=/tmp/i11hp/models
cd /tmp/clean-before && PYTHONPATH=/tmp/clean-before/src $PY bench/grouping.py --only-new --json /tmp/i11hp/grouping-before.json 2>&1 | grep -v "Loading weights"
mkdir -p /tmp/clean-after/bench/out && cp /tmp/clean-before/bench/out/grouping-embeddings.pkl /tmp/clean-after/bench/out/
cd /tmp/clean-after && PYTHONPATH=/tmp/clean-after/src $PY bench/grouping.py --only-new --json /tmp/i11hp/grouping-after.json 2>&1 | grep -v "Loading weights"
echo done
