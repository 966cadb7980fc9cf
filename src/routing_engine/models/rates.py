"""Decayed counts that can be read at any time, whatever order the events were counted in.

The storm test compares a group's rate with the stream's baseline *at the ticket's own time*. Tickets do not reach
dedup in time order: the door's urgent lane runs ahead of a backlog, and a flushed backlog carries its `created_at`.
A single decayed number per counter can only be read at (or after) the latest time it was moved to, so a ticket
decided behind the lane was judged as if it were the lane's time: its storm looked like old news (in two-storms
drained at 40 tickets/s a storm opened no incident), and ordinary traffic looked like a burst against an aged
baseline (calm 20,000 tickets flushed at once opened 67 incidents).

So each counter keeps its events in one-second buckets (the sum of 2^((t - b) / h) over the bucket's events, exact
for any read time), and answers "how many, decayed to t, of the events at or before t's second". In time order
(the common case) a running total answers in O(1); a read behind the newest bucket adds up the buckets at or before
it. An event in the read's own second counts even if it is a little later than the read (weight <= 2^(1/h)).

`Decayed` is one sparse counter (a group's fast and slow rates); `StreamCounts` counts the stream per category in a
ring of one-second rows, so a late read is two matrix-vector products, not a loop over categories.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

READ_HALFLIVES = 12  # a late read adds up buckets this many half-lives back (2^-12: the rest is noise)
SUBTRACT_HALFLIVES = 20  # ...or, this close to the newest bucket, takes the buckets after it off the running total
# Seconds of buckets kept behind the newest: a read this far behind it (less a read's span) is still exact. An hour
# and a bit: dedup believes created_at up to an hour old, and a backlog an hour deep is already an outage of its own.
KEEP_S = 4400


class Decayed:
    """A decayed count with half-life `h` seconds: at(t) = sum over events at or before t of n * 2^-((t - t_i) / h)."""

    __slots__ = ("h", "keys", "vals", "cnts", "top", "head")

    def __init__(self, h: float):
        self.h = float(h)
        self.keys: list[int] = []  # bucket seconds, ascending
        self.vals: list[float] = []  # sum of n * 2^((t_i - b) / h) over the bucket's events
        self.cnts: list[float] = []  # sum of n over the bucket's events (undecayed)
        self.top: int | None = None  # the newest bucket
        self.head = 0.0  # every bucket decayed to `top`

    def copy(self) -> Decayed:
        d = Decayed(self.h)
        d.keys, d.vals, d.cnts, d.top, d.head = self.keys[:], self.vals[:], self.cnts[:], self.top, self.head
        return d

    def add(self, t: float, n: float = 1.0) -> None:
        b = math.floor(t)
        self._add_bucket(b, n * 2.0 ** ((t - b) / self.h), n)

    def _add_bucket(self, b: int, w: float, n: float) -> None:
        keys = self.keys
        if keys and keys[-1] == b:
            i = len(keys) - 1
        elif not keys or keys[-1] < b:
            i = len(keys)
        else:
            i = bisect.bisect_left(keys, b)
        if i < len(keys) and keys[i] == b:
            self.vals[i] += w
            self.cnts[i] += n
        else:
            keys.insert(i, b)
            self.vals.insert(i, w)
            self.cnts.insert(i, n)
        if self.top is None or b >= self.top:
            self.head = (self.head * 2.0 ** (-(b - self.top) / self.h) if self.top is not None else 0.0) + w
            self.top = b
            self._prune()
        else:
            self.head += w * 2.0 ** (-(self.top - b) / self.h)

    def _prune(self) -> None:
        keep = self.top - KEEP_S
        if self.keys[0] < keep and len(self.keys) > 64:  # amortised: cut once a batch of old buckets has built up
            i = bisect.bisect_left(self.keys, keep)
            if i >= 32:
                del self.keys[:i], self.vals[:i], self.cnts[:i]

    def merge(self, other: Decayed) -> None:
        """Fold another counter's events in (two groups merging): the same as having counted them here."""
        for b, w, n in zip(other.keys, other.vals, other.cnts):
            self._add_bucket(b, w, n)

    def at(self, t: float) -> float:
        if self.top is None:
            return 0.0
        bt = math.floor(t)
        if bt >= self.top:
            return self.head * 2.0 ** (-(t - self.top) / self.h)
        keys, vals, h = self.keys, self.vals, self.h
        hi = bisect.bisect_right(keys, bt)
        if self.top - bt <= SUBTRACT_HALFLIVES * h and len(keys) - hi < hi:
            # fewer buckets after t than before it (the usual late read: a few tickets ran ahead): the running total
            # less those, decayed back to t (2^20 at most: ~1e-10 of rounding)
            top = self.top
            ahead = sum(vals[i] * 2.0 ** (-(top - keys[i]) / h) for i in range(hi, len(keys)))
            return max(0.0, self.head - ahead) * 2.0 ** ((top - t) / h)
        lo = bisect.bisect_left(keys, bt - int(READ_HALFLIVES * h), 0, hi)
        return sum(vals[i] * 2.0 ** (-(t - keys[i]) / h) for i in range(lo, hi))

    def after(self, t: float) -> float:
        """How many events were counted after t's second (tickets decided ahead of their time, not yet due at t)."""
        keys = self.keys
        if not keys or keys[-1] <= t:
            return 0.0
        return sum(self.cnts[bisect.bisect_right(keys, math.floor(t)):])


