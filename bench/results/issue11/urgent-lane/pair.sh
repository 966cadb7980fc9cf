#!/bin/bash
while ! grep -q "overload after2 rc" /tmp/after2.log 2>/dev/null; do sleep 5; done
D=/tmp/re-before2
rm -rf $D && mkdir -p $D && cd /work/main && git archive HEAD | tar -x -C $D
cp /tmp/re-after2/bench/flood.py /tmp/re-after2/bench/flood_report.py $D/bench/
echo "HEAD $(git -C /work/main rev-parse --short HEAD)"
export ROUTING_MODELS_DIR=/work/main/state/models
for run in before2 after3; do
  if [ $run = before2 ]; then cd /tmp/re-before2; else cd /tmp/re-after2; fi
  echo "=== two-storms $run start $(date -u +%T)"
  PYTHONPATH=$PWD/src flock /tmp/bench.lock /work/main/.venv/bin/python bench/flood.py --scenario two-storms --json /work/main/bench/out/two-storms-$run.json --plot $PWD/two-storms.png --no-progress --no-baseline
  echo "=== two-storms $run rc $? end $(date -u +%T)"
done
