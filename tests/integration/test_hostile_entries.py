"""Producer entries that try to hurt the pipeline: ids reaching into other key families, bytes that are not UTF-8,
and a broken entry carrying the id of a ticket already assigned. Each is dead-lettered with its reason, the
assigned ticket keeps its agent and its status, and the stage goes on with the next ticket."""

from __future__ import annotations

import orjson

from fixtures import wait_for

TEXT = {"subject": "Card never arrived", "body": "I ordered my card two weeks ago and it still has not arrived"}


async def _record(pipeline, tid):
    resp = await pipeline.client.get(f"/v1/tickets/{tid}")
    return await resp.json() if resp.status == 200 else None


async def _assigned(pipeline, tid):
    rec = await _record(pipeline, tid)
    return rec if rec and rec["status"] == "assigned" else None


async def test_hostile_entries_are_dead_lettered_and_hurt_no_ticket(pipeline, r):
    k = pipeline.k
    resp = await pipeline.client.post("/v1/tickets", json={"id": "T-7", **TEXT})
    assert resp.status == 202
    before = await wait_for(lambda: _assigned(pipeline, "T-7"))
    agent = k.agent(before["assignee"])
    load = await r.hget(agent, "load")

    hostile = {
        "forged": {"data": b"{broken", "ticket_id": b"T-7"},                       # raw id of an assigned ticket
        "colon-ticket-id": {"data": orjson.dumps(TEXT), "ticket_id": b"T-7:m"},   # the group family of T-7
        "colon-id": {"data": orjson.dumps({**TEXT, "id": "T-7:m"})},
        "dots": {"data": orjson.dumps({**TEXT, "id": ".."})},
        "latin1-ticket-id": {"data": orjson.dumps(TEXT), "ticket_id": b"T-\xff"},
        "latin1-data": {"data": b'{"subject": "caf\xe9 card"}'},
        "latin1-flat": {"subject": b"caf\xe9", "body": b"card lost"},
    }
    ids = {name: (await r.xadd(k.ingest, fields)).decode() for name, fields in hostile.items()}

    async def dead():
        rows = {f[b"entry_id"].decode(): {a.decode(): b.decode(errors="replace") for a, b in f.items()}
                for _, f in await r.xrange(k.dead)}
        return rows if len(rows) >= len(hostile) else None

    rows = await wait_for(dead)
    by_name = {name: rows[eid] for name, eid in ids.items()}
    assert all(row["stage"] == "enrich" and row["reason"].startswith("invalid: ") for row in by_name.values())
    assert "ticket_id" in by_name["colon-ticket-id"]["reason"] and "invalid: id:" in by_name["colon-id"]["reason"]
    assert "UTF-8" in by_name["latin1-ticket-id"]["reason"]
    assert "UTF-8" in by_name["latin1-data"]["reason"] and "UTF-8" in by_name["latin1-flat"]["reason"]
    # the forged id is kept for the operator, marked unverified, and touches nothing
    assert by_name["forged"]["ticket_id"] == "" and by_name["forged"]["ticket_id_unverified"] == "T-7"
    after = await _record(pipeline, "T-7")
    assert after["status"] == "assigned" and after["dead_reason"] is None
    assert after["assignee"] == before["assignee"] and await r.hget(agent, "load") == load
    assert await r.zscore(k.idx_status("dead"), "T-7") is None
    assert not await r.exists(k.ticket("T-7:m"), k.ticket(".."))

    # the stage is alive: the next ticket goes through
    resp = await pipeline.client.post("/v1/tickets", json={"id": "T-8", **TEXT})
    assert resp.status == 202
    await wait_for(lambda: _routed(pipeline, "T-8"))


async def _routed(pipeline, tid):
    rec = await _record(pipeline, tid)
    return rec if rec and rec["status"] in ("assigned", "queued", "attached") else None
