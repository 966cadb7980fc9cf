"""Dedup stage: join each ticket to its nearest recent neighbour's group (cosine ≥ τ) via a FAISS window.

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


class DedupStage(Stage):
    name = "dedup"

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        self.input = keys.enriched
        self.index: WindowIndex | None = None
        self.group_of: dict[str, str] = {}
        self._tail = "0-0"

    async def setup(self, r) -> None:
        self.r = r
        self.scripts = Scripts(r)
        # start the window at now - W on the deduped stream (stream ids are millisecond timestamps)
        self._tail = f"{int((time.time() - self.settings.dedup_window_s) * 1000)}-0"
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Add tickets other dedup workers grouped since we last looked."""
        while True:
            resp = await self.r.xread({self.keys.deduped: self._tail}, count=5000)
            if not resp:
                return
            rows = resp[0][1]
            for eid, f in rows:
                tid = f.get(b"ticket_id", b"").decode()
                if tid and f.get(b"emb") and (self.index is None or tid not in self.index):
                    gid = orjson.loads(f[b"data"]).get("dedup", {}).get("group") or tid
                    vec = np.frombuffer(f[b"emb"], dtype=np.float32)
                    self._add(tid, gid, vec, int(eid.split(b"-")[0]) / 1000)
            self._tail = rows[-1][0].decode()
            if len(rows) < 5000:
                return

    def _add(self, tid: str, gid: str, vec: np.ndarray, ts: float) -> None:
        if self.index is None:
            self.index = WindowIndex(len(vec), self.settings.dedup_window_s)
        self.index.add(tid, vec, ts)
        self.group_of[tid] = gid
        if len(self.group_of) > 2 * len(self.index) + 10_000:
            self.group_of = {t: g for t, g in self.group_of.items() if t in self.index}

    def decode(self, entry: Entry):
        return orjson.loads(entry.fields[b"data"]), np.frombuffer(entry.fields[b"emb"], dtype=np.float32)

    def _neighbours(self, vecs: np.ndarray) -> list[tuple[str | None, float]]:
        now = time.time()
        if self.index is not None:
            self.index.expire(now)
            return self.index.search(vecs)
        return [(None, -1.0)] * len(vecs)

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        await self._catch_up()
        vecs = np.stack([e.value[1] for e in entries])
        nbrs = await asyncio.to_thread(self._neighbours, vecs)
        tau = self.settings.dedup_tau
        outcomes = []
        now = time.time()
        batch_ids: list[str] = []
        for i, entry in enumerate(entries):
            data, vec = entry.value
            tid = data["ticket"]["ticket_id"]
            nbr, score = nbrs[i]
            if i:
                # tickets of one storm often arrive in one batch: compare with the earlier ones too
                sims = vecs[:i] @ vec
                j = int(np.argmax(sims))
                if sims[j] > score and batch_ids[j] != tid:
                    nbr, score = batch_ids[j], float(sims[j])
            gid = self.group_of.get(nbr, nbr) if (nbr is not None and score >= tau) else tid
            if tid not in (self.index or ()):
                self._add(tid, gid, vec, now)
            gid = self.group_of.get(tid, gid)
            batch_ids.append(tid)
            dedup = {"neighbor": nbr, "score": round(float(score), 4), "group": gid, "tau": tau,
                     "joined": gid != tid, "window_s": self.settings.dedup_window_s}
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
                input_stream=self.input, output_stream=self.keys.deduped, group=self.name,
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
