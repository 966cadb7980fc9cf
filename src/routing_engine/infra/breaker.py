"""Circuit breaker for the transformer fallback; its state machine runs in Redis (streams/breaker.lua)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from ..config import Settings
from .keys import EVENTS_MAXLEN, Keys
from .scripts import lua, now_ms


@dataclass(frozen=True)
class BreakerPolicy:
    budget_ms: float = 500.0  # the seed's rule: a fallback batch slower than this is a failure
    failure_threshold: int = 2  # failures in a row that open it
    cooldown_ms: int = 5_000  # open this long before a half-open probe
    backlog_ms: int = 1_000  # an escalation that waited longer opens it at once
    behind_ms: int = 500  # tickets waiting for the fast path needing longer than this open it (0: off)
    probe_max: int = 1  # batches allowed through while half-open


class Breaker:
    """Every worker holding a Breaker on the same key shares one state."""

    def __init__(self, r: aioredis.Redis, key: str, events_key: str, policy: BreakerPolicy | None = None,
                 queue: tuple[str, str] | None = None, upstream: tuple[list[str], str] | None = None):
        """`queue` = (escalate stream, fallback group): with it, `allow` opens on the queue's age and size
        before any late answer comes back. `upstream` = (ingest streams, enrich group): tickets still waiting
        for the fast path count too, at the share of them that escalates."""
        self.r = r
        self.key = key
        self.events_key = events_key
        self.policy = policy or BreakerPolicy()
        self.queue = queue
        self.upstream = upstream
        self._script = r.register_script(lua("breaker"))

    @classmethod
    def for_fallback(cls, r: aioredis.Redis, s: Settings, k: Keys) -> Breaker:
        """The breaker in front of the transformer fallback, as the enrich and fallback stages share it."""
        return cls(r, k.breaker, k.events, BreakerPolicy(
            budget_ms=s.breaker_budget_ms, failure_threshold=s.breaker_failures, cooldown_ms=s.breaker_cooldown_ms,
            backlog_ms=s.breaker_backlog_ms, behind_ms=s.breaker_behind_ms), queue=(k.escalate, "fallback"),
            upstream=([k.ingest_urgent, k.ingest], "enrich"))

    async def _call(self, op: str, ok: bool = True, latency_ms: float = 0.0, backlog_ms: float = 0.0, error: str = "",
                    n: int = 0, batch: int = 0, fast_rate: float = 0.0, consumer: str = ""):
        p = self.policy
        keys = [self.key, self.events_key]
        if self.queue or self.upstream:
            keys.append(self.queue[0] if self.queue else self.key + ":none")
        if self.upstream:
            keys += list(self.upstream[0])
        return await self._script(keys=keys, args=[
            op, now_ms(), p.budget_ms, p.failure_threshold, p.cooldown_ms, p.backlog_ms, p.probe_max,
            int(ok), round(latency_ms, 1), round(backlog_ms, 1), error[:200],
            self.queue[1] if self.queue else "", n, batch,
            self.upstream[1] if self.upstream else "", EVENTS_MAXLEN, p.behind_ms, round(fast_rate, 1), consumer])

    async def allow(self, n: int = 0, batch: int = 0, fast_rate: float = 0.0, consumer: str = "") -> tuple[bool, str]:
        """May `n` escalations out of an enrich batch of `batch` tickets go to the fallback? In half-open,
        only probe_max batches go. `fast_rate`: the tickets/s this enrich batch was classified at (counted for
        batches of 32+) by `consumer`; the breaker sums the consumers' rates to know how long the tickets still
        waiting for the fast path need."""
        allowed, state = await self._call("allow", n=n, batch=batch, fast_rate=fast_rate, consumer=consumer)
        return bool(allowed), state.decode()

    async def record(self, ok: bool, latency_ms: float, backlog_ms: float = 0.0, error: str = "", n: int = 0) -> str:
        """A fallback batch of `n` texts finished after `latency_ms`."""
        (state,) = await self._call("record", ok, latency_ms, backlog_ms, error, n=n)
        return state.decode()

    async def prime(self, texts_per_s: float) -> bool:
        """Seed the fallback's rate from a warm-up batch when no batch of 8+ has been measured yet, so the queue
        rule can size the first flood. Without it a fallback that had seen no escalations before a storm left the
        breaker to the age rule alone: it opened 1.76 s into `overload` (1 s backlog limit + the batch in hand)."""
        if texts_per_s <= 0 or await self.r.hget(self.key, "rate_sized"):
            return False
        await self.r.hset(self.key, mapping={"rate": round(texts_per_s, 1), "rate_sized": 1})
        return True

    async def state(self) -> dict:
        h = {k.decode(): v.decode() for k, v in (await self.r.hgetall(self.key)).items()}
        h.setdefault("state", "closed")
        return h
