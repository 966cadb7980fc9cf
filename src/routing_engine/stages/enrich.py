"""Enrich stage: embed a batch, classify it on the fast path, score urgency S, and either decide or escalate.

Tickets the fast path is unsure of go to the escalate stream for the transformer fallback, unless the
breaker is open; then they keep the fast answer, marked degraded, so a flood never waits on the slow model.

The urgent lane: a ticket whose full urgency score S is over the threshold goes on {prefix}:enriched:urgent,
which dedup reads first (in its own loop, in small batches), whichever ingest lane it came from — unless an
incident is open for its predicted category: then it is most likely one more member of that storm, and it goes on
{prefix}:enriched like the rest of the storm (the trail says so in `lane_reason`), so a storm cannot flood the lane.
Dedup decides for good (it knows the group): see stages/dedup.py.
"""

from __future__ import annotations

import asyncio
import collections
import time

import orjson
import structlog

from ..domain import urgency
from ..domain.idempotency import body_hash, canonical_json
from ..domain.messages import Enriched, received_at_of
from ..domain.ticket import Ticket, from_stream_entry
from ..infra.breaker import Breaker
from ..infra.runtime import LANE_BATCH, Entry, Outcome, Stage, StageContext, Triage
from ..infra.scripts import now_ms
from ..metrics import ENTRIES, MODEL_INFO, observe_steps
from ..models import cascade
from ..models.classifier import Classifier, latest_model
from ..models.embedder import pipeline_embedder
from ..models.fallback import latest_fallback

log = structlog.get_logger("enrich")

# What a ticket.classified / ticket.escalated event carries for the live feed.
EVENT_FIELDS = ("category", "team", "confidence", "urgency", "decided_by", "degraded")
# The open incidents' categories are read again at most this often (seconds): a storm's incident opens and its
# later members leave the urgent lane within this long.
INCIDENTS_EVERY_S = 0.5
# At start, how many of the most recently opened incidents are looked at; later reads add the ones opened since.
INCIDENTS_AT_START = 1000


