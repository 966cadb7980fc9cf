#!/bin/bash
# after: HEAD + my changes only (isolated from others' uncommitted work)
/tmp/sync_test.sh /tmp/re-after
cd /tmp/re-after
export PYTHONPATH=/tmp/re-after/src ROUTING_MODELS_DIR=/work/main/state/models
echo "=== overload after start $(date -u +%T)"
flock /tmp/bench.lock /work/main/.venv/bin/python bench/flood.py --scenario overload --capacity 895 --json /work/main/bench/out/overload-after.json --plot /tmp/re-after/overload.png --no-progress
echo "=== overload after rc $? end $(date -u +%T)"
echo "=== two-storms after start $(date -u +%T)"
flock /tmp/bench.lock /work/main/.venv/bin/python bench/flood.py --scenario two-storms --json /work/main/bench/out/two-storms-after.json --plot /tmp/re-after/two-storms.png --no-progress
echo "=== two-storms after rc $? end $(date -u +%T)"
