"""The dedup stage's near-duplicate window: exact k nearest over every bucket, expiry by time, and the cap on how
many tickets it holds (its search is exact, so its cost grows with what it holds)."""

from __future__ import annotations

import numpy as np

from routing_engine.models.window_index import WindowIndex

DIM = 16


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_is_the_exact_k_nearest_over_all_buckets_best_first():
    vecs = unit_rows(300, 1)
    w = WindowIndex(DIM, window_s=300, bucket_s=10)
    for i, v in enumerate(vecs):
        w.add(f"t{i}", v, ts=i * 0.5)  # 150 s of tickets: 15 buckets
    q = unit_rows(20, 2)
    got = w.search(q, k=8)
    ref = q @ vecs.T
    for row, found in zip(ref, got):
        best = np.argsort(-row, kind="stable")[:8]
        assert [t for t, _ in found] == [f"t{j}" for j in best]
        assert np.allclose([s for _, s in found], row[best], atol=1e-5)
    # fewer stored than k: what there is
    small = WindowIndex(DIM, window_s=300)
    small.add("a", vecs[0], 0.0)
    assert [t for t, _ in small.search(q[:2], k=8)[0]] == ["a"]
    assert WindowIndex(DIM, window_s=300).search(q[:2], k=3) == [[], []]


def test_time_expiry_drops_whole_buckets_past_the_window():
    vecs = unit_rows(40, 3)
    w = WindowIndex(DIM, window_s=100, bucket_s=10)
    for i, v in enumerate(vecs):
        w.add(f"t{i}", v, ts=float(i * 5))  # 0 .. 195 s
    gone = w.expire(now=200.0)  # a bucket goes once its newest possible member is older than 100 s
    assert gone == [f"t{i}" for i in range(len(gone))] and len(w) == 40 - len(gone)
    assert "t0" not in w and "t39" in w and w.vector("t0") is None
    assert all(t not in {x for x, _ in f} for f in w.search(vecs[:5], k=40) for t in gone)


def test_the_cap_keeps_only_the_most_recent_tickets_whatever_the_rate():
    vecs = unit_rows(5000, 4)
    w = WindowIndex(DIM, window_s=300, max_vectors=1000)
    gone: list[str] = []
    for i, v in enumerate(vecs):  # 5,000 tickets in 5 s: all inside the 300 s window
        w.add(f"t{i}", v, ts=i / 1000)
        if i % 100 == 99:
            gone += w.expire(now=i / 1000)
    assert 900 <= len(w) <= 1000  # buckets close at a tenth of the cap, so the oldest tenth goes at once
    assert gone == [f"t{i}" for i in range(len(gone))]  # oldest first
    assert "t4999" in w and "t0" not in w
    found = {t for t, _ in w.search(vecs[:1], k=5)[0]}
    assert all(int(t[1:]) >= 5000 - 1000 for t in found)
    uncapped = WindowIndex(DIM, window_s=300)
    for i, v in enumerate(vecs):
        uncapped.add(f"t{i}", v, ts=i / 1000)
    assert uncapped.expire(now=5.0) == [] and len(uncapped) == 5000
