"""An operator regroups an incident through the API, with the dedup and route stages running on the real Redis:
split (a new incident, pinned apart, later tickets land on the right side), merge back, move out (riders of the
incident's assignee are routed on their own), and bad requests answered with a 4xx naming the problem."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import orjson
import pytest

from routing_engine.domain.messages import Enriched
from routing_engine.domain.ticket import Ticket

from fixtures import InProcessPipeline, check_capacity_invariant, wait_for

DIM = 8
TEAM = "storm-desk"


def unit(*xs: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(xs)] = xs
    return v / np.linalg.norm(v)


def enriched(tid: str, vec: np.ndarray) -> Enriched:
    enrich = {"category": "atm", "team": TEAM, "urgency": 0.2, "urgent": False, "confidence": 0.9,
              "fast": {"top": [["atm", 0.9], ["other", 0.05]]}}
    return Enriched(Ticket(tid, subject=f"subject {tid}", body="b"), int(time.time() * 1000), enrich, vec)


def left(i: int) -> Enriched:  # the storm
    return enriched(f"l{i}", unit(1, 0.2, 0.03 * i))


def right(i: int) -> Enriched:  # a sub-cluster ~0.8 from it: merges into it by the rule (tau_merge 0.7)
    return enriched(f"r{i}", unit(1, -0.6, 0.03 * i))


@pytest.fixture
def regroup_settings(redis_url, prefix, tmp_path):
    from routing_engine.config import Settings

    s = Settings(redis_url=redis_url, prefix=prefix, state_dir=str(tmp_path))
    return dataclasses.replace(s, dedup_tau=0.99, dedup_tau_category=0.95, dedup_tau_centroid=0.99,
                               dedup_tau_centroid_category=0.95, dedup_tau_merge=0.7, incident_k=10, storm_burst=0.0)


async def _feed_and_route(p, msgs):
    async with p.r.pipeline(transaction=True) as pipe:  # all at once: dedup reads them in one batch
        for m in msgs:
            pipe.xadd(p.k.enriched, m.to_fields())
        await pipe.execute()

    async def routed():
        rows = [await p.r.hget(p.k.ticket(m.ticket_id), "status") for m in msgs]
        return all(x in (b"assigned", b"attached", b"queued") for x in rows)

    await wait_for(routed, 30)


async def _rec(p, tid) -> dict:
    return {f.decode(): v.decode() for f, v in (await p.r.hgetall(p.k.ticket(tid))).items()}


async def _group(p, gid) -> dict:
    return {f.decode(): v.decode() for f, v in (await p.r.hgetall(p.k.group(gid))).items()}


async def _members(p, gid) -> list[str]:
    return sorted(m.decode() for m in await p.r.lrange(p.k.members(gid), 0, -1))


async def _storm(p, capacity: int = 20):
    for agent in ("ops1", "ops2"):
        resp = await p.client.put(f"/v1/agents/{agent}", json={"capacity": capacity, "skills": {TEAM: 1.0}})
        assert resp.status == 200
    # K = 10 opens the incident at l9; r0, r1 start a group of their own, which r2 merges in before route reads
    # their group: the r's and l10-l13 are riders of the incident's assignee
    await _feed_and_route(p, [left(i) for i in range(10)] + [right(i) for i in range(4)]
                          + [left(i) for i in range(10, 14)])
    assert await _members(p, "l0") == sorted([f"l{i}" for i in range(14)] + [f"r{i}" for i in range(4)])
    assert [x.decode() for x in await p.r.zrange(p.k.incidents, 0, -1)] == ["l0"]
    lead = (await _group(p, "l0"))["assignee"]
    for t in ("r0", "r1", "r2", "r3", "l10", "l11", "l12", "l13"):
        assert (await _rec(p, t))["status"] == "attached" and (await _rec(p, t))["assignee"] == lead
    return lead


async def test_split_a_storm_later_tickets_follow_the_split_and_merge_back(regroup_settings, r):
    async with InProcessPipeline(regroup_settings, r, stages=("dedup", "route")) as p:
        lead = await _storm(p)

        resp = await p.client.post("/v1/incidents/l0/split", json={"ticket_ids": [f"r{i}" for i in range(4)]})
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        new = body["target"]
        assert new == "l0.split1" and body["moved"] == 4 and sorted(body["queued"]) == [f"r{i}" for i in range(4)]
        assert await _members(p, new) == [f"r{i}" for i in range(4)]
        assert await _members(p, "l0") == sorted(f"l{i}" for i in range(14))
        g = await _group(p, new)
        assert g["incident"] == "1" and g["size"] == "4" and g["split_from"] == "l0"
        assert int((await _group(p, "l0"))["size"]) == 14
        assert sorted(x.decode() for x in await p.r.zrange(p.k.incidents, 0, -1)) == ["l0", new]
        for i in range(4):  # their rider status ended with the split: each went to the queue, then to an agent
            rec = await _rec(p, f"r{i}")
            assert rec["group"] == new and rec["incident"] == "1" and rec["status"] in ("assigned", "queued")
        split = [f for _, f in await r.xrange(p.k.events) if f[b"type"] == b"incident.split"]
        assert len(split) == 1 and split[0][b"target"] == new.encode() and split[0][b"kind"] == b"split"
        assert len([f for _, f in await r.xrange(p.k.alerts) if f[b"type"] == b"incident.opened"]) == 1  # no page

        # later tickets land on the right side, and the merge rule does not join the two again (pinned apart)
        await _feed_and_route(p, [right(4), left(14)])
        assert (await _rec(p, "r4"))["group"] == new and (await _rec(p, "l14"))["group"] == "l0"
        assert "merged_into" not in await _group(p, new)
        assert (await _rec(p, "l14"))["status"] == "attached" and (await _rec(p, "l14"))["assignee"] == lead
        trail = orjson.loads((await _rec(p, "r4"))["dedup"])
        assert trail["group"] == new and trail["merged"] == []

        # merge back: every member returns, the split id points to l0, and the next right-like ticket joins l0
        resp = await p.client.post(f"/v1/incidents/{new}/merge", json={"into": "l0"})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["moved"] == 5
        assert len(await _members(p, "l0")) == 20 and (await _group(p, new))["merged_into"] == "l0"
        assert [x.decode() for x in await p.r.zrange(p.k.incidents, 0, -1)] == ["l0"]
        await _feed_and_route(p, [right(5)])
        assert (await _rec(p, "r5"))["group"] == "l0"
        inc = await (await p.client.get(f"/v1/incidents/{new}")).json()
        assert inc["status"] == "merged" and inc["merged_into"] == "l0"
        await check_capacity_invariant(r, p.k)


async def test_move_out_routes_riders_on_their_own_and_bad_requests_name_the_problem(regroup_settings, r):
    async with InProcessPipeline(regroup_settings, r, stages=("dedup", "route")) as p:
        await _storm(p)
        resp = await p.client.post("/v1/incidents/l0/move-out", json={"ticket_ids": ["l11", "l12"]})
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["target"] == "l0.out1" and body["moved"] == 2 and sorted(body["queued"]) == ["l11", "l12"]
        g = await _group(p, "l0.out1")
        assert g.get("incident") != "1" and g["size"] == "2"
        for t in ("l11", "l12"):  # no incident covers them now: each holds a slot of its own
            rec = await _rec(p, t)
            assert rec["group"] == "l0.out1" and rec["incident"] == "0"
            assert rec["status"] == "assigned" and rec["holds_slot"] == "1"
        assert int((await _group(p, "l0"))["size"]) == 16

        async def err(path, body, status):
            resp = await p.client.post(path, json=body)
            assert resp.status == status, (path, body, resp.status, await resp.text())
            return (await resp.json())["error"]

        e = await err("/v1/incidents/l0/split", {"ticket_ids": ["l5", "nope"]}, 400)
        assert "nope" in e["message"] and e["field"] == "ticket_ids"
        e = await err("/v1/incidents/l0/split", {"ticket_ids": []}, 400)
        assert e["field"] == "ticket_ids"
        members = await _members(p, "l0")
        e = await err("/v1/incidents/l0/move-out", {"ticket_ids": members}, 400)
        assert "every member" in e["message"]
        e = await err("/v1/incidents/missing/split", {"ticket_ids": ["l5"]}, 404)
        assert "missing" in e["message"]
        e = await err("/v1/incidents/l0/merge", {"into": "nowhere"}, 404)
        assert "nowhere" in e["message"]
        e = await err("/v1/incidents/l0/merge", {"into": "l0"}, 400)
        e = await err("/v1/incidents/l0/move", {"ticket_ids": ["l5"]}, 400)
        assert e["field"] == "to"
        resp = await p.client.post("/v1/incidents/l0/split", data=b"[1,", headers={"Content-Type": "application/json"})
        assert resp.status == 400 and "invalid JSON" in (await resp.json())["error"]["message"]
        # nothing moved by the refused requests
        assert await _members(p, "l0") == members and int((await _group(p, "l0"))["size"]) == 16
        # move one ticket to the other group: it follows that group's (lack of) incident
        resp = await p.client.post("/v1/incidents/l0/move", json={"ticket_ids": ["l13"], "to": "l0.out1"})
        assert resp.status == 200 and (await resp.json())["target"] == "l0.out1"
        assert (await _rec(p, "l13"))["group"] == "l0.out1" and (await _rec(p, "l13"))["status"] == "assigned"
        await check_capacity_invariant(r, p.k)
