#!/usr/bin/env bash
# before (HEAD via PYTHONPATH=/tmp/before/src) and after, alternating, on the current bench code:
#   bash bench/results/urgent-gate/pair.sh SCENARIO TAG [flood args...]
set -u
sc=$1; tag=$2; shift 2
out=bench/results/urgent-gate
for side in after before; do
  if [ $side = before ]; then pp=/tmp/before/src; else pp=src; fi
  PYTHONPATH=$pp flock /tmp/bench.lock timeout 900 .venv/bin/python bench/flood.py --scenario $sc --no-baseline --no-progress \
    --json $out/$side-$sc-$tag.json --plot /tmp/$side.png "$@" > $out/$side-$sc-$tag.log 2>&1
  grep -E "throughput|urgent|per stage|lost|grouping|incidents " $out/$side-$sc-$tag.log | sed "s/^/$side: /"
done