def embed_threads(s) -> int:
    """ONNX Runtime threads for each enrich runner's embedding: ROUTING_EMBED_THREADS, else with several runners in
    the process the cores split between them (0: every core, one runner)."""
    if s.embed_threads > 0 or s.enrich_runners <= 1:
        return s.embed_threads
    from ..models.onnx_minilm import cores

    return max(1, cores() // s.enrich_runners)


def classified_event(enrich: dict) -> bytes:
    return orjson.dumps({k: enrich.get(k) for k in EVENT_FIELDS})


def lane_of(urgent: bool, category: str, incidents: dict[str, str]) -> dict:
    """The trail's lane fields: `lane` urgent or normal, and why an urgent ticket is not in the urgent lane."""
    if not urgent:
        return {"lane": "normal"}
    if category in incidents:
        return {"lane": "normal", "lane_reason": f"incident {incidents[category]} is open for {category}"}
    return {"lane": "urgent"}


def enriched_lane(keys, enrich: dict) -> str:
    """The enriched stream a classified ticket goes on (trails written before the lane existed: by `urgent`)."""
    return keys.enriched_urgent if enrich.get("lane", "urgent" if enrich.get("urgent") else "normal") == "urgent" \
        else keys.enriched


class EnrichStage(Stage):
    name = "enrich"
    overlap_commit = True  # a batch commits while the next one embeds in the worker thread

    def __init__(self, settings, keys, classifier: Classifier | None = None):
        super().__init__(settings, keys)
        self.batch_deadline_ms = settings.batch_deadline_ms
        self.classifier = classifier
        self._checked = 0.0
        self._has_fallback = False
        self._incidents_at = 0.0
        self._open_categories: dict[str, str] = {}  # category -> the open incident (group id) that holds it
        self._category_of: dict[str, str] = {}  # incident (group id) -> the category of its first ticket; the
        # incidents followed: every one opened since the stage started (and the most recent at start), until it is
        # resolved, merged or quiet for the dedup window
        self._opened_since = 0.0  # the {prefix}:incidents score (opening ms) read up to
        self._refresh: asyncio.Task | None = None
        self.consumer = ""  # this worker's consumer name: the breaker sums the fast path's rate per consumer

    async def setup(self, ctx: StageContext) -> None:
        self.r = ctx.r
        self.scripts = ctx.scripts
        self.consumer = ctx.consumer
        self.breaker = Breaker.for_fallback(ctx.r, self.settings, self.keys)
        self.embedder = await asyncio.to_thread(pipeline_embedder, self.settings.embedder, self.settings.models_path,
                                                min_cosine=self.settings.embedder_min_cosine,
                                                threads=embed_threads(self.settings))
        if self.classifier is None:
            path = latest_model(self.settings.models_path)
            if path is None:
                raise RuntimeError(f"no classifier in {self.settings.models_path}: run `routing-engine train` first")
            self.classifier = await asyncio.to_thread(Classifier.load, path)
        MODEL_INFO.labels(self.classifier.version).set(1)
        self._has_fallback = self.settings.escalation and latest_fallback(self.settings.models_path) is not None
        self._checked = time.monotonic()

    async def _maybe_reload(self) -> None:
        """Pick up a newly trained model without a restart; the swap happens between batches."""
        if time.monotonic() - self._checked < self.settings.model_reload_s:
            return
        self._checked = time.monotonic()
        self._has_fallback = self.settings.escalation and latest_fallback(self.settings.models_path) is not None
        path = latest_model(self.settings.models_path)
        if path is not None and path.name != self.classifier.version:
            try:
                fresh = await asyncio.to_thread(Classifier.load, path)
            except Exception as exc:  # a half-written artifact: keep serving the old one
                log.warning("model.reload_failed", path=str(path), error=str(exc))
                return
            MODEL_INFO.labels(self.classifier.version).set(0)
            MODEL_INFO.labels(fresh.version).set(1)
            log.info("model.reloaded", old=self.classifier.version, new=fresh.version)
            self.classifier = fresh

    async def _open_incidents(self) -> dict[str, str]:
        """Category -> open incident: incidents whose group is still open (not resolved or merged) and grew within
        the dedup window, however long ago they opened. Read again every INCIDENTS_EVERY_S; the two loops (urgent
        lane and main stream) share one read."""
        if time.monotonic() - self._incidents_at >= INCIDENTS_EVERY_S:
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.ensure_future(self._read_incidents())
            await asyncio.shield(self._refresh)
        return self._open_categories

    async def _read_incidents(self) -> None:
        k = self.keys
        if not self._opened_since:
            rows = await self.r.zrevrange(k.incidents, 0, INCIDENTS_AT_START - 1, withscores=True)
        else:  # opened since the last read (an incident taken over in a merge keeps its opening time: the 1 s margin)
            rows = await self.r.zrangebyscore(k.incidents, self._opened_since - 1000, "+inf", withscores=True)
        fresh = [g.decode() for g, _ in rows if g.decode() not in self._category_of]
        self._opened_since = max([self._opened_since, *(score for _, score in rows)])
        gids = [*self._category_of, *fresh]
        async with self.r.pipeline(transaction=False) as pipe:
            for g in fresh:
                pipe.hget(k.ticket(g), "category")  # a group's id is its first ticket's id
            for g in gids:
                pipe.hmget(k.group(g), "status", "last_at")
            rows = await pipe.execute()
        for g, cat in zip(fresh, rows):
            self._category_of[g] = cat.decode() if cat else ""
        since = (time.time() - self.settings.dedup_window_s) * 1000
        open_: dict[str, str] = {}
        for g, (status, last_at) in zip(gids, rows[len(fresh):]):
            if status in (b"resolved", b"merged") or not last_at or int(last_at) < since:
                self._category_of.pop(g, None)  # closed, or quiet for the window: no longer followed
            elif cat := self._category_of.get(g):
                open_.setdefault(cat, g)
        self._open_categories, self._incidents_at = open_, time.monotonic()

    async def triage(self, entries: list[Entry]) -> Triage | None:
        """Tickets of the urgent ingest lane (chosen at the door from the text alone) that are most likely members
        of a storm, not urgent singles, by the n-gram model alone (well under a millisecond a ticket, no embedding):
        those in an open incident's category are handed to the main loop (members, not urgent work); past the first
        `incident_k` of a category with more than that many waiting in the lane (a storm whose incident is not open
        yet) they come `later`, after the singles, still in the lane: the storm test sees the storm from the lane as
        it arrives and opens the incident, while a single waits for one lane batch, not for the burst (overload: a
        storm reading urgent at the door sent ~260 tickets/s into the lane; singles behind it waited up to 1.25 s)."""
        clf = self.classifier
        if clf is None or clf.lexical is None:
            return None
        cap = max(1, self.settings.incident_k)
        incidents = await self._open_incidents()
        if not incidents and len(entries) <= cap:
            return None
        fresh, texts = [], []
        for e in entries:
            if e.mark is None:
                try:
                    texts.append(self.decode(e).text)
                    fresh.append(e)
                except Exception:  # the lane's own batch dead-letters it with the reason
                    continue
        if texts:
            z = await asyncio.to_thread(clf.lexical.logits, texts)
            for e, i in zip(fresh, z.argmax(axis=1)):
                e.mark = clf.labels[int(i)]
        verdict, seen = Triage(), collections.Counter()
        for e in entries:
            if e.mark is None:
                continue
            seen[e.mark] += 1
            if e.mark in incidents:
                verdict.hand.append(e)
            elif seen[e.mark] > cap:
                verdict.later.append(e)
        return verdict

    def decode(self, entry: Entry) -> Ticket:
        # ids derived from entry ids must not collide across the two lanes
        prefix = "u" if entry.stream == self.keys.ingest_urgent else "s"
        return from_stream_entry(entry.id, entry.fields, self.settings.max_text_chars, id_prefix=prefix)

    def _infer(self, clf: Classifier, texts: list[str], urgent: bool = False):
        """Embed and classify one batch (in a worker thread); steps gets the seconds of each part. An urgent-lane
        batch does not wait for the main stream's batch to finish embedding (`encode_now`: it goes before that
        batch's next run, or beside the run in progress; models/gate.py)."""
        steps: dict[str, float] = {}
        t0 = time.perf_counter()
        encode = (getattr(self.embedder, "encode_now", None) if urgent else None) or self.embedder.encode
        emb = encode(texts)
        t1 = time.perf_counter()
        steps["embed"] = t1 - t0
        preds = clf.predict(emb, texts, timings=steps)
        t2 = time.perf_counter()
        sims = clf.ood_similarity(emb)
        steps["ood"] = time.perf_counter() - t2
        return emb, preds, sims, steps

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        await self._maybe_reload()
        started = now_ms()
        t_batch = time.perf_counter()
        clf = self.classifier  # one model for the whole batch, even if a reload lands meanwhile
        policy = clf.policy
        tickets: list[Ticket] = [e.value for e in entries]
        lane = len(entries) <= LANE_BATCH and all(e.stream == self.keys.ingest_urgent and not e.handed for e in entries)
        emb, preds, sims, steps = await asyncio.to_thread(self._infer, clf, [t.text for t in tickets], lane)
        embed_ms = steps["embed"] * 1000
        clf_ms = sum(v for k, v in steps.items() if k != "embed") * 1000
        want = [self._has_fallback and cascade.should_escalate(p, float(s), policy) for p, s in zip(preds, sims)]
        # every batch reports its escalation share, so the breaker can size what the ingest backlog will bring,
        # and the rate it was classified at, so it can tell how far behind the fast path itself is
        t = time.perf_counter()
        allowed, breaker_state = False, None
        if self._has_fallback:
            allowed, breaker_state = await self.breaker.allow(
                sum(want), len(entries), fast_rate=len(entries) / max(t - t_batch, 1e-3), consumer=self.consumer)
        steps["breaker"] = time.perf_counter() - t
        allowed = allowed and any(want)
        t = time.perf_counter()
        scores = [urgency.score(ticket.subject, ticket.body, pred.team, pred.confidence)
                  for ticket, pred in zip(tickets, preds)]
        steps["urgency"] = time.perf_counter() - t
        t = time.perf_counter()
        incidents = await self._open_incidents() if any(s > self.settings.urgent_threshold for s, _ in scores) \
            else {}
        steps["incidents"] = time.perf_counter() - t
        t = time.perf_counter()
        steps_ms = {k: round(v * 1000, 2) for k, v in steps.items()}
        outcomes = []
        for entry, ticket, vec, pred, sim, esc, (s, features) in zip(entries, tickets, emb, preds, sims, want,
                                                                       scores):
            fast = pred.to_dict(clf.version)
            urgent = bool(s > self.settings.urgent_threshold)
            extra = {"urgency": round(float(s), 4), "urgency_features": features,
                     "urgent": urgent, "embedder": self.embedder.name,
                     "batch": len(entries), "embed_ms": round(embed_ms, 2), "classify_ms": round(clf_ms, 2),
                     "steps_ms": steps_ms, "breaker": breaker_state, **lane_of(urgent, pred.label, incidents),
                     "ingest_lane": "urgent" if entry.stream == self.keys.ingest_urgent else "normal"}
            escalate = bool(esc and allowed)
            if escalate:
                enrich = {"fast": fast, "ood_similarity": round(float(sim), 4), "escalated_at": now_ms(), **extra,
                          "category": pred.label, "team": pred.team, "confidence": fast["confidence"],
                          "decided_by": "pending", "model": clf.version, "policy": policy.to_dict()}
            else:
                d = cascade.decide(pred, None, float(sim), policy, breaker_open=bool(esc),
                                   fallback_in_use=self._has_fallback, team_of=clf.teams.team_of)
                enrich = cascade.trail(d, fast, None, sim, policy, extra)
            msg = Enriched(ticket, received_at_of(entry.id), enrich, vec)
            outcomes.append(Outcome(entry, writes=[self._commit(entry, msg, started, escalate)]))
        steps["trail"] = time.perf_counter() - t
        observe_steps(self.name, steps)
        return outcomes

    def _commit(self, entry: Entry, msg: Enriched, started: int, escalate: bool):
        enrich = msg.enrich
        return self.scripts.commit(
            stage=self.name, status="escalated" if escalate else "enriched", ticket_id=msg.ticket_id,
            output_stream=self.keys.escalate if escalate else enriched_lane(self.keys, enrich),
            data=orjson.dumps(msg.data()), emb=msg.emb_bytes(), owner=entry.id,
            event="ticket.escalated" if escalate else "ticket.classified", event_data=classified_event(enrich),
            record={"ticket": msg.ticket.to_json(), "enrich": orjson.dumps(enrich), "category": enrich["category"],
                    "team": enrich["team"], "urgency": enrich["urgency"], "t_enrich": now_ms(),
                    "t_enrich_start": started,
                    # a later stream entry with this id and another body is a conflict, not a duplicate
                    "door_hash": body_hash(canonical_json(msg.ticket))},
        )

    async def after_commit(self, outcomes, results) -> None:
        dups = [o.entry.id for o, res in zip(outcomes, results) if res and res[0] == -1]
        if dups:
            log.info("ingest.duplicate_ids", count=len(dups), entries=dups[:5])
        conflicts = [o.entry.id for o, res in zip(outcomes, results) if res and res[0] == -2]
        if conflicts:  # commit.lua dead-lettered them with the reason
            ENTRIES.labels(self.name, "dead").inc(len(conflicts))
            await self.r.hincrby(self.keys.stats, "dead_letters", len(conflicts))
            log.warning("ingest.id_conflicts", count=len(conflicts), entries=conflicts[:5])
