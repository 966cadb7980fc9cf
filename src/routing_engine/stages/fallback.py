"""Fallback stage: the transformer classifies the escalated tickets, in batches, behind the circuit breaker.

While the breaker is open, escalated tickets already waiting pass straight through with the fast answer
(marked degraded), so the backlog drains at the fast path's rate.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import structlog

from ..domain.messages import Enriched
from ..infra.breaker import Breaker
from ..infra.runtime import Entry, Outcome, Stage, StageContext
from ..infra.scripts import now_ms
from ..models import cascade
from ..models.fallback import FallbackModel, latest_fallback
from ..models.prediction import Prediction
from .enrich import classified_event, enriched_lane

log = structlog.get_logger("fallback")

# Trail fields the fast path wrote that stay on the ticket after the fallback decided.
KEPT = ("urgency", "urgency_features", "urgent", "lane", "lane_reason", "ingest_lane", "embedder", "batch",
        "embed_ms", "classify_ms", "steps_ms")


# A warm-up batch: the first call pays for lazy initialisation, the second is timed. The texts run to the token
# limit (64), so the primed rate is the slow end: a batch pads to its longest text, and with one-line texts the
# warm-up measured 238 texts/s where batches of 64 real tickets ran at 85-125 (a pessimistic rate beats none).
WARMUP_TEXTS = [f"Payment {i}: my card was declined twice at the shop today and then again online, although the app "
                "shows enough money on the account and the card is not frozen. I also tried a different terminal and "
                "the cashier said the bank refused it. What is going on with my card and when will it work again?"
                for i in range(32)]


def warmup_rate(model: FallbackModel) -> float:
    """Texts/s of `model` on one batch of WARMUP_TEXTS (0.0 when it fails: the breaker then learns from traffic)."""
    try:
        model.predict(WARMUP_TEXTS[:4])
        t0 = time.perf_counter()
        model.predict(WARMUP_TEXTS)
        return len(WARMUP_TEXTS) / max(time.perf_counter() - t0, 1e-6)
    except Exception as exc:
        log.warning("fallback.warmup_failed", error=str(exc))
        return 0.0


class FallbackStage(Stage):
    name = "fallback"
    # The breaker counts a batch over ROUTING_BREAKER_BUDGET_MS (500) as a failure, and the transformer takes 4-9 ms a
    # text on 2 cores: the other stages' batches (ROUTING_BATCH_SIZE, 512) would trip it by their size alone.
    max_batch = 64

    def __init__(self, settings, keys, model: FallbackModel | None = None):
        super().__init__(settings, keys)
        self.model = model
        self._checked = 0.0

    async def setup(self, ctx: StageContext) -> None:
        self.scripts = ctx.scripts
        self.breaker = Breaker.for_fallback(ctx.r, self.settings, self.keys)
        await self._maybe_reload(force=True)

    async def _maybe_reload(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._checked < self.settings.model_reload_s:
            return
        self._checked = time.monotonic()
        path = latest_fallback(self.settings.models_path)
        if path is not None and (self.model is None or path.name != self.model.version):
            try:
                fresh = await asyncio.to_thread(FallbackModel.load, path)
            except Exception as exc:
                log.warning("fallback.load_failed", path=str(path), error=str(exc))
                return
            self.model = fresh
            rate = await asyncio.to_thread(warmup_rate, fresh)
            primed = await self.breaker.prime(rate)
            log.info("fallback.loaded", version=fresh.version, warmup_texts_per_s=round(rate, 1), primed=primed)

    def decode(self, entry: Entry) -> Enriched:
        return Enriched.from_fields(entry.fields)

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        await self._maybe_reload()
        msgs: list[Enriched] = [e.value for e in entries]
        backlog_ms = max(0, now_ms() - min(int(e.id.split("-")[0]) for e in entries))
        state = (await self.breaker.state())["state"]
        slow: list[Prediction | None] = [None] * len(entries)
        why = None
        if state == "open":
            why = "breaker open"
        elif self.model is None:
            why = "no fallback model"
        else:
            texts = [m.ticket.text for m in msgs]
            t0 = time.perf_counter()
            try:
                timeout = 10 * self.settings.breaker_budget_ms / 1000
                slow = await asyncio.wait_for(asyncio.to_thread(self.model.predict, texts), timeout)
                state = await self.breaker.record(True, (time.perf_counter() - t0) * 1000, backlog_ms, n=len(texts))
            except Exception as exc:  # a failing fallback must not hold tickets: keep the fast answers
                why = f"fallback error: {type(exc).__name__}"
                state = await self.breaker.record(False, (time.perf_counter() - t0) * 1000, backlog_ms, str(exc))
                slow = [None] * len(entries)
                log.warning("fallback.failed", error=str(exc), batch=len(entries))
        outcomes = []
        for entry, msg, pred in zip(entries, msgs, slow):
            e = msg.enrich
            fast_json = e["fast"]
            fast = Prediction.from_dict(fast_json)
            policy = cascade.Policy.from_dict(e["policy"])  # the fast model's policy travels with the entry
            d = cascade.decide(fast, pred, e["ood_similarity"], policy, breaker_open=pred is None,
                               team_of=self.model.teams.team_of if self.model else None)
            if why and pred is None:
                d["reason"] = f"{why}: kept fast answer" if not d["abstain"] else d["reason"]
            extra = {k: e[k] for k in KEPT if k in e}
            extra.update({"breaker": state, "escalated_at": e.get("escalated_at"), "fallback_batch": len(entries),
                          "fallback_wait_ms": backlog_ms})
            slow_json = pred.to_dict(self.model.version) if pred is not None else None
            msg.enrich = cascade.trail(d, fast_json, slow_json, e["ood_similarity"], policy, extra)
            outcomes.append(Outcome(entry, writes=[self._commit(msg)]))
        return outcomes

    def _commit(self, msg: Enriched):
        enrich = msg.enrich
        return self.scripts.commit(
            stage=self.name, status="enriched", ticket_id=msg.ticket_id, output_stream=enriched_lane(self.keys, enrich),
            data=orjson.dumps(msg.data()), emb=msg.emb_bytes(), event="ticket.classified",
            event_data=classified_event(enrich),
            record={"enrich": orjson.dumps(enrich), "category": enrich["category"], "team": enrich["team"],
                    "t_enrich": now_ms()},
        )
