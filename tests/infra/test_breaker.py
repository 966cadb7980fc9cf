"""The fallback's circuit breaker: opens on latency, errors and backlog; half-opens; closes; shared by workers."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from routing_engine.infra.breaker import Breaker, BreakerPolicy
from routing_engine.infra.keys import Keys

POLICY = BreakerPolicy(budget_ms=500, failure_threshold=2, cooldown_ms=300, backlog_ms=1000, probe_max=1)


async def _events(r, k):
    return [(f[b"state"].decode(), f[b"reason"].decode()) for _, f in await r.xrange(k.events)
            if f[b"type"] == b"breaker.state"]


async def test_latency_over_budget_opens_then_half_open_probe_closes(r, prefix):
    k = Keys(prefix)
    b = Breaker(r, k.breaker, k.events, POLICY)
    assert await b.allow(n=1) == (True, "closed")
    assert await b.record(True, latency_ms=900) == "closed"  # one slow batch is not enough
    assert await b.record(True, latency_ms=100) == "closed"  # and a good one resets the count
    await b.record(True, latency_ms=900)
    assert await b.record(True, latency_ms=800) == "open"
    assert await b.allow(n=1) == (False, "open")
    await asyncio.sleep(0.35)  # cooldown
    assert await b.allow(n=1) == (True, "half_open")  # the probe
    assert await b.allow(n=1) == (False, "half_open")  # only one probe at a time
    assert await b.record(True, latency_ms=120) == "closed"
    assert await b.allow(n=1) == (True, "closed")
    states = [s for s, _ in await _events(r, k)]
    assert states == ["open", "half_open", "closed"]
    assert "latency 800ms over budget 500ms" in (await _events(r, k))[0][1]


async def test_errors_open_and_failed_probe_reopens(r, prefix):
    k = Keys(prefix)
    b = Breaker(r, k.breaker, k.events, POLICY)
    await b.record(False, 10, error="RuntimeError: model crashed")
    assert await b.record(False, 10, error="RuntimeError: model crashed") == "open"
    await asyncio.sleep(0.35)
    assert (await b.allow(n=1))[1] == "half_open"
    assert await b.record(False, 10, error="still broken") == "open"
    assert [s for s, _ in await _events(r, k)] == ["open", "half_open", "open"]
    assert "probe failed: error: still broken" in (await _events(r, k))[-1][1]


async def test_backlog_opens_at_once(r, prefix):
    k = Keys(prefix)
    b = Breaker(r, k.breaker, k.events, POLICY)
    assert await b.record(True, latency_ms=50, backlog_ms=1500) == "open"
    assert "backlog" in (await _events(r, k))[0][1]


async def test_allow_opens_on_the_queue_before_any_late_answer(r, prefix):
    """A flood trips the breaker at escalation time: by the age of the oldest waiting escalation, or by the
    queue the fallback would need longer than the budget to serve at its measured rate."""
    k = Keys(prefix)
    b = Breaker(r, k.breaker, k.events, POLICY, queue=(k.escalate, "fallback"))
    await r.xgroup_create(k.escalate, "fallback", id="0", mkstream=True)
    assert await b.allow(n=5) == (True, "closed")  # no rate measured yet, empty queue
    await b.record(True, latency_ms=200, n=1)  # 5/s from one text: a first, pessimistic rate
    assert (await b.state())["rate"] == "5"
    await b.record(True, latency_ms=1000, n=10)  # a real batch replaces it: the fallback serves 10 texts/s
    await b.record(True, latency_ms=400, n=2)  # 5/s from a 2-text batch, mostly overhead: not a rate sample
    for _ in range(3):
        await r.xadd(k.escalate, {"data": "{}"})
    assert await b.allow(n=1) == (True, "closed")  # 4 texts at 10/s = 400 ms: within the 500 ms budget
    assert await b.allow(n=3) == (False, "open")  # 6 texts = 600 ms
    assert "6 escalations pending (6 now, ~0 in the 0 tickets before enrich) at 10/s need 600ms > budget 500ms" \
        in (await _events(r, k))[0][1]
    assert (await b.state())["queue"] == "3"

    # A queue entry read by a consumer but not acked still counts, and its age opens it.
    q2 = k.escalate + ":aged"
    b2 = Breaker(r, k.breaker + ":aged", k.events + ":aged", POLICY, queue=(q2, "fallback"))
    await r.xgroup_create(q2, "fallback", id="0", mkstream=True)
    await r.xadd(q2, {"data": "{}"}, id=f"{int(time.time() * 1000) - 1500}-0")
    await r.xreadgroup("fallback", "c1", {q2: ">"}, count=1)
    assert await b2.allow(n=1) == (False, "open")
    reasons = [f[b"reason"].decode() for _, f in await r.xrange(k.events + ":aged")]
    assert len(reasons) == 1 and reasons[0].startswith("backlog: oldest escalation waited 15")


async def test_two_workers_share_one_state_without_races(redis_url, prefix):
    """Two clients (as two workers would) hammer the same breaker: one transition each way, same view."""
    k = Keys(prefix)
    r1, r2 = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    try:
        b1, b2 = Breaker(r1, k.breaker, k.events, POLICY), Breaker(r2, k.breaker, k.events, POLICY)
        await asyncio.gather(*(b.record(True, latency_ms=900) for b in (b1, b2) for _ in range(20)))
        assert (await b1.state())["state"] == (await b2.state())["state"] == "open"
        await asyncio.sleep(0.35)
        grants = await asyncio.gather(*(b.allow(n=1) for b in (b1, b2) for _ in range(10)))
        assert sum(ok for ok, _ in grants) == 1  # exactly one probe across both workers
        await b2.record(True, latency_ms=100)
        assert (await b1.state())["state"] == "closed"
        assert [s for s, _ in await _events(r1, k)] == ["open", "half_open", "closed"]
    finally:
        await r1.aclose()
        await r2.aclose()


async def test_ingest_backlog_counts_at_the_escalation_share(r, prefix):
    """In a flood the tickets still waiting for enrich will escalate at the recent share: a fallback that
    could serve this batch but not what is queued behind it opens the breaker at once; a half-open probe is
    not granted while that backlog remains, and a batch that escalates nothing never takes the probe slot."""
    k = Keys(prefix)
    pol = BreakerPolicy(budget_ms=500, failure_threshold=2, cooldown_ms=200, backlog_ms=1000, probe_max=1)
    b = Breaker(r, k.breaker, k.events, pol, queue=(k.escalate, "fallback"), upstream=([k.ingest], "enrich"))
    await r.xgroup_create(k.escalate, "fallback", id="0", mkstream=True)
    await r.xgroup_create(k.ingest, "enrich", id="0", mkstream=True)
    await b.record(True, latency_ms=400, n=40)  # 100 texts/s
    assert await b.allow(n=16, batch=64) == (True, "closed")  # share 0.25; nothing waiting upstream
    for _ in range(300):
        await r.xadd(k.ingest, {"subject": "s", "body": "b"})
    # 16 now + 0.25 x 300 coming = 91 escalations at 100/s = 910 ms > 500 ms
    assert await b.allow(n=16, batch=64) == (False, "open")
    assert "~75 in the 300 tickets before enrich" in (await _events(r, k))[0][1]
    await asyncio.sleep(0.25)
    assert await b.allow(n=4, batch=64) == (False, "open")  # cooldown over, but the backlog is still there
    await r.xreadgroup("enrich", "w", {k.ingest: ">"}, count=300)
    await r.xack(k.ingest, "enrich", *[e for e, _ in (await r.xrange(k.ingest))])  # the backlog drained
    await asyncio.sleep(0.25)
    assert await b.allow(n=0, batch=64) == (False, "half_open")  # nothing to escalate: no probe taken
    assert await b.allow(n=4, batch=64) == (True, "half_open")  # the probe
    assert await b.record(True, latency_ms=100, n=4) == "closed"


async def test_a_primed_rate_sizes_the_first_flood_and_never_overrides_a_measured_one(r, prefix):
    """The fallback stage primes the rate from a warm-up batch: with it, the first flood opens the breaker on the
    queue rule at once (without it only the 1 s age rule could); a rate measured on real batches stays."""
    k = Keys(prefix)
    b = Breaker(r, k.breaker, k.events, POLICY, queue=(k.escalate, "fallback"))
    await r.xgroup_create(k.escalate, "fallback", id="0", mkstream=True)
    assert await b.allow(n=6) == (True, "closed")  # no rate: the queue rule cannot size anything
    assert await b.prime(10.0) is True
    assert await b.allow(n=6) == (False, "open")  # 6 texts at 10/s = 600 ms > 500 ms
    assert "at 10/s need 600ms" in (await _events(r, k))[-1][1]

    k2 = Keys(prefix + "-measured")
    b2 = Breaker(r, k2.breaker, k2.events, POLICY, queue=(k2.escalate, "fallback"))
    await b2.record(True, latency_ms=100, n=10)  # 100 texts/s measured on a real batch
    assert await b2.prime(5.0) is False and (await b2.state())["rate"] == "100"
    assert await b2.prime(0.0) is False


async def test_a_fast_path_behind_opens_it_whatever_the_escalation_share(r, prefix):
    """A flood the fast path cannot keep up with opens the breaker at the first batch that sees it, even when
    hardly anything escalates (the queue rule alone waited for an escalation to age 1 s: 2.54 s into `overload`):
    the fallback's CPU goes to the fast path. Batches under 32 do not size the rate; 0 turns the rule off."""
    k = Keys(prefix)
    pol = BreakerPolicy(budget_ms=500, failure_threshold=2, cooldown_ms=200, backlog_ms=1000, probe_max=1,
                        behind_ms=500)
    b = Breaker(r, k.breaker, k.events, pol, queue=(k.escalate, "fallback"), upstream=([k.ingest], "enrich"))
    await r.xgroup_create(k.escalate, "fallback", id="0", mkstream=True)
    await r.xgroup_create(k.ingest, "enrich", id="0", mkstream=True)
    await b.record(True, latency_ms=100, n=10)  # the fallback: 100 texts/s
    for _ in range(300):
        await r.xadd(k.ingest, {"subject": "s", "body": "b"})
    # a lane batch of 8 measured at 10 tickets/s says nothing about the batched rate
    assert await b.allow(n=0, batch=8, fast_rate=10.0) == (True, "closed")
    assert (await b.state()).get("fast_rate") in (None, "0")
    # 300 waiting at 1,000 tickets/s = 300 ms: within 500 ms; nothing escalates, so the queue rule is quiet
    assert await b.allow(n=0, batch=64, fast_rate=1000.0) == (True, "closed")
    # the next batch ran at 200/s: the average is 0.7 x 1000 + 0.3 x 200 = 760/s, 300 / 760 = 394 ms
    assert await b.allow(n=0, batch=64, fast_rate=200.0) == (True, "closed")
    for _ in range(200):
        await r.xadd(k.ingest, {"subject": "s", "body": "b"})
    # 500 waiting at 760/s = 657 ms > 500 ms: open, though this batch escalates 1 of 64
    assert await b.allow(n=1, batch=64) == (False, "open")
    assert (await _events(r, k))[-1] == (
        "open", "fast path behind: 500 tickets wait for enrich at 760/s, 657ms > 500ms: its CPU goes to the fast path")
    await asyncio.sleep(0.25)
    assert await b.allow(n=1, batch=64) == (False, "open")  # cooldown over, but the fast path is still behind
    await r.xreadgroup("enrich", "w", {k.ingest: ">"}, count=500)
    await r.xack(k.ingest, "enrich", *[e for e, _ in (await r.xrange(k.ingest))])  # caught up
    await asyncio.sleep(0.25)
    assert await b.allow(n=1, batch=64) == (True, "half_open")  # the probe
    assert await b.record(True, latency_ms=50, n=1) == "closed"

    k2 = Keys(prefix + "-off")  # a fallback on hosts of its own: the rule off
    b2 = Breaker(r, k2.breaker, k2.events, BreakerPolicy(behind_ms=0), queue=(k2.escalate, "fallback"),
                 upstream=([k2.ingest], "enrich"))
    await r.xgroup_create(k2.escalate, "fallback", id="0", mkstream=True)
    await r.xgroup_create(k2.ingest, "enrich", id="0", mkstream=True)
    for _ in range(500):
        await r.xadd(k2.ingest, {"subject": "s", "body": "b"})
    assert await b2.allow(n=0, batch=64, fast_rate=100.0) == (True, "closed")  # 5 s behind, rule off


