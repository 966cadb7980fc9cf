#!/usr/bin/env python
"""What the dedup stage's near-duplicate window costs per ticket as traffic stays high: the window holds every
ticket of the last ROUTING_DEDUP_WINDOW_S (300 s), and its search is exact (FAISS flat inner product), so its cost
grows with the sustained rate. Replays `--seconds` of event time at each `--rate` through `WindowIndex` the way the
stage uses it (expire, search 8 neighbours for a batch, add the batch; searched and timed in the last minute, when the
window is as full as the rate makes it), with the window capped at
ROUTING_DEDUP_WINDOW_MAX tickets and, as the anchor, uncapped. Vectors are random unit vectors (the cost does not
depend on their values). Writes bench/out/window-speed.json.

    python bench/window_speed.py                       # rates 100, 300, 1000 tickets/s for 400 s, batches of 512
    python bench/window_speed.py --rate 300 --seconds 600 --cap 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out" / "window-speed.json"
DIM = 384
NEIGHBOURS = 8


def replay(rate: float, seconds: float, batch: int, window_s: float, cap: int, seed: int = 0) -> dict:
    from routing_engine.models.window_index import WindowIndex

    rng = np.random.default_rng(seed)
    index = WindowIndex(DIM, window_s, max_vectors=cap)
    n = int(rate * seconds)
    tail_s, tail_n, peak = 0.0, 0, 0
    for lo in range(0, n, batch):
        k = min(batch, n - lo)
        vecs = rng.standard_normal((k, DIM), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        now = (lo + k) / rate
        t = time.perf_counter()
        index.expire(now)
        if now >= seconds - 60 and len(index):  # searched in the last minute only: the window is as full as this
            index.search(vecs, k=NEIGHBOURS)    # rate makes it (before, the batches only fill it)
            tail_s, tail_n = tail_s + time.perf_counter() - t, tail_n + k
        for i in range(k):
            index.add(f"t{lo + i}", vecs[i], now)
        peak = max(peak, len(index))
    return {"rate": rate, "seconds": seconds, "cap": cap, "tickets": n, "window_peak": peak,
            "ms_per_ticket_last_minute": round(1000 * tail_s / max(tail_n, 1), 4)}


def main(argv=None) -> int:
    from routing_engine.config import Settings

    s = Settings.from_env()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, action="append", help="tickets/s (repeatable; default 100, 300, 1000)")
    ap.add_argument("--seconds", type=float, default=400.0)
    ap.add_argument("--batch", type=int, default=s.batch_size)
    ap.add_argument("--cap", type=int, default=s.dedup_window_max,
                    help="ROUTING_DEDUP_WINDOW_MAX (default: the setting)")
    ap.add_argument("--json", default=str(OUT))
    args = ap.parse_args(argv)
    rows = []
    for rate in args.rate or [100.0, 300.0, 1000.0]:
        for cap in (args.cap, 0):  # 0: the anchor, no cap
            res = replay(rate, args.seconds, args.batch, s.dedup_window_s, cap)
            rows.append(res)
            print(f"rate {rate:>6.0f}/s  cap {cap or 'none':>6}  window peak {res['window_peak']:>7,}  search "
                  f"{res['ms_per_ticket_last_minute']:.3f} ms/ticket (expire + search, the last minute)",
                  file=sys.stderr)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"window_s": s.dedup_window_s, "batch": args.batch, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
