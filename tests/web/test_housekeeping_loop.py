"""The API's background watcher runs housekeeping every ROUTING_HOUSEKEEPING_S, and /metrics counts what it removed."""

from __future__ import annotations

import dataclasses
import time

from fixtures import InProcessPipeline, wait_for


def _sample(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_the_api_deletes_dead_consumers_and_prunes_expired_index_entries(settings, r):
    quick = dataclasses.replace(settings, housekeeping_s=0.3, consumer_idle_delete_s=0, ticket_ttl_s=1)
    async with InProcessPipeline(quick, r, stages=[]) as p:
        k = p.k
        eid = await r.xadd(k.escalate, {"n": 1})
        await r.xgroup_create(k.escalate, "fallback", id="0")
        await r.xreadgroup("fallback", "gone-worker", {k.escalate: ">"}, count=1)
        await r.xack(k.escalate, "fallback", eid)
        old = int(time.time() * 1000) - 10_000
        await r.zadd(k.idx_all, {"expired": old, "kept": old})
        await r.hset(k.ticket("kept"), "status", "assigned")

        async def swept():
            consumers = await r.xinfo_consumers(k.escalate, "fallback")
            return not consumers and await r.zrange(k.idx_all, 0, -1) == [b"kept"]

        assert await wait_for(swept, timeout=5)
        metrics = await (await p.client.get("/metrics")).text()
        assert _sample(metrics, "routing_consumers_deleted_total") >= 1
        assert _sample(metrics, "routing_index_entries_pruned_total") >= 1
