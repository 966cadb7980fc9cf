"""Enrich stage: embed a batch, classify it on the fast path, score urgency S, and either decide or escalate.

Tickets the fast path is unsure of go to the escalate stream for the transformer fallback, unless the
breaker is open; then they keep the fast answer, marked degraded, so a flood never waits on the slow model.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
import structlog

from . import cascade, urgency
from .breaker import Breaker, BreakerPolicy
from .classifier import Classifier, Prediction, latest_model
from .embedder import shared_embedder
from .fallback import latest_fallback
from .ingest import from_stream_entry
from .metrics import MODEL_INFO
from .runtime import Entry, Outcome, Stage
from .scripts import Scripts, commit_entry, now_ms

log = structlog.get_logger("enrich")


def breaker_for(r, settings, keys) -> Breaker:
    s = settings
    return Breaker(r, keys.breaker, keys.events, BreakerPolicy(
        budget_ms=s.breaker_budget_ms, failure_threshold=s.breaker_failures, cooldown_ms=s.breaker_cooldown_ms,
        backlog_ms=s.breaker_backlog_ms), queue=(keys.escalate, "fallback"),
        upstream=([keys.ingest_urgent, keys.ingest], "enrich"))


def pred_json(p: Prediction, model: str) -> dict:
    return {"label": p.label, "team": p.team, "confidence": round(float(p.confidence), 4), "model": model,
            "top": [[label, round(float(c), 4)] for label, c in p.top]}


def enrich_fields(decision: dict, fast: dict, slow: dict | None, sim: float, policy, extra: dict) -> dict:
    """The decision trail of the classification, as stored on the ticket and passed downstream."""
    return {
        "category": decision["label"], "team": decision["team"], "confidence": round(float(decision["confidence"]), 4),
        "decided_by": decision["decided_by"], "reason": decision["reason"], "abstain": decision["abstain"],
        "degraded": decision.get("degraded", False),
        "model": (slow or fast)["model"] if decision["decided_by"] == "transformer" else fast["model"],
        "fast": fast, "fallback": slow, "ood_similarity": round(float(sim), 4),
        "thresholds": {"escalate_below": policy.escalate_below, "abstain_below": policy.abstain_below,
                       "ood_below": policy.ood_below, "target_precision": policy.target_precision},
        **extra,
    }


class EnrichStage(Stage):
    name = "enrich"

    def __init__(self, settings, keys, classifier: Classifier | None = None):
        super().__init__(settings, keys)
        self.input = keys.ingest
        self.classifier = classifier
        self._checked = 0.0
        self._has_fallback = False

    async def setup(self, r) -> None:
        self.scripts = Scripts(r)
        self.breaker = breaker_for(r, self.settings, self.keys)
        self.embedder = await asyncio.to_thread(shared_embedder)
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

    @property
    def inputs(self) -> list[str]:
        return [self.keys.ingest_urgent, self.keys.ingest]

    def decode(self, entry: Entry):
        # ids derived from entry ids must not collide across the two lanes
        prefix = "u" if entry.stream == self.keys.ingest_urgent else "s"
        return from_stream_entry(entry.id, entry.fields, self.settings.max_text_chars, id_prefix=prefix)

    def _infer(self, clf: Classifier, texts: list[str]):
        t0 = time.perf_counter()
        emb = self.embedder.encode(texts)
        t1 = time.perf_counter()
        preds = clf.predict(emb, texts)
        sims = clf.ood_similarity(emb)
        return emb, preds, sims, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        await self._maybe_reload()
        started = now_ms()
        clf = self.classifier  # one model for the whole batch, even if a reload lands meanwhile
        policy = clf.policy
        tickets = [e.value for e in entries]
        emb, preds, sims, embed_ms, clf_ms = await asyncio.to_thread(self._infer, clf, [t.text for t in tickets])
        want = [self._has_fallback and cascade.should_escalate(p, float(s), policy) for p, s in zip(preds, sims)]
        # every batch reports its escalation share, so the breaker can size what the ingest backlog will bring
        allowed, breaker_state = await self.breaker.allow(sum(want), len(entries)) if self._has_fallback \
            else (False, None)
        allowed = allowed and any(want)
        outcomes = []
        for entry, ticket, vec, pred, sim, esc in zip(entries, tickets, emb, preds, sims, want):
            fast = pred_json(pred, clf.version)
            s, features = urgency.score(ticket.subject, ticket.body, pred.team, pred.confidence)
            extra = {"urgency": round(float(s), 4), "urgency_features": features,
                     "urgent": bool(s > self.settings.urgent_threshold), "embedder": self.embedder.name,
                     "batch": len(entries), "embed_ms": round(embed_ms, 2), "classify_ms": round(clf_ms, 2),
                     "breaker": breaker_state}
            out = {"ticket": orjson.loads(ticket.to_json()), "received_at": int(entry.id.split("-")[0])}
            if esc and allowed:
                out["enrich"] = {"fast": fast, "ood_similarity": round(float(sim), 4), "escalated_at": now_ms(), **extra,
                                 "category": pred.label, "team": pred.team, "confidence": fast["confidence"],
                                 "decided_by": "pending", "model": clf.version, "policy": policy.to_dict()}
                outcomes.append(Outcome(entry, apply=self._committer(entry, ticket, out, vec, started, escalate=True)))
                continue
            d = cascade.decide(pred, None, float(sim), policy, breaker_open=bool(esc),
                               fallback_in_use=self._has_fallback,
                               team_of=clf.teams.team_of)
            out["enrich"] = enrich_fields(d, fast, None, sim, policy, extra)
            outcomes.append(Outcome(entry, apply=self._committer(entry, ticket, out, vec, started, escalate=False)))
        return outcomes

    def _committer(self, entry, ticket, out, vec: np.ndarray, started: int, escalate: bool):
        enrich = out["enrich"]

        def apply(pipe):
            return commit_entry(
                pipe, self.scripts, self.settings, self.keys,
                input_stream=entry.stream, output_stream=self.keys.escalate if escalate else self.keys.enriched,
                group=self.name, entry_id=entry.id, stage=self.name,
                status="escalated" if escalate else "enriched", ticket_id=ticket.ticket_id,
                output=orjson.dumps(out), emb=vec.astype(np.float32).tobytes(), owner=entry.id,
                event="ticket.escalated" if escalate else "ticket.classified",
                event_data=orjson.dumps({k: enrich.get(k) for k in
                                         ("category", "team", "confidence", "urgency", "decided_by", "degraded")}),
                record={
                    "ticket": ticket.to_json(), "enrich": orjson.dumps(enrich), "category": enrich["category"],
                    "team": enrich["team"], "urgency": enrich["urgency"], "t_enrich": now_ms(),
                    "t_enrich_start": started,
                },
            )
        return apply

    async def after_commit(self, outcomes, results) -> None:
        dups = [o.entry.id for o, res in zip(outcomes, results) if res and res[0] == -1]
        if dups:
            log.info("ingest.duplicate_ids", count=len(dups), entries=dups[:5])
