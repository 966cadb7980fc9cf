"""Dedup stage: join each ticket to a recent near-duplicate's group via a FAISS window of embeddings.

A neighbour counts when its cosine is ≥ τ, or ≥ τ_category when the classifier gave both tickets the same
category: reworded reports of one outage are often only moderately similar as sentences, but they land
in the same category within minutes of each other (measured in bench/flood.py, see the README; letting
top-2 categories overlap instead merged too much: pair precision fell to 0.86).

Each dedup worker keeps the whole window in memory by tailing the deduped stream, so workers on
several hosts see each other's tickets; group sizes and incidents are counted atomically in Redis.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
import structlog

from .index import WindowIndex
from .runtime import Entry, Outcome, Stage
from .scripts import Scripts, commit_entry, now_ms

log = structlog.get_logger("dedup")

NEIGHBOURS = 8  # candidates per ticket: the nearest may be in another category, the next one not
LIVE_IDLE_MS = 30_000  # a dedup consumer silent this long (and holding nothing) is gone



class DedupStage(Stage):
    name = "dedup"

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        self.input = keys.enriched
        self.index: WindowIndex | None = None
        self.group_of: dict[str, str] = {}
        self.category_of: dict[str, str] = {}
        self._tail = "0-0"

    async def setup(self, r) -> None:
        self.r = r
        self.scripts = Scripts(r)
        # start the window at now - W on the deduped stream (stream ids are millisecond timestamps)
        self._tail = f"{int((time.time() - self.settings.dedup_window_s) * 1000)}-0"
        await self._catch_up(initial=True)

    async def _alone(self) -> bool:
        """True when this worker is the dedup group's only live consumer: then everything in the deduped
        stream since its last read is its own and already in its window, so reading it back (embeddings and
        all) would only cost Redis traffic. The tail jumps to the stream's end instead. A consumer counts as
        live while it holds pending entries or read within LIVE_IDLE_MS (a worker polls every block_ms)."""
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.xinfo_consumers(self.keys.enriched, self.name)
                pipe.xrevrange(self.keys.deduped, count=1)
                consumers, last = await pipe.execute()
        except Exception:  # no group yet (first batch races its creation): read as usual
            return False
        live = [c for c in consumers if int(c.get("pending", 0)) > 0 or int(c.get("idle", 0)) < LIVE_IDLE_MS]
        if len(live) != 1:
            return False
        if last:
            self._tail = last[0][0].decode()
        return True

    async def _catch_up(self, initial: bool = False) -> None:
        """Add tickets other dedup workers grouped since we last looked."""
        if not initial and await self._alone():
            return
        while True:
            resp = await self.r.xread({self.keys.deduped: self._tail}, count=5000)
            if not resp:
                return
            rows = resp[0][1]
            for eid, f in rows:
                tid = f.get(b"ticket_id", b"").decode()
                if tid and f.get(b"emb") and (self.index is None or tid not in self.index):
                    data = orjson.loads(f[b"data"])
                    gid = data.get("dedup", {}).get("group") or tid
                    vec = np.frombuffer(f[b"emb"], dtype=np.float32)
                    self._add(tid, gid, data["enrich"]["category"], vec, int(eid.split(b"-")[0]) / 1000)
            self._tail = rows[-1][0].decode()
            if len(rows) < 5000:
                return

    def _add(self, tid: str, gid: str, category: str, vec: np.ndarray, ts: float) -> None:
        if self.index is None:
            self.index = WindowIndex(len(vec), self.settings.dedup_window_s)
        self.index.add(tid, vec, ts)
        self.group_of[tid] = gid
        self.category_of[tid] = category
        if len(self.group_of) > 2 * len(self.index) + 10_000:
            self.group_of = {t: g for t, g in self.group_of.items() if t in self.index}
            self.category_of = {t: c for t, c in self.category_of.items() if t in self.index}

    def decode(self, entry: Entry):
        return orjson.loads(entry.fields[b"data"]), np.frombuffer(entry.fields[b"emb"], dtype=np.float32)

    def _neighbours(self, vecs: np.ndarray) -> list[list[tuple[str, float]]]:
        if self.index is None:
            return [[] for _ in range(len(vecs))]
        self.index.expire(time.time())
        return self.index.search(vecs, k=NEIGHBOURS)

    def _pick(self, candidates: list[tuple[str, float]], category: str) -> tuple[str | None, float, str]:
        """The best candidate that qualifies, else the nearest one (for the trail) with rule 'none'."""
        s = self.settings
        for nbr, score in candidates:
            if score >= s.dedup_tau:
                return nbr, score, "tau"
            if score >= s.dedup_tau_category and self.category_of.get(nbr) == category:
                return nbr, score, "tau_category"
        return (candidates[0][0], candidates[0][1], "none") if candidates else (None, -1.0, "none")

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        await self._catch_up()
        vecs = np.stack([e.value[1] for e in entries])
        nbrs = await asyncio.to_thread(self._neighbours, vecs)
        outcomes = []
        now = time.time()
        batch_ids: list[str] = []
        for i, entry in enumerate(entries):
            data, vec = entry.value
            tid = data["ticket"]["ticket_id"]
            category = data["enrich"]["category"]
            candidates = [c for c in nbrs[i] if c[0] != tid]  # a redelivered ticket is already in the window
            if i:
                # tickets of one storm often arrive in one batch: compare with the earlier ones too
                sims = vecs[:i] @ vec
                best = np.argsort(-sims)[:NEIGHBOURS]
                candidates = sorted(candidates + [(batch_ids[j], float(sims[j])) for j in best if batch_ids[j] != tid],
                                    key=lambda x: -x[1])
            nbr, score, rule = self._pick(candidates, category)
            gid = self.group_of.get(nbr, nbr) if rule != "none" else tid
            if tid not in (self.index or ()):
                self._add(tid, gid, category, vec, now)
            gid = self.group_of.get(tid, gid)
            batch_ids.append(tid)
            dedup = {"neighbor": nbr, "score": round(float(score), 4), "group": gid, "joined": gid != tid,
                     "rule": rule, "tau": self.settings.dedup_tau, "tau_category": self.settings.dedup_tau_category,
                     "window_s": self.settings.dedup_window_s}
            outcomes.append(Outcome(entry, apply=self._committer(entry, data, dedup, vec), info={"data": data}))
        return outcomes

    def _committer(self, entry: Entry, data: dict, dedup: dict, vec: np.ndarray):
        tid, gid = data["ticket"]["ticket_id"], dedup["group"]
        enrich = data["enrich"]
        alert = {"ticket_id": tid, "subject": data["ticket"]["subject"][:200], "category": enrich["category"],
                 "team": enrich["team"], "urgency": enrich["urgency"], "group": gid}
        out = {**data, "dedup": dedup}

        async def apply(pipe):
            await self.scripts.group(
                keys=[self.keys.ticket(tid), self.keys.group(gid), self.keys.members(gid), self.keys.incidents,
                      self.keys.alerts, self.keys.events],
                args=[tid, gid, now_ms(), self.settings.incident_k, int(enrich["urgent"]), orjson.dumps(alert),
                      self.settings.ticket_ttl_s, enrich["team"], (data["ticket"]["subject"] or data["ticket"]["body"])[:200],
                      self.settings.stream_maxlen],
                client=pipe,
            )
            await commit_entry(
                pipe, self.scripts, self.settings, self.keys,
                input_stream=entry.stream, output_stream=self.keys.deduped, group=self.name,
                entry_id=entry.id, stage=self.name, status="grouped", ticket_id=tid,
                output=orjson.dumps(out), emb=vec.tobytes(),
                record={"dedup": orjson.dumps(dedup), "t_dedup": now_ms()},
            )
        return apply

    async def after_commit(self, outcomes, results) -> None:
        sent = suppressed = 0
        for res in results:
            alert = res[0][2].decode() if isinstance(res[0][2], bytes) else res[0][2]
            sent += alert in ("sent", "incident")
            suppressed += alert == "suppressed"
        if sent or suppressed:
            await self.r.hincrby(self.keys.stats, "alerts_queued", sent)
            await self.r.hincrby(self.keys.stats, "alerts_suppressed", suppressed)