async def test_the_fast_paths_rate_is_the_sum_over_its_enrich_workers(r, prefix):
    """Two enrich workers drain the backlog twice as fast as one: averaging their per-batch rates made the breaker
    open at half the backlog it should with N workers (N x too eager)."""
    k = Keys(prefix)
    b = Breaker(r, k.breaker, k.events, BreakerPolicy(behind_ms=500), queue=(k.escalate, "fallback"),
                upstream=([k.ingest], "enrich"))
    await r.xgroup_create(k.escalate, "fallback", id="0", mkstream=True)
    await r.xgroup_create(k.ingest, "enrich", id="0", mkstream=True)
    assert await b.allow(n=0, batch=64, fast_rate=500.0, consumer="w1") == (True, "closed")
    assert await b.allow(n=0, batch=64, fast_rate=500.0, consumer="w2") == (True, "closed")
    assert float((await b.state())["fast_rate"]) == 1000.0
    for _ in range(450):
        await r.xadd(k.ingest, {"subject": "s", "body": "b"})
    # 450 waiting at 1,000/s (two workers) = 450 ms: within the 500 ms; one worker's 500/s would have said 900 ms
    assert await b.allow(n=0, batch=64, fast_rate=500.0, consumer="w1") == (True, "closed")
    for _ in range(100):
        await r.xadd(k.ingest, {"subject": "s", "body": "b"})
    assert await b.allow(n=0, batch=64, fast_rate=500.0, consumer="w2") == (False, "open")
    assert "550 tickets wait for enrich at 1000/s, 550ms" in (await _events(r, k))[-1][1]
