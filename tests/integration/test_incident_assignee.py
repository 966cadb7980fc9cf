"""Children of a master incident never attach to an inactive agent: they are routed like any ticket, a new
assignee takes the incident over, and the trail says why."""

from __future__ import annotations

import orjson

from fixtures import InProcessPipeline, check_capacity_invariant, feed_route, status_of, wait_for


async def test_an_incident_child_is_not_attached_to_an_inactive_assignee(settings, r):
    async with InProcessPipeline(settings, r, stages=("route",)) as p:
        k = p.k
        for agent in ("qa1", "qa2"):
            resp = await p.client.put(f"/v1/agents/{agent}", json={"capacity": 2, "skills": {"qa": 1.0}})
            assert resp.status == 200
        # a master incident (as the dedup stage leaves it): its first member's agent becomes its assignee
        await r.hset(k.group("g1"), mapping={"incident": "1", "status": "open", "size": 3})
        await feed_route(r, k, "master", "qa", group="g1")
        await wait_for(lambda: _routed(r, k, "master"))
        who = (await status_of(r, k, "master"))[1]
        assert await r.hget(k.group("g1"), "assignee") == who.encode()
        await feed_route(r, k, "child-1", "qa", group="g1")
        assert await wait_for(lambda: _routed(r, k, "child-1")) == ("attached", who)
        # the assignee goes off shift: the next child goes to the other agent, who takes the incident
        other = "qa2" if who == "qa1" else "qa1"
        assert (await p.client.put(f"/v1/agents/{who}", json={"capacity": 2, "skills": {"qa": 1.0},
                                                              "active": False})).status == 200
        await feed_route(r, k, "child-2", "qa", group="g1")
        assert await wait_for(lambda: _routed(r, k, "child-2")) == ("assigned", other)
        reason = orjson.loads(await r.hget(k.ticket("child-2"), "route"))["reason"]
        assert f"incident assignee {who} is inactive" in reason
        assert await r.hget(k.group("g1"), "assignee") == other.encode()
        await feed_route(r, k, "child-3", "qa", group="g1")
        assert await wait_for(lambda: _routed(r, k, "child-3")) == ("attached", other)
        await check_capacity_invariant(r, k)


async def _routed(r, k, tid):
    st, who = await status_of(r, k, tid)
    return (st, who) if st in ("assigned", "queued", "attached") else None
