#!/usr/bin/env python
"""How much CPU the dedup stage's grouping costs per ticket: a real scenario's tickets replayed through the stage's
own decision code (`DedupStage._decide`: the in-batch neighbours and `Grouper.assign`) in batches of 64, with the
FAISS window in front of it, no Redis. Writes ms/ticket per part and a digest of every decision, so two trees
(before / after a change) can be checked to decide exactly the same on the same input.

    python bench/grouping_speed.py                                # calm 5,000 tickets and two-storms
    python bench/grouping_speed.py --stage                        # ... and the whole stage on Redis (REDIS_URL)
    PYTHONPATH=/tmp/clean-before/src python bench/grouping_speed.py --json bench/out/grouping-speed-before.json

The inputs (MiniLM vectors of the scenario's texts, the fast path's top labels) are computed once with the
pipeline's embedder and the latest model in ROUTING_MODELS_DIR (trained first when missing) and cached under
bench/out/, so every tree replays the same input. Timestamps are the scenario's arrival times (the stage takes
rates on arrival times too); the window expires on them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scenario as sc_mod  # noqa: E402

OUT = HERE / "out" / "grouping-speed.json"
BATCH = 64
CAPACITY = 200.0  # tickets/s that relative rates ("10x") refer to


def ticket_text(t: dict) -> str:
    return f"{t.get('subject', '')}\n{t.get('body', '')}".strip()


def plan(name: str, tickets: int | None) -> list:
    sc = sc_mod.load_scenario(name)
    rows = sc_mod.load_rows(sc.data)
    cap = CAPACITY if sc.relative else None
    if not tickets:
        return sc_mod.generate(sc, rows, cap)
    return sc_mod.stretched(sc, rows, tickets, cap)[0]  # as bench/flood.py --tickets stretches it


def inputs(name: str, tickets: int | None, cache_dir: Path) -> dict:
    """ids, arrival times, vectors (float32, unit) and top-3 labels of the scenario, cached."""
    path = cache_dir / f"grouping-speed-{name}-{tickets or 'all'}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        top = json.loads(str(z["top"]))
        return {"ids": [str(x) for x in z["ids"]], "at": z["at"], "vecs": z["vecs"], "top": top,
                "storm": [str(x) for x in z["storm"]]}
    from routing_engine.config import Settings
    from routing_engine.models.classifier import load_latest
    from routing_engine.models.embedder import pipeline_embedder
    from routing_engine.service import ensure_model

    settings = Settings.from_env()
    ensure_model(settings)
    embedder = pipeline_embedder(settings.embedder, settings.models_path, min_cosine=settings.embedder_min_cosine)
    clf = load_latest(settings.models_path)
    planned = plan(name, tickets)
    texts = [ticket_text(p.ticket) for p in planned]
    vecs = np.concatenate([embedder.encode(texts[i:i + 256]) for i in range(0, len(texts), 256)]).astype(np.float32)
    proba = clf.predict_proba(vecs, texts)
    top = [[(clf.labels[j], round(float(row[j]), 6)) for j in np.argsort(-row)[:3]] for row in proba]
    ids = [p.ticket["id"] for p in planned]
    at = np.array([p.at_s for p in planned])
    storm = [p.truth["storm"] or "" for p in planned]
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.array(ids), at=at, vecs=vecs, top=np.array(json.dumps(top)), storm=np.array(storm))
    return {"ids": ids, "at": at, "vecs": vecs, "top": top, "storm": storm}


def replay(data: dict, repeats: int) -> dict:
    """The stage's decision path over the whole stream, `repeats` times from scratch; the fastest run's timings."""
    from routing_engine.config import Settings
    from routing_engine.infra.keys import Keys
    from routing_engine.models.window_index import WindowIndex
    from routing_engine.stages.dedup import NEIGHBOURS, DedupStage

    settings = Settings.from_env()
    t0 = 1.8e9  # arrival times as epoch seconds
    no_created_at = SimpleNamespace(created_s=lambda: None)  # the stage takes rates on arrival times then
    msgs = [SimpleNamespace(ticket_id=tid, ticket=no_created_at, emb=v, category=top[0][0],
                            received_at=int((t0 + at) * 1000),
                            enrich={"category": top[0][0], "confidence": top[0][1], "fast": {"top": top}})
            for tid, at, v, top in zip(data["ids"], data["at"], data["vecs"], data["top"])]
    runs = []
    for _ in range(repeats):
        stage = DedupStage(settings, Keys(settings.prefix))
        index = WindowIndex(data["vecs"].shape[1], settings.dedup_window_s)
        t_nbr = t_dec = 0.0
        digest = hashlib.sha256()
        rules: dict[str, int] = {}
        opened = 0
        for lo in range(0, len(msgs), BATCH):
            batch = msgs[lo:lo + BATCH]
            vecs = np.stack([m.emb for m in batch])
            now = batch[-1].received_at / 1000
            a = time.perf_counter()
            gone = index.expire(now)
            if gone:
                stage.grouper.forget(gone)
            nbrs = index.search(vecs, k=NEIGHBOURS) if len(index) else [[] for _ in batch]
            b = time.perf_counter()
            stage.grouper.begin()
            decisions = stage._decide(batch, vecs, nbrs)
            stage.grouper.keep()
            c = time.perf_counter()
            t_nbr += b - a
            t_dec += c - b
            for m, d in zip(batch, decisions):
                index.add(m.ticket_id, m.emb, m.received_at / 1000)
                digest.update(repr((m.ticket_id, d.group, d.joined_group, d.rule, d.score, d.neighbor,
                                    d.neighbor_score, d.merges, d.opens, d.state)).encode())
                rules[d.rule] = rules.get(d.rule, 0) + 1
                opened += d.opens
        live = sum(1 for x in stage.grouper.groups.values() if x.n >= 2 and x.merged_into is None)
        runs.append({"neighbours_s": t_nbr, "decide_s": t_dec, "digest": digest.hexdigest(), "rules": rules,
                     "incidents_opened": opened, "groups": len(stage.grouper.groups),
                     "live_multi_groups_at_end": live})
    if len({r["digest"] for r in runs}) != 1:
        raise SystemExit("the decisions differ between repeats of the same replay")
    best = min(runs, key=lambda r: r["decide_s"])
    n = len(msgs)
    return {"tickets": n, "batch": BATCH, "repeats": repeats,
            "decide_ms_per_ticket": round(best["decide_s"] * 1000 / n, 4),
            "decide_ms_per_ticket_runs": [round(r["decide_s"] * 1000 / n, 4) for r in runs],
            "neighbours_ms_per_ticket": round(min(r["neighbours_s"] for r in runs) * 1000 / n, 4),
            "decide_ms_per_batch": round(best["decide_s"] * 1000 / n * BATCH, 2),
            **{k: best[k] for k in ("digest", "rules", "incidents_opened", "groups", "live_multi_groups_at_end")}}


async def stage_run(data: dict, texts: list[str], limit: int | None) -> dict:
    """The whole `DedupStage.process` per batch of 64 on the real Redis (a scratch prefix, deleted after): catch-up,
    window search, decisions, the group.lua commit of the decisions and the outcomes; each part timed."""
    import uuid

    import redis.asyncio as aioredis

    from routing_engine.config import Settings
    from routing_engine.domain.messages import Enriched
    from routing_engine.domain.ticket import Ticket
    from routing_engine.infra.keys import Keys
    from routing_engine.infra.runtime import Entry, StageContext
    from routing_engine.infra.scripts import Scripts
    from routing_engine.stages.dedup import DedupStage

    settings = Settings.from_env(prefix="gspeed-" + uuid.uuid4().hex[:8])
    keys = Keys(settings.prefix)
    r = aioredis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0")
    stage = DedupStage(settings, keys)
    await stage.setup(StageContext(r, Scripts(r, settings, keys), "bench"))
    parts = {"_catch_up": 0.0, "_neighbours": 0.0, "_decide": 0.0, "_claim": 0.0}
    for name in parts:  # time each part of process() where it runs
        fn = getattr(stage, name)

        def timed(*a, _fn=fn, _name=name):
            t = time.perf_counter()
            out = _fn(*a)
            if asyncio.iscoroutine(out):
                async def wait():
                    try:
                        return await out
                    finally:
                        parts[_name] += time.perf_counter() - t
                return wait()
            parts[_name] += time.perf_counter() - t
            return out
        setattr(stage, name, timed)
    now = time.time()
    n = min(limit or len(texts), len(texts))
    msgs = []
    for i in range(n):
        top = data["top"][i]
        enrich = {"category": top[0][0], "team": "payments", "urgency": 0.2, "urgent": False,
                  "confidence": top[0][1], "fast": {"top": top}}
        msgs.append(Enriched(Ticket(data["ids"][i], subject="", body=texts[i]),
                             int((now + data["at"][i] - data["at"][n - 1] - 1) * 1000), enrich, data["vecs"][i]))
    total = 0.0
    try:
        for lo in range(0, n, BATCH):
            entries = []
            for j, m in enumerate(msgs[lo:lo + BATCH]):
                fields = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in m.to_fields().items()}
                e = Entry(f"{lo + j + 1}-0", fields, keys.enriched)
                e.value = stage.decode(e)
                entries.append(e)
            t = time.perf_counter()
            await stage.process(entries)
            total += time.perf_counter() - t
    finally:
        async for key in r.scan_iter(match="{" + settings.prefix + "}*", count=1000):
            await r.unlink(key)
        await r.aclose()
    ms = {k.lstrip("_"): round(v * 1000 / n, 4) for k, v in parts.items()}
    ms["rest"] = round(total * 1000 / n - sum(ms.values()), 4)
    return {"tickets": n, "process_ms_per_ticket": round(total * 1000 / n, 4), "parts_ms_per_ticket": ms}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", action="append", help="scenario[:tickets] (repeatable; default calm:5000 and "
                                                        "two-storms)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=str(OUT))
    ap.add_argument("--cache-dir", default=str(HERE / "out"))
    ap.add_argument("--stage", action="store_true", help="also time the whole DedupStage.process on the real Redis")
    args = ap.parse_args(argv)
    import routing_engine

    report = {"code": str(Path(routing_engine.__file__).resolve().parent), "scenarios": {}}
    for spec in args.scenario or ["calm:5000", "two-storms"]:
        name, _, n = spec.partition(":")
        data = inputs(name, int(n) if n else None, Path(args.cache_dir))
        res = replay(data, args.repeats)
        report["scenarios"][spec] = res
        print(f"{spec:<12} {res['tickets']} tickets: decide {res['decide_ms_per_ticket']:.3f} ms/ticket "
              f"(runs {res['decide_ms_per_ticket_runs']}), window search {res['neighbours_ms_per_ticket']:.3f} "
              f"ms/ticket; {res['live_multi_groups_at_end']} live groups of 2+ at the end; "
              f"digest {res['digest'][:12]}")
        if args.stage:
            texts = [ticket_text(p.ticket) for p in plan(name, int(n) if n else None)]
            st = asyncio.run(stage_run(data, texts, None))
            res["stage"] = st
            print(f"{spec:<12} DedupStage.process {st['process_ms_per_ticket']:.3f} ms/ticket: "
                  f"{st['parts_ms_per_ticket']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
