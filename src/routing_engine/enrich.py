"""Enrich stage: embed a batch, classify it (LightGBM on embeddings), score urgency S."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
import structlog

from . import urgency
from .classifier import Classifier, latest_model
from .embedder import shared_embedder
from .ingest import from_stream_entry
from .metrics import MODEL_INFO
from .runtime import Entry, Outcome, Stage
from .scripts import Scripts, commit_entry, now_ms

log = structlog.get_logger("enrich")

RELOAD_EVERY_S = 5.0


class EnrichStage(Stage):
    name = "enrich"

    def __init__(self, settings, keys, classifier: Classifier | None = None):
        super().__init__(settings, keys)
        self.input = keys.ingest
        self.classifier = classifier
        self._checked = 0.0

    async def setup(self, r) -> None:
        self.scripts = Scripts(r)
        self.embedder = await asyncio.to_thread(shared_embedder)
        if self.classifier is None:
            path = latest_model(self.settings.models_path)
            if path is None:
                raise RuntimeError(f"no classifier in {self.settings.models_path}: run `routing-engine train` first")
            self.classifier = await asyncio.to_thread(Classifier.load, path)
        MODEL_INFO.labels(self.classifier.version).set(1)
        self._checked = time.monotonic()

    async def _maybe_reload(self) -> None:
        """Pick up a newly trained model without a restart; the swap happens between batches."""
        if time.monotonic() - self._checked < RELOAD_EVERY_S:
            return
        self._checked = time.monotonic()
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

    def decode(self, entry: Entry):
        return from_stream_entry(entry.id, entry.fields, self.settings.max_text_chars)

    def _infer(self, texts: list[str]):
        t0 = time.perf_counter()
        emb = self.embedder.encode(texts)
        t1 = time.perf_counter()
        preds = self.classifier.predict(emb)
        return emb, preds, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        await self._maybe_reload()
        started = now_ms()
        tickets = [e.value for e in entries]
        emb, preds, embed_ms, clf_ms = await asyncio.to_thread(self._infer, [t.text for t in tickets])
        model = self.classifier.version
        outcomes = []
        for entry, ticket, vec, pred in zip(entries, tickets, emb, preds):
            s, features = urgency.score(ticket.subject, ticket.body, pred.team, pred.confidence)
            enrich = {
                "category": pred.label, "team": pred.team, "confidence": round(float(pred.confidence), 4),
                "top": [[label, round(float(p), 4)] for label, p in pred.top],
                "model": model, "decided_by": "lightgbm", "embedder": self.embedder.name,
                "urgency": round(float(s), 4), "urgency_features": features,
                "urgent": bool(s > self.settings.urgent_threshold),
                "batch": len(entries), "embed_ms": round(embed_ms, 2), "classify_ms": round(clf_ms, 2),
            }
            out = {"ticket": orjson.loads(ticket.to_json()), "enrich": enrich,
                   "received_at": int(entry.id.split("-")[0])}
            outcomes.append(Outcome(entry, apply=self._committer(entry, ticket, enrich, out, vec, started)))
        return outcomes

    def _committer(self, entry, ticket, enrich, out, vec: np.ndarray, started: int):
        def apply(pipe):
            return commit_entry(
                pipe, self.scripts, self.settings, self.keys,
                input_stream=self.input, output_stream=self.keys.enriched, group=self.name,
                entry_id=entry.id, stage=self.name, status="enriched", ticket_id=ticket.ticket_id,
                output=orjson.dumps(out), emb=vec.astype(np.float32).tobytes(),
                owner=entry.id, event="ticket.classified",
                event_data=orjson.dumps({k: enrich[k] for k in ("category", "team", "confidence", "urgency", "decided_by")}),
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
