"""A `--keep-keys` overload run's urgent lane in enrich: time per lane batch and the wait before enrich.

    python bench/results/issue11/batch/tried/lanes.py flood-xxxxxxxx   # the run's prefix, without the braces
"""

import json
import sys

import numpy as np
import orjson
import redis


def pc(a, q):
    return round(float(np.percentile(a, q)), 1)


def main(prefix: str) -> None:
    r = redis.Redis()
    base = "{" + prefix + "}"
    truth = [json.loads(line)["id"] for line in open("bench/out/flood-overload-truth.jsonl")]
    pipe = r.pipeline(transaction=False)
    for t in truth:
        pipe.hgetall(f"{base}:t:{t}")
    batch_ms, wait_ms, embed_ms, seen = [], [], [], set()
    for h in pipe.execute():
        h = {a.decode(): b.decode() for a, b in h.items()}
        e = orjson.loads(h["enrich"])
        if e.get("ingest_lane") != "urgent" or e.get("batch", 99) > 8:
            continue
        wait_ms.append(int(h["t_enrich_start"]) - int(h["received_at"]))
        key = (h["t_enrich_start"], e.get("batch"))
        if key not in seen:  # one row per lane batch
            seen.add(key)
            batch_ms.append(int(h["t_enrich"]) - int(h["t_enrich_start"]))
            embed_ms.append(e["steps_ms"]["embed"])
    print(prefix, "lane batches", len(batch_ms), "enrich ms p50/p90/max", pc(batch_ms, 50), pc(batch_ms, 90),
          max(batch_ms), "embed ms p50/p90", pc(embed_ms, 50), pc(embed_ms, 90), "| lane tickets", len(wait_ms),
          "wait before enrich p50/p90/max", pc(wait_ms, 50), pc(wait_ms, 90), max(wait_ms))


if __name__ == "__main__":
    main(sys.argv[1])
