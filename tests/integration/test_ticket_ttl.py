"""No expiry while a ticket holds a slot: an assigned ticket's record outlives its TTL (an expired record could
never free its agent's slot); resolved, it gets its TTL back and goes. A queued ticket whose record expired is
dropped from its queue, never handed a slot."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from fixtures import InProcessPipeline, check_capacity_invariant, feed_route, status_of, wait_for

TTL_S = 1


async def test_slot_holders_outlive_their_ttl_and_resolved_tickets_expire(settings, r):
    async with InProcessPipeline(replace(settings, ticket_ttl_s=TTL_S), r, stages=("route",)) as p:
        k = p.k
        resp = await p.client.put("/v1/agents/qa1", json={"capacity": 1, "skills": {"qa": 1.0}})
        assert resp.status == 200
        await feed_route(r, k, "held", "qa")
        await feed_route(r, k, "waiting", "qa")
        await wait_for(lambda: _status_is(r, k, "waiting", "queued"))
        assert await status_of(r, k, "held") == ("assigned", "qa1")
        assert await r.ttl(k.ticket("held")) == -1  # no expiry while it holds the slot
        assert await r.ttl(k.ticket("waiting")) > 0
        await asyncio.sleep(TTL_S + 1.2)
        assert await r.exists(k.ticket("held")) and not await r.exists(k.ticket("waiting"))
        resp = await p.client.post("/v1/tickets/held/resolve")
        assert resp.status == 200 and (await resp.json())["next_ticket"] is None  # the expired one is not handed out
        assert await r.zcard(k.queue("qa")) == 0  # ... and no longer waits
        assert 0 < await r.ttl(k.ticket("held")) <= TTL_S
        await check_capacity_invariant(r, k)
        await asyncio.sleep(TTL_S + 1.2)
        assert not await r.exists(k.ticket("held"))
        assert (await p.client.get("/v1/agents")).status == 200
        assert int(await r.hget(k.agent("qa1"), "load")) == 0


async def test_a_ticket_dequeued_into_a_slot_loses_its_ttl(settings, r):
    async with InProcessPipeline(replace(settings, ticket_ttl_s=60), r, stages=("route",)) as p:
        k = p.k
        await p.client.put("/v1/agents/qa1", json={"capacity": 1, "skills": {"qa": 1.0}})
        await feed_route(r, k, "first", "qa")
        await feed_route(r, k, "second", "qa")
        await wait_for(lambda: _status_is(r, k, "second", "queued"))
        assert await r.ttl(k.ticket("second")) > 0
        assert (await (await p.client.post("/v1/tickets/first/resolve")).json())["next_ticket"] == "second"
        assert await status_of(r, k, "second") == ("assigned", "qa1")
        assert await r.ttl(k.ticket("second")) == -1
        await check_capacity_invariant(r, k)


async def _status_is(r, k, tid, status):
    return (await status_of(r, k, tid))[0] == status
