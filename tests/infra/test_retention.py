"""Grouped streams are trimmed only below what every group has acked: nothing unread or pending is ever lost."""

from __future__ import annotations

from routing_engine.infra.backlog import trim_acked
from routing_engine.infra.keys import Keys


async def test_trim_keeps_every_unacked_entry(r, prefix):
    k = Keys(prefix)
    ids = [await r.xadd(k.enriched, {"n": i}) for i in range(400)]
    for i in range(50):
        await r.xadd(k.ingest, {"n": i})  # no group has read it yet: kept whole
    await r.xgroup_create(k.enriched, "dedup", id="0")
    await r.xreadgroup("dedup", "c", {k.enriched: ">"}, count=300)
    await r.xack(k.enriched, "dedup", *ids[:250])  # 250 done, 50 pending, 100 unread

    trimmed = await trim_acked(r, k, dedup_window_s=300)

    assert trimmed["enriched"] >= 100  # whole 100-entry nodes below the first pending entry went
    left = {eid for eid, _ in await r.xrange(k.enriched)}
    assert set(ids[250:]) <= left  # every pending and unread entry is still there
    assert await r.xlen(k.ingest) == 50 and "ingest" not in trimmed
