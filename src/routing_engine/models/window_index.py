"""Sliding-window FAISS index of recent ticket embeddings, for near-duplicate lookup.

Vectors live in time buckets, one exact inner-product index each; expiring the window drops whole
buckets, which FAISS flat indexes can't do cheaply one vector at a time.

The search is exact, so its cost grows with what the window holds: at a sustained 300 tickets/s a 300 s window
holds 90,000 vectors and searching it cost ~0.8 ms a ticket on 2 idle cores (bench/window_speed.py). `max_vectors`
caps it: past that many the oldest buckets go (a bucket also closes at a tenth of the cap), so under a long flood
the window is the last `max_vectors` tickets instead of the last `window_s` seconds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import faiss
import numpy as np


@dataclass
class _Bucket:
    start: float
    index: faiss.IndexFlatIP
    ids: list[str] = field(default_factory=list)


class WindowIndex:
    def __init__(self, dim: int, window_s: float, bucket_s: float | None = None, max_vectors: int = 0):
        self.dim = dim
        self.window_s = window_s
        self.bucket_s = bucket_s or max(window_s / 10, 1.0)
        self.max_vectors = max(0, int(max_vectors))
        self._bucket_max = max(1, self.max_vectors // 10) if self.max_vectors else 0
        self._count = 0
        self._buckets: deque[_Bucket] = deque()
        self._known: set[str] = set()
        self._where: dict[str, tuple[_Bucket, int]] = {}  # id -> its bucket and row (an operator's regroup reads it)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, ticket_id: str) -> bool:
        return ticket_id in self._known

    def expire(self, now: float) -> list[str]:
        """Drop what left the window; returns the ids dropped."""
        gone: list[str] = []
        # a bucket goes when its newest possible member is older than the window, or the window holds too many
        while self._buckets and (self._buckets[0].start + self.bucket_s < now - self.window_s
                                 or (self.max_vectors and self._count > self.max_vectors)):
            old = self._buckets.popleft()
            self._count -= len(old.ids)
            self._known.difference_update(old.ids)
            for t in old.ids:
                self._where.pop(t, None)
            gone += old.ids
        return gone

    def add(self, ticket_id: str, vec: np.ndarray, ts: float) -> None:
        if ticket_id in self._known:
            return
        if (not self._buckets or ts >= self._buckets[-1].start + self.bucket_s
                or (self._bucket_max and len(self._buckets[-1].ids) >= self._bucket_max)):
            self._buckets.append(_Bucket(ts, faiss.IndexFlatIP(self.dim)))
        b = self._buckets[-1]
        b.index.add(np.ascontiguousarray(vec.reshape(1, -1), dtype=np.float32))
        b.ids.append(ticket_id)
        self._count += 1
        self._known.add(ticket_id)
        self._where[ticket_id] = (b, len(b.ids) - 1)

    def vector(self, ticket_id: str) -> np.ndarray | None:
        """The stored vector of a ticket still in the window (None once it left)."""
        where = self._where.get(ticket_id)
        return None if where is None else where[0].index.reconstruct(where[1])

    def search(self, vecs: np.ndarray, k: int = 1) -> list[list[tuple[str, float]]]:
        """Up to k nearest (id, cosine) per row over the whole window, best first."""
        q = np.ascontiguousarray(vecs, dtype=np.float32)
        scores, ids = [], []
        for b in self._buckets:
            if not b.ids:
                continue
            sc, idx = b.index.search(q, min(k, len(b.ids)))
            names = np.asarray(b.ids, dtype=object)
            scores.append(np.where(idx >= 0, sc, -np.inf))
            ids.append(names[np.maximum(idx, 0)])
        if not scores:
            return [[] for _ in range(len(q))]
        # every bucket's k best side by side, the best k of them per row: ties keep bucket order (oldest first),
        # as one sort of the concatenated lists did (one numpy sort instead of a Python loop per row and bucket)
        sc, names = np.hstack(scores), np.hstack(ids)
        order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        top_sc = np.take_along_axis(sc, order, axis=1)
        top_id = np.take_along_axis(names, order, axis=1)
        return [[(t, float(v)) for t, v in zip(top_id[i], top_sc[i]) if v != -np.inf] for i in range(len(q))]
