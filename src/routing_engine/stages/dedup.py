"""Dedup stage: each ticket joins the storm group it is most like as a whole (models/grouping.py), and groups of one
storm merge into one incident.

Where a ticket goes is decided by the Grouper: cosine to a group's centroid (with the predicted category as
evidence), the single-neighbour rule as fallback, merges of converging groups. A FAISS window of the last W
seconds of embeddings gives each ticket its nearest neighbours (whose groups are candidates, with every group
of several members).

Several dedup workers, one answer. Every worker holds the same groups because every grouping decision goes
through one ordered log in Redis ({prefix}:dedup:log, with a sequence number {prefix}:dedup:seq): a worker
replays the log it has not seen, decides its batch speculatively, and commits it with streams/group.lua, which
writes nothing unless the sequence is still the one the worker decided from. When another worker committed in
between, the worker rolls its decisions back, replays the newer entries and decides again. So group creation,
joining and merging are atomic and linearised: two tickets of a new storm handled at the same moment by two
workers end in one group, whatever the timing (optimistic concurrency; a stalled worker can only lose its turn,
never commit a decision made on an old view). Sharding by category was the alternative, rejected because
storms spill across predicted categories and the rule joins across them. An operator's split, move-out, move or
merge (streams/regroup.lua) is an entry of the same log: every worker applies it (models/regroup.py) before its
next batch.
"""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import orjson
import structlog

from ..domain import urgency
from ..domain.messages import Deduped, Enriched, Grouping
from ..infra.runtime import Entry, Outcome, Stage, StageContext
from ..infra.scripts import now_ms
from ..models.grouping import Decision, Grouper, GroupingRule
from ..models.regroup import regroup
from ..models.window_index import WindowIndex

log = structlog.get_logger("dedup")

NEIGHBOURS = 8  # candidates per ticket: the nearest may be in another category, the next one not
LOG_MARGIN_S = 60  # the decision log keeps the window plus this (a worker starting reads the window back)
MAX_TRIES = 50  # a batch decided again this often without committing (others kept committing first) fails
DECIDE_SLICE = 128  # tickets decided under one hold of the lock the urgent lane's loop shares


def rule_of(settings) -> GroupingRule:
    s = settings
    return GroupingRule(tau=s.dedup_tau, tau_category=s.dedup_tau_category, tau_centroid=s.dedup_tau_centroid,
                        tau_centroid_category=s.dedup_tau_centroid_category, tau_merge=s.dedup_tau_merge,
                        storm_burst=s.storm_burst, storm_calm=s.storm_calm, storm_quiet_s=s.storm_quiet_s,
                        tau_fringe=s.storm_tau_fringe, fringe_ratio=s.storm_fringe_ratio, storm_chance=s.storm_chance,
                        storm_prior=s.storm_prior, storm_label_first=s.storm_label_first)


BACKDATE_MAX_S = 3600  # created_at older than this (or the window, when longer) is not believed for rates


def event_time_s(created_s: float | None, received_s: float, window_s: float) -> float:
    """When the ticket happened, for the storm test's rates: the producer's `created_at` when it gives one that is
    plausible (not after the ticket reached us, not older than an hour or the window), else when it reached us. A
    help desk that was down and then flushes its backlog delivers minutes of ordinary tickets within a second: by
    arrival that is a burst of every intent at once (a calm stream delivered that way opened dozens of incidents), by
    creation time it is the ordinary traffic it was, while a real storm in the backlog is still a burst."""
    if created_s is None:
        return received_s
    return created_s if received_s - max(window_s, BACKDATE_MAX_S) <= created_s <= received_s else received_s


def top_labels(enrich: dict) -> list[tuple[str, float]]:
    """The ticket's top predicted labels with probabilities (the fast path's list; the decided category first)."""
    top = [(str(lab), float(p)) for lab, p in ((enrich.get("fast") or {}).get("top") or [])]
    if not top or top[0][0] != enrich["category"]:
        top = [(enrich["category"], float(enrich.get("confidence") or 1.0)), *top]
    return top


