"""Sliding-window FAISS index of recent ticket embeddings, for near-duplicate lookup.

Vectors live in time buckets, one exact inner-product index each; expiring the window drops whole
buckets, which FAISS flat indexes can't do cheaply one vector at a time.
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
    def __init__(self, dim: int, window_s: float, bucket_s: float | None = None):
        self.dim = dim
        self.window_s = window_s
        self.bucket_s = bucket_s or max(window_s / 10, 1.0)
        self._buckets: deque[_Bucket] = deque()
        self._known: set[str] = set()
        self._where: dict[str, tuple[_Bucket, int]] = {}  # id -> its bucket and row (an operator's regroup reads it)

    def __len__(self) -> int:
        return sum(len(b.ids) for b in self._buckets)

    def __contains__(self, ticket_id: str) -> bool:
        return ticket_id in self._known

    def expire(self, now: float) -> list[str]:
        """Drop what left the window; returns the ids dropped."""
        gone: list[str] = []
        # a bucket goes when its newest possible member is older than the window
        while self._buckets and self._buckets[0].start + self.bucket_s < now - self.window_s:
            old = self._buckets.popleft()
            self._known.difference_update(old.ids)
            for t in old.ids:
                self._where.pop(t, None)
            gone += old.ids
        return gone

    def add(self, ticket_id: str, vec: np.ndarray, ts: float) -> None:
        if ticket_id in self._known:
            return
        if not self._buckets or ts >= self._buckets[-1].start + self.bucket_s:
            self._buckets.append(_Bucket(ts, faiss.IndexFlatIP(self.dim)))
        b = self._buckets[-1]
        b.index.add(np.ascontiguousarray(vec.reshape(1, -1), dtype=np.float32))
        b.ids.append(ticket_id)
        self._known.add(ticket_id)
        self._where[ticket_id] = (b, len(b.ids) - 1)

    def vector(self, ticket_id: str) -> np.ndarray | None:
        """The stored vector of a ticket still in the window (None once it left)."""
        where = self._where.get(ticket_id)
        return None if where is None else where[0].index.reconstruct(where[1])

    def search(self, vecs: np.ndarray, k: int = 1) -> list[list[tuple[str, float]]]:
        """Up to k nearest (id, cosine) per row over the whole window, best first."""
        q = np.ascontiguousarray(vecs, dtype=np.float32)
        found: list[list[tuple[str, float]]] = [[] for _ in range(len(q))]
        for b in self._buckets:
            if not b.ids:
                continue
            scores, idx = b.index.search(q, min(k, len(b.ids)))
            for i in range(len(q)):
                found[i].extend((b.ids[j], float(sc)) for sc, j in zip(scores[i], idx[i]) if j >= 0)
        return [sorted(f, key=lambda x: -x[1])[:k] for f in found]
