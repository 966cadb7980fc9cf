"""Where the urgent tickets of no storm waited, per ticket, in a flood run kept with --keep-keys:
    python bench/results/issue13-storm-prior/urgent_parts.py <prefix> [scenario]
(reads bench/out/flood-<scenario>-truth.jsonl; scenario defaults to overload)
q: received -> enrich started, en: enrich, de: enrich done -> dedup done, ro: dedup done -> routed (ms)."""

import json
import sys

import redis

prefix = sys.argv[1]
truth = {}
with open("bench/out/flood-" + (sys.argv[2] if len(sys.argv) > 2 else "overload") + "-truth.jsonl") as f:
    for line in f:
        t = json.loads(line)
        truth[t["id"]] = t
r = redis.Redis()
rows = []
for tid, t in truth.items():
    if t["storm"]:
        continue
    h = {k.decode(): v.decode() for k, v in r.hgetall(f"{{{prefix}}}:t:{tid}").items()}
    enrich = json.loads(h.get("enrich") or "{}")
    if not h or not enrich.get("urgent"):
        continue
    dedup = json.loads(h.get("dedup") or "{}")
    rec, start = int(h["received_at"]), int(h.get("t_enrich_start") or h["received_at"])
    parts = {"q": start - rec, "en": int(h["t_enrich"]) - start, "de": int(h["t_dedup"]) - int(h["t_enrich"]),
             "ro": int(h["t_route"]) - int(h["t_dedup"])}
    rows.append((int(h["t_route"]) - rec, tid, t["category"], h.get("category"), h.get("incident"), dedup.get("rule"),
                 dedup.get("lane"), enrich.get("lane"), parts))
for row in sorted(rows):
    print(row)
