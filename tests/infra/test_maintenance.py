"""Upkeep shared by every process through leases: one process trims and sweeps per interval, and a deployment of
workers alone (no API process anywhere) still trims its streams."""

from __future__ import annotations

import asyncio
import dataclasses

from routing_engine.infra import maintenance
from routing_engine.infra.keys import Keys

from fixtures import wait_for


async def _acked_backlog(r, k, n=400, acked=250):
    """enriched with a dedup group that acked the first `acked` of `n` entries and has 50 more pending."""
    ids = [await r.xadd(k.enriched, {"n": i}) for i in range(n)]
    await r.xgroup_create(k.enriched, "dedup", id="0")
    await r.xreadgroup("dedup", "c", {k.enriched: ">"}, count=acked + 50)
    await r.xack(k.enriched, "dedup", *ids[:acked])
    return ids


async def test_one_process_does_each_job_per_interval_and_the_next_takes_over_when_it_lapses(settings, r,
                                                                                               monkeypatch):
    monkeypatch.setattr(maintenance, "TRIM_EVERY_S", 0.3)
    s = dataclasses.replace(settings, housekeeping_s=0.3)
    k = Keys(s.prefix)
    ids = await _acked_backlog(r, k)
    first = await maintenance.upkeep(r, k, s, "api-1")
    assert first["trimmed"]["enriched"] >= 100 and "swept" in first
    assert await r.get(k.lease("trim")) == b"api-1"
    assert await maintenance.upkeep(r, k, s, "w1") == {}  # both leases held: nothing done twice
    left = {eid for eid, _ in await r.xrange(k.enriched)}
    assert set(ids[250:]) <= left  # pending and unread entries are never trimmed
    await asyncio.sleep(0.35)  # the holder went quiet (or died): its leases lapse, another process takes them
    again = await maintenance.upkeep(r, k, s, "w1")
    assert set(again) == {"trimmed", "swept"} and await r.get(k.lease("housekeeping")) == b"w1"


async def test_a_worker_without_any_api_process_trims_its_streams(settings, r):
    """Before, only the API's admission watcher trimmed: workers on their own let every stream grow without bound."""
    from routing_engine import service

    k = Keys(settings.prefix)
    ids = await _acked_backlog(r, k)
    async with service.running(settings, r, stages=["route"], consumer="w-alone"):
        await wait_for(lambda: _trimmed(r, k, len(ids)), timeout=10)
    left = {eid for eid, _ in await r.xrange(k.enriched)}
    assert set(ids[250:]) <= left
    assert await r.get(k.lease("trim")) == b"w-alone"


async def _trimmed(r, k, n):
    return await r.xlen(k.enriched) < n