class StreamCounts:
    """The stream's tickets per category, decayed with a slow and a fast half-life, readable at any time.

    In time order the counts are kept as running totals per category (dicts, as cheap as one decayed number);
    every ticket also goes into a ring of one-second rows (`horizon_s` of them) of per-category sums, from which a
    read behind the newest ticket is computed exactly. `begin`/`rollback` undo a speculative batch."""

    def __init__(self, h_slow: float, h_fast: float, horizon_s: int | None = None):
        self.h_slow, self.h_fast = float(h_slow), float(h_fast)
        self.t0: float | None = None  # the earliest ticket counted
        self.ts = 0.0  # the running totals are as of this time
        self.slow: dict[str, float] = {}
        self.fast: dict[str, float] = {}
        self.rows = int(horizon_s or KEEP_S)
        self.col: dict[str, int] = {}
        self.names: list[str] = []
        self.row_sec = np.full(self.rows, np.iinfo(np.int64).min, dtype=np.int64)  # which second each row holds
        self.ring_slow = np.zeros((self.rows, 8))
        self.ring_fast = np.zeros((self.rows, 8))
        self._undo: list | None = None

    # ---- speculative batches

    def begin(self) -> None:
        self._undo = [(self.t0, self.ts, dict(self.slow), dict(self.fast), len(self.names))]

    def keep(self) -> None:
        self._undo = None

    def rollback(self) -> None:
        if not self._undo:
            return
        head, *changes = self._undo
        for row, sec, old_slow, old_fast in reversed(changes):
            self.row_sec[row] = sec
            self.ring_slow[row] = 0.0  # a category first seen in the batch may have widened the ring since
            self.ring_fast[row] = 0.0
            self.ring_slow[row, : len(old_slow)] = old_slow
            self.ring_fast[row, : len(old_fast)] = old_fast
        self.t0, self.ts, self.slow, self.fast, n = head
        for name in self.names[n:]:  # categories first seen in the batch (their columns are all zero again)
            del self.col[name]
        del self.names[n:]
        self._undo = None

    # ---- counting

    def _column(self, category: str) -> int:
        c = self.col.get(category)
        if c is None:
            c = self.col[category] = len(self.names)
            self.names.append(category)
            if c >= self.ring_slow.shape[1]:
                grow = np.zeros((self.rows, self.ring_slow.shape[1]))
                self.ring_slow = np.hstack([self.ring_slow, grow])
                self.ring_fast = np.hstack([self.ring_fast, grow.copy()])
        return c

    def decay(self, ts: float) -> None:
        """Move the running totals forward to ts (no-op for an earlier ts)."""
        if ts <= self.ts:
            return
        fs, ff = 0.5 ** ((ts - self.ts) / self.h_slow), 0.5 ** ((ts - self.ts) / self.h_fast)
        self.slow = {c: x for c, v in self.slow.items() if (x := v * fs) > 1e-3}
        self.fast = {c: x for c, v in self.fast.items() if (x := v * ff) > 1e-3}
        self.ts = ts

    def add(self, ts: float, category: str) -> None:
        if self.t0 is None:
            self.t0 = self.ts = ts
        self.t0 = min(self.t0, ts)
        self.decay(ts)
        late = self.ts - ts  # older than the newest ticket: what is left of it by then
        self.slow[category] = self.slow.get(category, 0.0) + (0.5 ** (late / self.h_slow) if late > 0 else 1.0)
        self.fast[category] = self.fast.get(category, 0.0) + (0.5 ** (late / self.h_fast) if late > 0 else 1.0)
        sec = math.floor(ts)
        row = sec % self.rows
        c = self._column(category)
        if self.row_sec[row] != sec:
            if self.row_sec[row] > sec:
                return  # older than the ring reaches: counted in the running totals only
            if self._undo is not None:
                self._undo.append((row, int(self.row_sec[row]), self.ring_slow[row].copy(), self.ring_fast[row].copy()))
            self.row_sec[row] = sec
            self.ring_slow[row] = 0.0
            self.ring_fast[row] = 0.0
        elif self._undo is not None:
            self._undo.append((row, sec, self.ring_slow[row].copy(), self.ring_fast[row].copy()))
        self.ring_slow[row, c] += 2.0 ** ((ts - sec) / self.h_slow)
        self.ring_fast[row, c] += 2.0 ** ((ts - sec) / self.h_fast)

    # ---- reading

    def _ring_at(self, t: float, ring: np.ndarray, h: float, since: float | None = None) -> np.ndarray:
        bt = math.floor(t)
        span = min(self.rows, int(READ_HALFLIVES * h) + 1)
        first = bt - span + 1
        start = first % self.rows
        secs = np.arange(first, bt + 1)
        n = len(self.names)
        if start + span <= self.rows:  # one slice of the ring (a view, no copy)
            held, block = self.row_sec[start: start + span], ring[start: start + span, :n]
        else:
            rows = secs % self.rows
            held, block = self.row_sec[rows], ring[rows, :n]
        ok = held == secs
        if since is not None:
            ok &= secs >= math.floor(since)
        w = np.where(ok, np.exp2(-(t - secs) / h), 0.0)
        return w @ block

    def lagged_at(self, t: float, since: float | None = None) -> dict[str, float]:
        """category -> decayed count (slow half-life) of the tickets before the last few seconds, as of t: the
        slow count minus the fast one, so a burst that just began is not in it yet and cannot raise its own bar.
        `since`: only the tickets at or after that second (read from the ring)."""
        return self.read(t, since)[0]

    def read(self, t: float, since: float | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """lagged_at(t, since), and category -> fast count as of t (the last few seconds; in time order the live
        running totals themselves: read them, do not change them)."""
        if t >= self.ts and since is None:
            self.decay(t)
            fast = self.fast.get
            return ({c: d if (d := v - fast(c, 0.0)) > 0.0 else 0.0 for c, v in self.slow.items()}, self.fast)
        slow = self._ring_at(t, self.ring_slow, self.h_slow, since)
        fast = self._ring_at(t, self.ring_fast, self.h_fast, since)
        lag = np.maximum(slow - fast, 0.0)
        names = self.names
        return ({names[i]: float(lag[i]) for i in np.flatnonzero(slow > 1e-3)},
                {names[i]: float(fast[i]) for i in np.flatnonzero(fast > 1e-3)})

    def snapshot(self) -> tuple:
        """Everything a replay must reproduce, rounded (tests compare two of these)."""
        used = self.row_sec != np.iinfo(np.int64).min
        n = len(self.names)
        return (self.t0, round(self.ts, 6), {c: round(v, 6) for c, v in self.slow.items()},
                {c: round(v, 6) for c, v in self.fast.items()}, self.row_sec[used].tolist(),
                np.round(self.ring_slow[used, :n], 6).tolist(), np.round(self.ring_fast[used, :n], 6).tolist(),
                list(self.names))


__all__ = ["Decayed", "StreamCounts", "READ_HALFLIVES", "KEEP_S"]