class DedupStage(Stage):
    name = "dedup"
    tick_every_s = 1.0  # how often the end of a storm is looked for: the event comes within ~1 s of storm_until

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        self.rule = rule_of(settings)
        self.index: WindowIndex | None = None
        self.grouper = Grouper(self.rule, incident_k=settings.incident_k)
        self.seq = 0  # the last decision of the shared log this worker has applied
        self._tail = "0-0"
        self.retries = 0  # batches decided again because another worker committed first (for tests, logs)
        self._lost = False
        # the urgent lane's loop and the main stream's share this worker's window and groups: one batch at a time
        self._deciding = asyncio.Lock()

    async def setup(self, ctx: StageContext) -> None:
        self.r = ctx.r
        self.scripts = ctx.scripts
        # the window's decisions: from now - W on the log (stream ids are millisecond timestamps)
        seq = int(await self.r.get(self.keys.dedup_seq) or 0)
        self._tail = f"{int((time.time() - self.settings.dedup_window_s) * 1000)}-0"
        await self._catch_up()
        self.seq = max(self.seq, seq)

    async def tick(self) -> None:
        """Say on the feed that a storm is over: open incidents whose storm state reached its end (storm_until, from
        the trail of its last ticket) with no ticket keeping it on. Its tickets' own trails say `ended` only when
        the next one comes, which an outage that is over never sends. One event per ending, whichever worker
        sweeps first (streams/storm_end.lua)."""
        due = await self.r.zrangebyscore(self.keys.storming, "-inf", now_ms(), start=0, num=100)
        for gid in (g.decode() for g in due):
            if await self.scripts.storm_end(gid):
                log.info("incident.storm_ended", group=gid)

    def _start_over(self) -> None:
        """Forget the window and read it back from the log (Redis lost the sequence this worker was at)."""
        log.warning("dedup.log_lost", seq=self.seq)
        self.grouper = Grouper(self.rule, incident_k=self.settings.incident_k)
        self.index, self.seq, self._lost = None, 0, False
        self._tail = f"{int((time.time() - self.settings.dedup_window_s) * 1000)}-0"

    def _add(self, tid: str, vec: np.ndarray, ts: float) -> None:
        if self.index is None:
            self.index = WindowIndex(len(vec), self.settings.dedup_window_s,
                                     max_vectors=self.settings.dedup_window_max)
        self.index.add(tid, vec, ts)

    async def _catch_up(self) -> None:
        """Apply the decisions other workers committed since this one last looked."""
        while True:
            resp = await self.r.xread({self.keys.dedup_log: self._tail}, count=5000)
            if not resp:
                return
            rows = resp[0][1]
            for eid, f in rows:
                seq = int(f[b"seq"])
                if seq > self.seq and b"op" in f:  # an operator's regroup (streams/regroup.lua)
                    op = orjson.loads(f[b"op"])
                    vecs = {t: v for t in op["tids"] if self.index is not None
                            and (v := self.index.vector(t)) is not None}
                    regroup(self.grouper, op["kind"], op["src"], op["dst"], op["tids"], vecs,
                            int(eid.split(b"-")[0]) / 1000)
                    self.seq = seq
                elif seq > self.seq:
                    spec = orjson.loads(f[b"data"])
                    vec = np.frombuffer(f[b"emb"], dtype=np.float32)
                    ts = int(eid.split(b"-")[0]) / 1000
                    d = spec["d"]
                    decision = Decision(d["group"], d["joined"], d["rule"], d["score"], d.get("neighbor"),
                                        d.get("neighbor_score", -1.0), list(d.get("merged", [])), spec["g"],
                                        [tuple(x) for x in spec["m"]], float(spec.get("ts") or ts),
                                        bool(spec.get("o")), d.get("storm") or {}, list(spec.get("st") or []),
                                        bool(spec.get("ln")))
                    self.grouper.apply(spec["t"], vec, spec["c"], ts, decision)
                    self._add(spec["t"], vec, ts)
                    self.seq = seq
            self._tail = rows[-1][0].decode()
            if len(rows) < 5000:
                return

    def decode(self, entry: Entry) -> Enriched:
        return Enriched.from_fields(entry.fields)

    def _neighbours(self, vecs: np.ndarray) -> list[list[tuple[str, float]]]:
        if self.index is None:
            return [[] for _ in range(len(vecs))]
        gone = self.index.expire(time.time())
        if gone:
            self.grouper.forget(gone)
        return self.index.search(vecs, k=NEIGHBOURS)

    def _decide(self, msgs: list[Enriched], vecs: np.ndarray, nbrs) -> list[Decision]:
        """Decide the batch in arrival order (speculatively: the caller keeps or rolls back)."""
        decisions: list[Decision] = []
        now = time.time()
        ids = [m.ticket_id for m in msgs]
        for i, msg in enumerate(msgs):
            tid, vec = msg.ticket_id, msg.emb
            candidates = [c for c in nbrs[i] if c[0] != tid]  # a redelivered ticket is already in the window
            if i:
                # tickets of one storm often arrive in one batch: compare with the earlier ones too
                sims = vecs[:i] @ vec
                best = np.argsort(-sims)[:NEIGHBOURS]
                candidates = sorted(candidates + [(ids[j], float(sims[j])) for j in best if ids[j] != tid],
                                    key=lambda x: -x[1])[:NEIGHBOURS]
            # rates are taken on arrival (or creation) times: a backlog does not squeeze a storm, nor a calm stream
            # into one
            ts = event_time_s(msg.ticket.created_s(), msg.received_at / 1000 if msg.received_at > 0 else now,
                              self.settings.dedup_window_s)
            # the urgent ingest lane runs ahead of a backlog: the storm test reads its baseline where the main stream is
            lane = msg.enrich.get("ingest_lane") == "urgent"
            decisions.append(self.grouper.assign(tid, vec.astype(np.float64), msg.category, top_labels(msg.enrich),
                                                 ts, candidates, lane=lane))
        return decisions

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        # a full batch is decided (and committed to the decision log) in slices, the lock released between them, so
        # the urgent lane's batch waits for one slice, not for a whole batch of 512 (~0.5-1 s on 2 loaded cores)
        outcomes: list[Outcome] = []
        for i in range(0, len(entries), DECIDE_SLICE):
            async with self._deciding:
                outcomes += await self._process(entries[i:i + DECIDE_SLICE])
        return outcomes

    def _output(self, msg: Enriched, incident: int) -> tuple[str, str]:
        """(stream, lane) for route: the urgent lane holds urgent tickets that are not members of an open incident
        (an incident's later members are attached to it, not urgent singles), whichever lane they came in on."""
        if msg.urgent and not incident:
            return self.keys.deduped_urgent, "urgent"
        return self.keys.deduped, "normal"

    async def _process(self, entries: list[Entry]) -> list[Outcome]:
        msgs: list[Enriched] = [e.value for e in entries]
        vecs = np.stack([m.emb for m in msgs])
        for attempt in range(MAX_TRIES):
            await self._catch_up()
            nbrs = await asyncio.to_thread(self._neighbours, vecs)
            self.grouper.begin()
            try:
                decisions = self._decide(msgs, vecs, nbrs)
                reply = await self._claim(msgs, decisions)
            except BaseException:
                self.grouper.rollback()
                raise
            if reply is not None:
                self.grouper.keep()
                break
            self.grouper.rollback()
            self.retries += 1
            if self._lost:
                self._start_over()
            await asyncio.sleep(random.uniform(0, 0.005 * min(attempt + 1, 10)))
        else:
            raise RuntimeError(f"dedup batch lost the race {MAX_TRIES} times in a row")
        results = reply
        outcomes = []
        s = self.settings
        sent = suppressed = 0
        for entry, msg, d, res in zip(entries, msgs, decisions, results):
            gid, size, incident, alert, after_resolve = res
            sent += alert in ("sent", "incident")
            suppressed += alert == "suppressed"
            grouping = Grouping(neighbor=d.neighbor, score=d.score, group=gid, joined=d.joined, rule=d.rule,
                                tau=s.dedup_tau, tau_category=s.dedup_tau_category, window_s=s.dedup_window_s,
                                neighbor_score=d.neighbor_score, joined_group=d.joined_group or gid, storm=d.storm,
                                merged=list(d.merged), tau_centroid=s.dedup_tau_centroid,
                                tau_centroid_category=s.dedup_tau_centroid_category, tau_merge=s.dedup_tau_merge)
            grown = urgency.with_growth(msg.enrich.get("urgency_features") or {}, d.storm)
            if grown is not None:
                # its group grows fast: an outage in progress ranks higher in its team's queue (the urgent flag,
                # which pages and picks the lane, stays the text's: a storm cannot flood the urgent lane this way)
                msg.enrich = {**msg.enrich, "urgency": round(grown[0], 4), "urgency_features": grown[1]}
            out = Deduped.of(msg, grouping)
            if after_resolve:  # it joined a resolved incident: re-opened it, or a follow-up of it (group.lua)
                out.dedup["after_resolve"] = orjson.loads(after_resolve)
            stream, lane = self._output(msg, incident)
            out.dedup["lane"] = lane
            outcomes.append(Outcome(entry, writes=[self.scripts.commit(
                stage=self.name, status="grouped", ticket_id=msg.ticket_id, output_stream=stream,
                data=orjson.dumps(out.data()), emb=out.emb_bytes(),
                record={"dedup": orjson.dumps(out.dedup), "t_dedup": now_ms(),
                        **({"urgency": msg.enrich["urgency"], "enrich": orjson.dumps(msg.enrich)} if grown else {})})]))
        if sent or suppressed:
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.hincrby(self.keys.stats, "alerts_queued", sent)
                pipe.hincrby(self.keys.stats, "alerts_suppressed", suppressed)
                await pipe.execute()
        return outcomes

    async def _claim(self, msgs: list[Enriched], decisions: list[Decision]):
        """Commit the batch's decisions at the sequence they were decided from: per ticket (group, size,
        incident, alert, after-resolve note JSON or ''), or None when another worker committed first."""
        added, fresh = set(self.grouper.added), []
        for m, d in zip(msgs, decisions):
            if m.ticket_id in added:
                added.discard(m.ticket_id)
                fresh.append((m, d))
        groups: dict[str, int] = {}
        merged = []
        for _, d in fresh:
            groups.setdefault(d.joined_group, -1)
            for m, surv in d.merges:
                merged.append(m)
                groups[m] = -2  # checked below
                groups.setdefault(surv, -1)
        members: list[str] = []
        if merged:
            async with self.r.pipeline(transaction=False) as pipe:
                for m in merged:
                    pipe.lrange(self.keys.members(m), 0, -1)
                rows = await pipe.execute()
            for m, row in zip(merged, rows):
                ids = [x.decode() for x in row]
                groups[m] = len(ids)
                members += ids
        tickets = []
        for msg, d in fresh:
            t = msg.ticket
            spec = {"t": msg.ticket_id, "g": d.joined_group, "m": [list(x) for x in d.merges], "u": int(msg.urgent),
                    "team": msg.team, "sample": (t.subject or t.body)[:200], "c": msg.category,
                    "a": orjson.dumps({"ticket_id": msg.ticket_id, "subject": t.subject[:200],
                                       "category": msg.category, "team": msg.team, "urgency": msg.urgency,
                                       "group": d.group}).decode(),
                    "d": d.trail(), "ts": d.ts, "o": int(d.opens), "st": d.state, "ln": int(d.lane)}
            tickets.append((msg.ticket_id, orjson.dumps(spec), msg.emb_bytes()))
        by_id: dict[str, list] = {}
        if tickets:
            reply = await self.scripts.group(
                expected_seq=self.seq, tickets=tickets, groups=[(g, max(e, -1)) for g, e in groups.items()],
                members=members, log_min_ms=int((time.time() - self.settings.dedup_window_s - LOG_MARGIN_S) * 1000))
            if _s(reply[0]) == "stale":
                # the sequence went backwards: Redis lost its data (restarted without persistence)
                self._lost = int(reply[1]) < self.seq
                return None
            self.seq, self._tail = int(reply[1]), _s(reply[2])
            now = time.time()
            for (msg, _d), res in zip(fresh, reply[3]):
                by_id[msg.ticket_id] = [_s(res[0]), int(res[1]), int(res[2]), _s(res[3]), _s(res[4])]
                self._add(msg.ticket_id, msg.emb, now)
        # tickets grouped before (a redelivery): their record holds the answer
        rest = [m for m in msgs if m.ticket_id not in by_id]
        if rest:
            async with self.r.pipeline(transaction=False) as pipe:
                for m in rest:
                    pipe.hmget(self.keys.ticket(m.ticket_id), "group", "group_size", "incident", "alert",
                               "after_resolve")
                rows = await pipe.execute()
            for m, (g, n, inc, alert, after) in zip(rest, rows):
                by_id[m.ticket_id] = [_s(g) or m.ticket_id, int(n or 0), int(inc or 0), _s(alert) or "none", _s(after)]
        return [by_id[m.ticket_id] for m in msgs]


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else ("" if x is None else str(x))
