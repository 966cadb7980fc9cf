"""Failed login attempts per client address: past `limit` failures in `window_s` the address waits (429 with
Retry-After), so a token cannot be guessed through the form.

Counted in Redis (`SharedThrottle`: a sorted set of failure times per address), so every API process behind a load
balancer sees the same count and a restart forgets nothing; before, each process counted alone, and N processes
gave an address 5 x N tries a minute. Each process also keeps its own count in memory (`FailureThrottle`, bounded),
which is what holds while Redis is away: the stricter of the two wins.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import deque
from collections.abc import Callable

import redis.asyncio as aioredis
import structlog

from ..infra.keys import Keys

log = structlog.get_logger("throttle")


class FailureThrottle:
    def __init__(self, limit: int = 5, window_s: float = 60.0, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_s, self.max_keys, self.clock = limit, window_s, max_keys, clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        q = self._failures.get(key, deque())
        cutoff = self.clock() - self.window_s
        while q and q[0] <= cutoff:
            q.popleft()
        return q

    def retry_after(self, key: str) -> float:
        """Seconds `key` must wait before its next attempt; 0 when it may try now."""
        q = self._recent(key)
        if len(q) < self.limit:
            return 0.0
        return max(q[0] + self.window_s - self.clock(), 0.001)

    def failed(self, key: str) -> None:
        if key not in self._failures and len(self._failures) >= self.max_keys:
            # many addresses at once: forget the ones whose failures have all expired, else the oldest
            for k in [k for k in self._failures if not self._recent(k)] or [next(iter(self._failures))]:
                del self._failures[k]
        q = self._recent(key)
        q.append(self.clock())
        self._failures[key] = q


class SharedThrottle:
    """FailureThrottle's rule over every API process, in Redis; the process's own count backs it up."""

    def __init__(self, limit: int = 5, window_s: float = 60.0):
        self.limit, self.window_s = limit, window_s
        self.local = FailureThrottle(limit, window_s)

    def _key(self, k: Keys, who: str) -> str:
        # an address behind a trusted proxy is whatever X-Forwarded-For said: hashed, so no key holds client text
        return k.login_failures(hashlib.sha256(who.encode()).hexdigest()[:24])

    async def retry_after(self, r: aioredis.Redis, k: Keys, who: str) -> float:
        local = self.local.retry_after(who)
        key, now = self._key(k, who), time.time()
        try:
            async with r.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(key, "-inf", now - self.window_s)
                pipe.zcard(key)
                pipe.zrange(key, -self.limit, -self.limit, withscores=True)
                _, n, nth = await pipe.execute()
        except Exception as exc:  # Redis away: this process's count alone
            log.warning("throttle.redis_unavailable", error=str(exc))
            return local
        if n < self.limit or not nth:
            return local
        # the limit-th most recent failure leaves the window first among those that keep the count at the limit
        return max(local, nth[0][1] + self.window_s - now, 0.001)

    async def failed(self, r: aioredis.Redis, k: Keys, who: str) -> None:
        self.local.failed(who)
        key, now = self._key(k, who), time.time()
        try:
            async with r.pipeline(transaction=True) as pipe:
                pipe.zadd(key, {f"{now:.6f}-{uuid.uuid4().hex[:8]}": now})
                pipe.zremrangebyrank(key, 0, -(self.limit + 1))  # only the last `limit` failures matter
                pipe.pexpire(key, int(self.window_s * 1000) + 1000)
                await pipe.execute()
        except Exception as exc:
            log.warning("throttle.redis_unavailable", error=str(exc))
