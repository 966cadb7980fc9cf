"""Enrich stage: embed a batch, classify it on the fast path, score urgency S, and either decide or escalate.

Tickets the fast path is unsure of go to the escalate stream for the transformer fallback, unless the
breaker is open; then they keep the fast answer, marked degraded, so a flood never waits on the slow model.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import structlog

from ..domain import urgency
from ..domain.messages import Enriched, received_at_of
from ..domain.ticket import Ticket, from_stream_entry
from ..infra.breaker import Breaker
from ..infra.runtime import Entry, Outcome, Stage, StageContext
from ..infra.scripts import now_ms
from ..metrics import MODEL_INFO, observe_steps
from ..models import cascade
from ..models.classifier import Classifier, latest_model
from ..models.embedder import pipeline_embedder
from ..models.fallback import latest_fallback

log = structlog.get_logger("enrich")

# What a ticket.classified / ticket.escalated event carries for the live feed.
EVENT_FIELDS = ("category", "team", "confidence", "urgency", "decided_by", "degraded")


def classified_event(enrich: dict) -> bytes:
    return orjson.dumps({k: enrich.get(k) for k in EVENT_FIELDS})


class EnrichStage(Stage):
    name = "enrich"
    overlap_commit = True  # a batch commits while the next one embeds in the worker thread

    def __init__(self, settings, keys, classifier: Classifier | None = None):
        super().__init__(settings, keys)
        self.batch_deadline_ms = settings.batch_deadline_ms
        self.classifier = classifier
        self._checked = 0.0
        self._has_fallback = False

    async def setup(self, ctx: StageContext) -> None:
        self.scripts = ctx.scripts
        self.breaker = Breaker.for_fallback(ctx.r, self.settings, self.keys)
        self.embedder = await asyncio.to_thread(pipeline_embedder, self.settings.embedder, self.settings.models_path,
                                                min_cosine=self.settings.embedder_min_cosine)
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

    def decode(self, entry: Entry) -> Ticket:
        # ids derived from entry ids must not collide across the two lanes
        prefix = "u" if entry.stream == self.keys.ingest_urgent else "s"
        return from_stream_entry(entry.id, entry.fields, self.settings.max_text_chars, id_prefix=prefix)

    def _infer(self, clf: Classifier, texts: list[str]):
        """Embed and classify one batch (in a worker thread); steps gets the seconds of each part."""
        steps: dict[str, float] = {}
        t0 = time.perf_counter()
        emb = self.embedder.encode(texts)
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
        clf = self.classifier  # one model for the whole batch, even if a reload lands meanwhile
        policy = clf.policy
        tickets: list[Ticket] = [e.value for e in entries]
        emb, preds, sims, steps = await asyncio.to_thread(self._infer, clf, [t.text for t in tickets])
        embed_ms = steps["embed"] * 1000
        clf_ms = sum(v for k, v in steps.items() if k != "embed") * 1000
        want = [self._has_fallback and cascade.should_escalate(p, float(s), policy) for p, s in zip(preds, sims)]
        # every batch reports its escalation share, so the breaker can size what the ingest backlog will bring
        t = time.perf_counter()
        allowed, breaker_state = await self.breaker.allow(sum(want), len(entries)) if self._has_fallback \
            else (False, None)
        steps["breaker"] = time.perf_counter() - t
        allowed = allowed and any(want)
        t = time.perf_counter()
        scores = [urgency.score(ticket.subject, ticket.body, pred.team, pred.confidence)
                  for ticket, pred in zip(tickets, preds)]
        steps["urgency"] = time.perf_counter() - t
        t = time.perf_counter()
        steps_ms = {k: round(v * 1000, 2) for k, v in steps.items()}
        outcomes = []
        for entry, ticket, vec, pred, sim, esc, (s, features) in zip(entries, tickets, emb, preds, sims, want,
                                                                       scores):
            fast = pred.to_dict(clf.version)
            extra = {"urgency": round(float(s), 4), "urgency_features": features,
                     "urgent": bool(s > self.settings.urgent_threshold), "embedder": self.embedder.name,
                     "batch": len(entries), "embed_ms": round(embed_ms, 2), "classify_ms": round(clf_ms, 2),
                     "steps_ms": steps_ms, "breaker": breaker_state}
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
            output_stream=self.keys.escalate if escalate else self.keys.enriched,
            data=orjson.dumps(msg.data()), emb=msg.emb_bytes(), owner=entry.id,
            event="ticket.escalated" if escalate else "ticket.classified", event_data=classified_event(enrich),
            record={"ticket": msg.ticket.to_json(), "enrich": orjson.dumps(enrich), "category": enrich["category"],
                    "team": enrich["team"], "urgency": enrich["urgency"], "t_enrich": now_ms(),
                    "t_enrich_start": started},
        )

    async def after_commit(self, outcomes, results) -> None:
        dups = [o.entry.id for o, res in zip(outcomes, results) if res and res[0] == -1]
        if dups:
            log.info("ingest.duplicate_ids", count=len(dups), entries=dups[:5])
