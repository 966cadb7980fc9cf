"""Failed login attempts per client address: past `limit` failures in `window_s` the address waits (429 with
Retry-After), so a token cannot be guessed through the form. In memory, per API process; bounded."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


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
