#!/bin/bash
# HEAD + my hunks only (git diff of my files: index -> worktree; the others' work is staged), isolated
set -e
D=${1:-/tmp/re-test}
MYFILES="src/routing_engine/infra/keys.py src/routing_engine/infra/runtime.py src/routing_engine/metrics.py src/routing_engine/models/onnx_minilm.py src/routing_engine/stages/dedup.py src/routing_engine/stages/enrich.py src/routing_engine/stages/fallback.py tests/infra/test_runtime.py bench/flood.py bench/flood_report.py streams/enriched.schema.json streams/deduped.schema.json tests/integration/test_contracts.py tests/integration/test_chaos.py README.md"
rm -rf $D && mkdir -p $D
cd /work/main && git archive HEAD | tar -x -C $D
git diff -- $MYFILES > /tmp/my.patch
cd $D && git apply -C1 /tmp/my.patch
cp /work/main/tests/integration/test_urgent_lane.py $D/tests/integration/
