#!/bin/bash
# Offline (bench/grouping.py, out of sample unless said): before = a worktree of fac4991~1 at /tmp/before (its
# src on PYTHONPATH, this tree's bench), after = this tree (TREES=after SKIP_CALM20K=1 for the final rerun). Orders: arrival, drain 40/s, flushed behind 2 workers.
cd "$(dirname "$0")/../../.." || exit 1
out=bench/results/issue13-workers2
export HF_HUB_OFFLINE=1
g() { local name=$1 tree=$2; shift 2
  if [ "$tree" = before ]; then PYTHONPATH=/tmp/before/src .venv/bin/python bench/grouping.py --only-new "$@" --json $out/$name.json
  else .venv/bin/python bench/grouping.py --only-new "$@" --json $out/$name.json; fi 2>&1 | grep -v Loading > $out/$name.log; }
for tree in ${TREES:-before after}; do
  g offline-$tree-arrival $tree
  g offline-$tree-drain40 $tree --drain 40
  g offline-$tree-flush-w2 $tree --flush --workers 2 --seed 0 --seed 1
  [ -n "$SKIP_CALM20K" ] || g offline-$tree-calm20k-w2 $tree --in-sample --scenario calm --tickets 20000 --flush --workers 2 --seed 0 --seed 1 --seed 2
done
