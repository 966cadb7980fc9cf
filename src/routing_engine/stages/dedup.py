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

from ..domain.messages import Deduped, Enriched, Grouping
from ..infra.runtime import Entry, Outcome, Stage, StageContext
from ..infra.scripts import now_ms
from ..models.window_index import WindowIndex

log = structlog.get_logger("dedup")

NEIGHBOURS = 8  # candidates per ticket: the nearest may be in another category, the next one not
LIVE_IDLE_MS = 30_000  # a dedup consumer silent this long (and holding nothing) is gone

class DedupStage(Stage):
    name = "dedup"

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        self.index: WindowIndex | None = None
        self.group_of: dict[str, str] = {}
        self.category_of: dict[str, str] = {}
        self._tail = "0-0"

    async def setup(self, ctx: StageContext) -> None:
        self.r = ctx.r
        self.scripts = ctx.scripts
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
                    msg = Deduped.from_fields(f)
                    self._add(tid, msg.group or tid, msg.category, msg.emb, int(eid.split(b"-")[0]) / 1000)
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

    def decode(self, entry: Entry) -> Enriched:
        return Enriched.from_fields(entry.fields)

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
        msgs: list[Enriched] = [e.value for e in entries]
        vecs = np.stack([m.emb for m in msgs])
        nbrs = await asyncio.to_thread(self._neighbours, vecs)
        outcomes = []
        now = time.time()
        batch_ids: list[str] = []
        for i, (entry, msg) in enumerate(zip(entries, msgs)):
            tid, category, vec = msg.ticket_id, msg.category, msg.emb
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
            grouping = Grouping(neighbor=nbr, score=round(float(score), 4), group=gid, joined=gid != tid, rule=rule,
                                tau=self.settings.dedup_tau, tau_category=self.settings.dedup_tau_category,
                                window_s=self.settings.dedup_window_s)
            outcomes.append(Outcome(entry, writes=self._writes(Deduped.of(msg, grouping))))
        return outcomes

    def _writes(self, msg: Deduped):
        t = msg.ticket
        alert = {"ticket_id": msg.ticket_id, "subject": t.subject[:200], "category": msg.category,
                 "team": msg.team, "urgency": msg.urgency, "group": msg.group}
        return [
            self.scripts.group(ticket_id=msg.ticket_id, gid=msg.group, urgent=msg.urgent, alert=alert, team=msg.team,
                               sample=(t.subject or t.body)[:200]),
            self.scripts.commit(stage=self.name, status="grouped", ticket_id=msg.ticket_id,
                                output_stream=self.keys.deduped, data=orjson.dumps(msg.data()), emb=msg.emb_bytes(),
                                record={"dedup": orjson.dumps(msg.dedup), "t_dedup": now_ms()}),
        ]

    async def after_commit(self, outcomes, results) -> None:
        sent = suppressed = 0
        for group_reply, _commit_reply in results:
            _size, _incident, alert = group_reply
            alert = alert.decode() if isinstance(alert, bytes) else alert
            sent += alert in ("sent", "incident")
            suppressed += alert == "suppressed"
        if sent or suppressed:
            await self.r.hincrby(self.keys.stats, "alerts_queued", sent)
            await self.r.hincrby(self.keys.stats, "alerts_suppressed", suppressed)
