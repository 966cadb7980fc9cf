#!/usr/bin/env python
"""MiniLM in PyTorch fp32 against the int8 ONNX Runtime model the pipeline builds, in one run on one machine:
texts/s at batch 32 and 128, one text's latency, cosine to fp32, and BANKING77 accuracy (logistic regression on the
train split's embeddings, accuracy on the held-out 20%; also a model trained on fp32 vectors served int8 ones).

    python bench/int8_embedder.py                      # builds the int8 model in a temp dir from the shipped weights
    python bench/int8_embedder.py --models-dir state/models   # or uses (builds) the one there

Rates alternate torch / int8 / torch / int8 over the same texts and keep each one's best, so a neighbour's load
spike does not land on one side only. Writes bench/out/int8-embedder.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from embedders import load_split  # noqa: E402

OUT = HERE / "out" / "int8-embedder.json"


def rate(emb, texts: list[str], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        emb.encode(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - t0)


def one_text_ms(emb, texts: list[str]) -> float:
    times = []
    for t in texts:
        t0 = time.perf_counter()
        emb.encode([t])
        times.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(times)), 2)


def lr_fit(X, y):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=10.0, max_iter=2000).fit(X, y)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models-dir", help="use (or build) the int8 model here; default: build one in a temp dir")
    ap.add_argument("--rate-texts", type=int, default=1024, help="texts timed per rate measurement")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per batch size")
    args = ap.parse_args()
    os.environ.setdefault("ROUTING_LOG_LEVEL", "warning")

    from routing_engine.logs import setup_logging
    from routing_engine.models import onnx_minilm
    from routing_engine.models.embedder import shared_embedder

    setup_logging("console", "warning")
    torch_emb = shared_embedder()
    tmp = None
    if args.models_dir:
        models = Path(args.models_dir)
        path = onnx_minilm.latest(models)
    else:
        tmp = tempfile.TemporaryDirectory()
        models, path = Path(tmp.name), None
    t0 = time.perf_counter()
    if path is None:
        path = onnx_minilm.build(models, torch_emb)
    build_s = round(time.perf_counter() - t0, 1)
    int8 = onnx_minilm.OnnxEmbedder(path)

    texts, labels, tr, te = load_split()
    sample = [texts[i] for i in te[: args.rate_texts]]
    for e in (torch_emb, int8):
        e.encode(sample[:32])  # warm-up
    rates: dict = {}
    for batch in (32, 128):
        best = {"torch_fp32": 0.0, "onnx_int8": 0.0}
        for _ in range(args.rounds):
            best["torch_fp32"] = max(best["torch_fp32"], rate(torch_emb, sample, batch))
            best["onnx_int8"] = max(best["onnx_int8"], rate(int8, sample, batch))
        rates[f"batch_{batch}"] = {k: round(v, 1) for k, v in best.items()}
        print(f"batch {batch}: torch fp32 {best['torch_fp32']:.0f} texts/s, int8 {best['onnx_int8']:.0f} texts/s",
              flush=True)
    one = {"torch_fp32": one_text_ms(torch_emb, sample[:64]), "onnx_int8": one_text_ms(int8, sample[:64])}

    t0 = time.perf_counter()
    X32 = torch_emb.encode(texts)
    t_torch = time.perf_counter() - t0
    t0 = time.perf_counter()
    X8 = int8.encode(texts)
    t_int8 = time.perf_counter() - t0
    cos = np.sum(X32.astype(np.float64) * X8, axis=1)
    lr32, lr8 = lr_fit(X32[tr], labels[tr]), lr_fit(X8[tr], labels[tr])
    acc = {"torch_fp32": float((lr32.predict(X32[te]) == labels[te]).mean()),
           "onnx_int8": float((lr8.predict(X8[te]) == labels[te]).mean()),
           "trained_fp32_served_int8": float((lr32.predict(X8[te]) == labels[te]).mean())}
    res = {
        "data": f"BANKING77 train (shipped), stratified 80/20 split seed 0: {len(tr)} train / {len(te)} held out",
        "int8_model": path.name, "int8_check": int8.meta.get("check"), "build_s": build_s if tmp else None,
        "rates_texts_per_s": rates, "rate_texts": len(sample), "rounds": args.rounds,
        "one_text_ms_p50": one,
        "all_texts": {"n": len(texts), "torch_fp32_s": round(t_torch, 1), "onnx_int8_s": round(t_int8, 1)},
        "cosine_to_fp32": {"mean": round(float(cos.mean()), 5), "p1": round(float(np.percentile(cos, 1)), 5),
                           "min": round(float(cos.min()), 5)},
        "accuracy_logreg": {k: round(v, 4) for k, v in acc.items()},
        "threads": int8.threads, "cpus": os.cpu_count(), "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2))
    print(f"\n{res['data']}; load average at the end {res['loadavg_end']} on {res['cpus']} CPUs")
    print(f"{'embedder':<28}{'texts/s b32':>12}{'texts/s b128':>13}{'1 text ms':>10}{'LR accuracy':>13}")
    for k, name in (("torch_fp32", "MiniLM PyTorch fp32"), ("onnx_int8", "MiniLM ONNX Runtime int8")):
        print(f"{name:<28}{rates['batch_32'][k]:>12.0f}{rates['batch_128'][k]:>13.0f}{one[k]:>10}"
              f"{acc[k]:>13.4f}")
    print(f"LR trained on fp32, served int8 vectors: {acc['trained_fp32_served_int8']:.4f}")
    print(f"cosine int8 vs fp32 over all {len(texts)} texts: mean {res['cosine_to_fp32']['mean']}, "
          f"p1 {res['cosine_to_fp32']['p1']}, min {res['cosine_to_fp32']['min']}")
    print(f"wrote {OUT}")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
