#!/usr/bin/env bash
# after (this tree) then before (PYTHONPATH=/tmp/before/src: a worktree of the commit before), same bench code:
#   [OUT=bench/results/DIR] bash bench/results/lane-later/pair.sh SCENARIO TAG [flood args...]
# PIN="taskset -c 0" runs the whole bench (engine, Redis client, load) on one core: a box half as fast;
# HOG=1 adds a busy loop on core 0 beside it: about a quarter (the slow boxes' embedder ceilings of 263-482 texts/s).
set -u
if [ -n "${HOG:-}" ]; then taskset -c 0 python3 -c "while True: pass" & hog=$!; trap "kill $hog" EXIT; fi
sc=$1; tag=$2; shift 2
out=${OUT:-bench/results/lane-later}
for side in after before; do
  if [ $side = before ]; then pp=/tmp/before/src; else pp=src; fi
  PYTHONPATH=$pp flock /tmp/bench.lock timeout 900 ${PIN:-} .venv/bin/python bench/flood.py --scenario $sc --no-baseline --no-progress \
    --json $out/$side-$sc-$tag.json --plot /tmp/$side.png "$@" > $out/$side-$sc-$tag.log 2>&1
  grep -E "throughput|ceiling|in no storm|lost|grouping|incidents |detected" $out/$side-$sc-$tag.log | sed "s/^/$side: /"
done
