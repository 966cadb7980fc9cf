"""How long an urgent lane's batch takes to embed while a full batch embeds beside it, and what it costs the full
batch: the two ways the int8 embedder can serve it (`--policy`), measured in one run on the same texts.

    python bench/lane_embed.py                     # writes bench/out/lane-embed.json
    python bench/lane_embed.py --sizes 1 8 32 64 --rounds 20

- `concurrent`: the urgent batch's run starts at once beside the full batch's run in progress (both sessions'
  threads share the cores);
- `gate`: it waits for the run in progress, then has the cores alone (models/gate.py);
- `auto`: what the embedder does (concurrent below one run of texts, the gate from one run up).

A background thread embeds batches of 512 BANKING77 texts back to back (the main stream under a backlog); the
foreground embeds an urgent batch of each size every ~150 ms and records its wall time. Anchors in the same run:
each size embedded alone (no background), and the background's texts/s with no urgent batches.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from routing_engine.config import Settings  # noqa: E402
from routing_engine.models import onnx_minilm  # noqa: E402
from routing_engine.models.data import read_labelled  # noqa: E402

# each policy as OnnxEmbedder._encode's `gated`: beside the run in progress, through the gate, the shipped rule
GATED = {"concurrent": False, "gate": True, "auto": None}


def background(emb, texts, stop: threading.Event, counter: list[int]) -> None:
    while not stop.is_set():
        emb.encode(texts)
        counter[0] += len(texts)


def pct(v, q):
    return round(float(np.percentile(v, q)), 1) if v else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models-dir", default=None,
                   help="where the int8 model is (default: ROUTING_MODELS_DIR, state/models)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    p.add_argument("--rounds", type=int, default=15, help="urgent batches per size and policy")
    p.add_argument("--json", default=str(ROOT / "bench" / "out" / "lane-embed.json"))
    a = p.parse_args()
    models = Path(a.models_dir or Settings.from_env().models_path)
    path = onnx_minilm.latest(models)
    if path is None:
        raise SystemExit(f"no int8 model under {models}: run `routing-engine train` first")
    emb = onnx_minilm.OnnxEmbedder(path)
    texts, _ = read_labelled(ROOT / "src/routing_engine/data/banking77/train.csv")
    rng = np.random.default_rng(0)
    main_batch = [texts[i] for i in rng.choice(len(texts), 512, replace=False)]
    urgent_pool = [texts[i] for i in rng.choice(len(texts), 2000, replace=False)]
    emb.encode(main_batch[:64])  # warm

    report: dict = {"model": path.name, "threads": emb.threads, "run_size": emb.batch_size, "sizes": a.sizes,
                    "rounds": a.rounds, "alone_ms": {}, "policies": {}}
    print(f"int8 model {path.name}, {emb.threads} threads, runs of {emb.batch_size}", file=sys.stderr)
    for n in a.sizes:
        ms = []
        for r in range(a.rounds):
            batch = urgent_pool[(r * n) % 1900:(r * n) % 1900 + n]
            t = time.perf_counter()
            emb.encode(batch)
            ms.append((time.perf_counter() - t) * 1000)
        report["alone_ms"][n] = {"p50": pct(ms, 50), "p95": pct(ms, 95)}
    # the background's rate alone
    stop, counter = threading.Event(), [0]
    th = threading.Thread(target=background, args=(emb, main_batch, stop, counter))
    t0 = time.perf_counter()
    th.start()
    time.sleep(6)
    stop.set()
    th.join()
    report["background_alone_texts_per_s"] = round(counter[0] / (time.perf_counter() - t0), 1)
    print(f"alone: {report['alone_ms']}; background alone {report['background_alone_texts_per_s']} texts/s",
          file=sys.stderr)
    for policy in GATED:
        res = {}
        for n in a.sizes:
            stop, counter = threading.Event(), [0]
            th = threading.Thread(target=background, args=(emb, main_batch, stop, counter))
            t0 = time.perf_counter()
            th.start()
            time.sleep(0.3)
            ms = []
            for r in range(a.rounds):
                batch = urgent_pool[(r * n) % 1900:(r * n) % 1900 + n]
                t = time.perf_counter()
                emb._encode(batch, urgent=True, gated=GATED[policy])  # "auto" is what encode_now does
                ms.append((time.perf_counter() - t) * 1000)
                time.sleep(0.15 * rng.random())  # arrive at random points of the background's runs
            stop.set()
            th.join()
            res[n] = {"p50": pct(ms, 50), "p95": pct(ms, 95),
                      "background_texts_per_s": round(counter[0] / (time.perf_counter() - t0), 1)}
            print(f"{policy:>10} n={n:>3}: urgent p50 {res[n]['p50']} ms p95 {res[n]['p95']} ms; background "
                  f"{res[n]['background_texts_per_s']} texts/s", file=sys.stderr)
        report["policies"][policy] = res
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
