"""Queued tickets are served first whenever capacity appears: ahead of newer tickets, and on a capacity raise, a
new agent, an agent active again and an incident resolve. The route stage runs in process on the real Redis; the
tickets arrive on {prefix}:deduped with a team of their own (`qa`), so only the test's agents can take them."""

from __future__ import annotations

import pytest

from fixtures import InProcessPipeline, check_capacity_invariant, feed_route, status_of, wait_for

TEAM = "qa"


@pytest.fixture
async def route_only(settings, r):
    async with InProcessPipeline(settings, r, stages=("route",)) as p:
        yield p
        await check_capacity_invariant(r, p.k)


async def _put(p, agent_id, capacity=1, active=True, skill=1.0):
    resp = await p.client.put(f"/v1/agents/{agent_id}", json={"capacity": capacity, "active": active,
                                                               "skills": {TEAM: skill}})
    assert resp.status == 200, await resp.text()


async def _routed(p, tid, status=None):
    async def done():
        st, who = await status_of(p.r, p.k, tid)
        ok = st == status if status else st in ("assigned", "queued", "attached")
        return (st, who) if ok else None
    return await wait_for(done, timeout=20, interval=0.05)


async def _route(p, tid, urgency=0.5, group=None):
    await feed_route(p.r, p.k, tid, TEAM, urgency, group)
    return await _routed(p, tid)


async def _backlog(p):
    """qa1 (one slot) holds t0; t1 (urgency 0.5), t2 (0.9) and t3 (0.2) wait."""
    await _put(p, "qa1", capacity=1)
    assert await _route(p, "t0") == ("assigned", "qa1")
    for tid, u in (("t1", 0.5), ("t2", 0.9), ("t3", 0.2)):
        assert await _route(p, tid, u) == ("queued", "")


async def test_a_new_ticket_does_not_take_a_slot_ahead_of_the_queue(route_only, r):
    p = route_only
    await _backlog(p)
    # a slot comes free without any fill running (as after a crash between the two): the next new ticket must
    # not jump the queue; the queue's head gets the slot instead
    await r.hset(p.k.agent("qa1"), "capacity", 2)
    await _route(p, "t4", 0.5)
    assert await _routed(p, "t2", "assigned") == ("assigned", "qa1")
    assert (await status_of(r, p.k, "t4"))[0] == "queued"
    assert [x.decode() for x in await r.zrange(p.k.queue(TEAM), 0, -1)] == ["t1", "t4", "t3"]
    # a new ticket more urgent than every waiting one still goes first when a slot is free
    await r.hset(p.k.agent("qa1"), "capacity", 3)
    assert await _route(p, "t5", 0.99) == ("assigned", "qa1")


async def test_raising_capacity_hands_out_the_queue_by_urgency_then_age(route_only, r):
    p = route_only
    await _backlog(p)
    await _put(p, "qa1", capacity=3)
    assert (await status_of(r, p.k, "t2"))[0] == "assigned" and (await status_of(r, p.k, "t1"))[0] == "assigned"
    assert (await status_of(r, p.k, "t3"))[0] == "queued"
    events = [f for _, f in await r.xrange(p.k.events)]
    assert any(f[b"type"] == b"ticket.assigned" and f[b"ticket_id"] == b"t2" and f[b"assignee"] == b"qa1"
               for f in events)
    assert any(f[b"type"] == b"agent.load" and f[b"agent"] == b"qa1" and f[b"load"] == b"3" for f in events)


async def test_a_new_agent_takes_queued_tickets(route_only, r):
    p = route_only
    await _backlog(p)
    await _put(p, "qa2", capacity=1)
    assert await status_of(r, p.k, "t2") == ("assigned", "qa2")
    assert (await status_of(r, p.k, "t1"))[0] == "queued"


async def test_an_agent_active_again_takes_queued_tickets(route_only, r):
    p = route_only
    await _put(p, "qa1", capacity=2, active=False)
    assert await _route(p, "t0") == ("queued", "")
    await _put(p, "qa1", capacity=2, active=True)
    assert await status_of(r, p.k, "t0") == ("assigned", "qa1")


async def test_resolving_an_incident_hands_its_slots_to_the_queue(route_only, r):
    p = route_only
    k = p.k
    # a master incident (as the dedup stage leaves it) whose first member takes qa1's only slot
    await r.hset(k.group("g1"), mapping={"incident": "1", "status": "open", "size": 1})
    await r.rpush(k.members("g1"), "m0")
    await _put(p, "qa1", capacity=1)
    assert await _route(p, "m0", group="g1") == ("assigned", "qa1")
    assert await _route(p, "t1") == ("queued", "")
    resp = await p.client.post("/v1/incidents/g1/resolve")
    assert resp.status == 200 and (await resp.json())["tickets_resolved"] == 1
    assert await status_of(r, k, "t1") == ("assigned", "qa1")
