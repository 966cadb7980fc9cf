"""Housekeeping deletes only dead consumers with nothing pending, and prunes only index members whose record is gone."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from routing_engine.infra.housekeeping import delete_dead_consumers, housekeep, prune_indexes
from routing_engine.infra.keys import Keys


async def _consumers(r, stream, group) -> dict[str, int]:
    return {c["name"].decode(): int(c["pending"]) for c in await r.xinfo_consumers(stream, group)}


async def test_idle_consumer_without_pending_is_deleted_one_with_pending_kept(r, prefix):
    k = Keys(prefix)
    for i in range(4):
        await r.xadd(k.enriched, {"n": i})
    await r.xgroup_create(k.enriched, "dedup", id="0")
    await r.xreadgroup("dedup", "holder", {k.enriched: ">"}, count=2)  # 2 pending, never acked
    await r.xreadgroup("dedup", "idle", {k.enriched: ">"}, count=1)
    t_idle = time.monotonic()
    entries = [e for e, _ in await r.xrange(k.enriched)]
    await r.xack(k.enriched, "dedup", entries[2])  # idle: nothing pending
    await asyncio.sleep(0.5)
    await r.xreadgroup("dedup", "fresh", {k.enriched: ">"}, count=1)  # just seen: not idle long enough
    t_fresh = time.monotonic()
    await r.xack(k.enriched, "dedup", entries[3])

    assert await _consumers(r, k.enriched, "dedup") == {"holder": 2, "idle": 0, "fresh": 0}
    # the limit halfway between the two consumers' idle times, however long this box took to get here (a fixed
    # 0.2 s failed once on a loaded box: "fresh" had been idle longer than that by the time it was looked at)
    now = time.monotonic()
    assert await delete_dead_consumers(r, k, idle_s=((now - t_idle) + (now - t_fresh)) / 2) == 1
    assert await _consumers(r, k.enriched, "dedup") == {"holder": 2, "fresh": 0}
    assert len(await r.xpending_range(k.enriched, "dedup", "-", "+", 10, "holder")) == 2


async def test_a_long_idle_limit_deletes_nothing(r, prefix):
    k = Keys(prefix)
    eid = await r.xadd(k.ingest, {"n": 1})
    await r.xgroup_create(k.ingest, "enrich", id="0")
    await r.xreadgroup("enrich", "w1", {k.ingest: ">"}, count=1)
    await r.xack(k.ingest, "enrich", eid)
    await asyncio.sleep(0.05)
    assert await delete_dead_consumers(r, k, idle_s=3600) == 0
    assert list(await _consumers(r, k.ingest, "enrich")) == ["w1"]


async def test_index_members_of_expired_records_are_pruned_live_ones_kept(r, prefix):
    k = Keys(prefix)
    old = int(time.time() * 1000) - 20_000
    for tid in ("gone", "live", "young"):
        await r.zadd(k.idx_all, {tid: old if tid != "young" else int(time.time() * 1000)})
        await r.zadd(k.idx_status("resolved"), {tid: old if tid != "young" else int(time.time() * 1000)})
    await r.hset(k.ticket("live"), "status", "assigned")  # a PERSISTed slot holder: no TTL
    # "gone" never had a record left; "young" has none either but is younger than the TTL: not looked at

    assert await prune_indexes(r, k, ticket_ttl_s=10) == 2
    assert set(await r.zrange(k.idx_all, 0, -1)) == {b"live", b"young"}
    assert set(await r.zrange(k.idx_status("resolved"), 0, -1)) == {b"live", b"young"}


async def test_a_record_that_expired_by_ttl_is_pruned_in_chunks(r, prefix, monkeypatch):
    from routing_engine.infra import housekeeping

    monkeypatch.setattr(housekeeping, "CHUNK", 7)  # several chunks, live members skipped over between them
    k = Keys(prefix)
    old = int(time.time() * 1000) - 5_000
    await r.zadd(k.idx_status("queued"), {f"t{i}": old + i for i in range(30)})
    for i in range(0, 30, 3):
        await r.hset(k.ticket(f"t{i}"), "status", "queued")
    await r.hset(k.ticket("t1"), "status", "queued")
    await r.pexpire(k.ticket("t1"), 50)
    await asyncio.sleep(0.2)

    before = REGISTRY.get_sample_value("routing_index_entries_pruned_total") or 0
    swept = await housekeep(r, k, consumer_idle_s=3600, ticket_ttl_s=1)
    assert swept.index_entries_pruned == 20
    assert REGISTRY.get_sample_value("routing_index_entries_pruned_total") == before + 20
    assert set(await r.zrange(k.idx_status("queued"), 0, -1)) == {f"t{i}".encode() for i in range(0, 30, 3)}
