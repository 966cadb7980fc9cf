"""End to end in one process: API + every stage against the real Redis with real (tiny) models."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import orjson
from aiohttp import web
from prometheus_client import REGISTRY

from routing_engine.models.onnx_minilm import cores
from routing_engine.stages.enrich import embed_threads

from fixtures import InProcessPipeline, wait_for


async def routed(pipeline, tid):
    resp = await pipeline.client.get(f"/v1/tickets/{tid}")
    if resp.status != 200:
        return None
    rec = await resp.json()
    return rec if rec["status"] in ("assigned", "queued", "attached") else None


async def test_http_ticket_comes_out_routed_with_trail(pipeline):
    resp = await pipeline.client.post("/v1/tickets", json={
        "subject": "Card never arrived", "body": "I ordered my card two weeks ago and it still has not arrived",
        "customer": "c-1", "channel": "email"})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    rec = await wait_for(lambda: routed(pipeline, body["ticket_id"]))
    assert rec["stream_id"] == body["stream_id"]
    assert rec["category"] == "card_arrival" and rec["team"] == "cards"
    assert 0 < rec["enrich"]["confidence"] <= 1 and rec["enrich"]["model"].startswith("lgbm-")
    assert 0 <= rec["urgency"] <= 1
    assert rec["dedup"]["group"] == body["ticket_id"]  # first of its kind: its own group
    assert rec["status"] == "assigned" and rec["assignee"] == "ana"  # the cards specialist is free
    t = rec["timings"]
    assert t["received_at"] <= t["enriched_at"] <= t["grouped_at"] <= t["routed_at"]
    assert t["ms"]["total"] >= 0
    # where the enrich batch's time went, on the trail and in /metrics
    steps = rec["enrich"]["steps_ms"]
    assert {"embed", "lgbm", "calibrate", "top", "ood", "breaker", "urgency"} <= set(steps)
    assert steps["embed"] > 0 and rec["enrich"]["embed_ms"] == steps["embed"]
    wanted = [f'routing_stage_step_seconds_count{{stage="{stage}",step="{step}"}}'
              for stage, step in (("enrich", "embed"), ("enrich", "lgbm"), ("enrich", "commit"), ("enrich", "read"),
                                  ("dedup", "process"), ("route", "commit"))]

    async def missing():  # a stage observes its commit just after it: the record can be read a moment before
        lines = (await (await pipeline.client.get("/metrics")).text()).splitlines()
        return [w for w in wanted if not any(x.startswith(w) and float(x.split()[-1]) >= 1 for x in lines)]

    async def all_there():
        return not await missing() or None

    with contextlib.suppress(AssertionError):
        await wait_for(all_there, timeout=5)
    assert not await missing()


async def test_stream_door_ticket_is_routed_and_client_id_is_idempotent(pipeline, r):
    k = pipeline.k
    ticket = {"id": "ext-42", "subject": "Transfer not received",
              "body": "I sent money to my friend yesterday but they say it never arrived"}
    first = await r.xadd(k.ingest, {"data": orjson.dumps(ticket)})
    await r.xadd(k.ingest, {"data": orjson.dumps(ticket)})  # a retrying producer: same id again
    flat = await r.xadd(k.ingest, {"subject": "ATM kept my money", "body": "the cash machine did not give me cash"})
    rec = await wait_for(lambda: routed(pipeline, "ext-42"))
    assert rec["stream_id"] == first.decode()
    assert rec["team"] == "payments" and rec["enrich"]["decided_by"] == "lightgbm"
    flat_id = "s" + flat.decode().replace("-", "_")
    flat_rec = await wait_for(lambda: routed(pipeline, flat_id))  # flat fields, as from redis-cli
    assert flat_rec["subject"] == "ATM kept my money" and flat_rec["category"]
    await wait_for(lambda: _pending_zero(r, k.ingest, "enrich"))
    ids = [orjson.loads(f[b"data"])["ticket"]["ticket_id"] for _, f in await r.xrange(k.enriched)]
    assert ids.count("ext-42") == 1  # the duplicate entry was acked, not processed


async def test_stream_door_id_conflict_is_dead_lettered_not_dropped(pipeline, r):
    """The same client id with another body is another ticket, not a retry: before, the stream door acked it as a
    duplicate and it was gone (only a log line). Now it is a dead letter naming the conflict, the first ticket is
    untouched, and the same body again is still a plain duplicate."""
    k = pipeline.k
    ticket = {"id": "ext-77", "subject": "Card declined", "body": "my card was declined at the shop",
              "metadata": {"a": 1, "b": 2}}
    first = await r.xadd(k.ingest, {"data": orjson.dumps(ticket)})
    rec = await wait_for(lambda: routed(pipeline, "ext-77"))
    retry = {"metadata": {"b": 2, "a": 1}, **{x: v for x, v in ticket.items() if x != "metadata"}}  # keys reordered
    await r.xadd(k.ingest, {"data": orjson.dumps(retry)})
    other = await r.xadd(k.ingest, {"data": orjson.dumps({**ticket, "body": "a different problem altogether"})})
    await wait_for(lambda: _pending_zero(r, k.ingest, "enrich"))
    dead = [f for _, f in await r.xrange(k.dead)]
    assert len(dead) == 1, dead  # the retry with the same body is no conflict
    letter = {x.decode(): v.decode() for x, v in dead[0].items()}
    assert letter["entry_id"] == other.decode() and letter["stage"] == "enrich"
    assert "id conflict: ticket id ext-77 was taken by stream entry " + first.decode() in letter["reason"]
    assert orjson.loads(orjson.loads(letter["fields"])["data"])["body"] == "a different problem altogether"
    assert letter["ticket_id"] == "" and letter["ticket_id_unverified"] == "ext-77"
    after = await wait_for(lambda: routed(pipeline, "ext-77"))
    assert after["stream_id"] == first.decode() and after["subject"] == rec["subject"]  # the first is untouched
    assert after["status"] == rec["status"] and after["body"] == ticket["body"]
    assert int(await r.hget(k.stats, "dead_letters")) == 1


async def _pending_zero(r, stream, group):
    info = [g for g in await r.xinfo_groups(stream) if g["name"] in (group, group.encode())][0]
    return info["pending"] == 0 and info["lag"] == 0


async def test_http_idempotency_key_yields_one_ticket(pipeline):
    t = {"id": "dup-1", "subject": "Card stopped working", "body": "my card is declined everywhere"}
    a = await (await pipeline.client.post("/v1/tickets", json=t)).json()
    b_resp = await pipeline.client.post("/v1/tickets", json=t)
    b = await b_resp.json()
    assert b_resp.status == 202 and b["duplicate"] is True and a["duplicate"] is False
    assert a["stream_id"] == b["stream_id"]
    await wait_for(lambda: routed(pipeline, "dup-1"))
    listed = await (await pipeline.client.get("/v1/tickets?limit=100")).json()
    assert [x["ticket_id"] for x in listed["tickets"]].count("dup-1") == 1


async def test_storm_becomes_one_master_incident_with_one_alert(settings, r):
    """12 near-identical tickets within the window: one incident of 12, one alert; an unrelated one stays out."""
    from dataclasses import replace

    from fixtures import InProcessPipeline, free_port

    received: list[dict] = []

    async def hook(request):
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/alert", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    s = replace(settings, alert_url=f"http://127.0.0.1:{port}/alert", incident_k=10)
    storm = [f"Payment app shows error 503 when I try to pay{' !' * (i % 3)} (attempt {i % 4})" for i in range(12)]
    try:
        async with InProcessPipeline(s, r) as p:
            ids = []
            for text in storm:
                resp = await p.client.post("/v1/tickets", json={"subject": "Payments down", "body": text})
                ids.append((await resp.json())["ticket_id"])
            other = await (await p.client.post("/v1/tickets", json={
                "subject": "Change my PIN", "body": "How do I change the PIN of my card?"})).json()
            for tid in ids + [other["ticket_id"]]:
                await wait_for(lambda tid=tid: routed(p, tid))
            incidents = (await (await p.client.get("/v1/incidents")).json())["incidents"]
            assert len(incidents) == 1
            inc = await (await p.client.get(f"/v1/incidents/{incidents[0]['incident_id']}")).json()
            assert inc["size"] == 12 and sorted(inc["members"]) == sorted(ids)
            lone = await (await p.client.get(f"/v1/tickets/{other['ticket_id']}")).json()
            assert lone["group"] == other["ticket_id"] and lone["incident"] is False
            recs = [await (await p.client.get(f"/v1/tickets/{t}")).json() for t in ids]
            rules = ("centroid", "centroid_category", "centroid_storm_prior", "tau", "tau_category")
            assert all(x["dedup"]["joined"] and x["dedup"]["rule"] in rules for x in recs[1:])
            assert [x["incident"] for x in recs] == [False] * 9 + [True] * 3
            # children after the master was assigned attach to its assignee, taking no extra slot
            assert {x["status"] for x in recs[10:]} == {"attached"} and recs[10]["assignee"] == recs[9]["assignee"]
            await wait_for(lambda: _pending_zero(r, p.k.alerts, "alerts"))
            assert len(received) == 1 and received[0]["type"] == "incident.opened"
            assert await r.xlen(p.k.alerts) == 1
    finally:
        await runner.cleanup()


async def test_resolve_frees_capacity_and_hands_out_next_queued(pipeline, r):
    from routing_engine.infra.agents import put_agent

    k = pipeline.k
    # one cards agent with one slot; everyone else off cards
    for a in ("ana", "gus"):
        await put_agent(r, k, {"id": a, "name": a, "capacity": 1 if a == "ana" else 0,
                               "skills": {"cards": 1.0}, "active": True})
    ids = []
    for i in range(3):
        resp = await pipeline.client.post("/v1/tickets", json={
            "id": f"card-{i}", "subject": "Card not arrived",
            "body": f"my new card has not arrived after {i + 5} days"})
        ids.append((await resp.json())["ticket_id"])
    recs = [await wait_for(lambda t=t: routed(pipeline, t)) for t in ids]
    assigned = [x for x in recs if x["status"] == "assigned"]
    queued = [x for x in recs if x["status"] == "queued"]
    assert len(assigned) == 1 and len(queued) == 2 and assigned[0]["assignee"] == "ana"
    resp = await pipeline.client.post(f"/v1/tickets/{assigned[0]['ticket_id']}/resolve")
    body = await resp.json()
    assert resp.status == 200 and body["next_ticket"] in {q["ticket_id"] for q in queued}
    nxt = await (await pipeline.client.get(f"/v1/tickets/{body['next_ticket']}")).json()
    assert nxt["status"] == "assigned" and nxt["assignee"] == "ana"
    agents = {a["id"]: a for a in (await (await pipeline.client.get("/v1/agents")).json())["agents"]}
    assert agents["ana"]["load"] == 1
    again = await (await pipeline.client.post(f"/v1/tickets/{assigned[0]['ticket_id']}/resolve")).json()
    assert again["already_resolved"] is True
    assert (await pipeline.client.post("/v1/tickets/nope/resolve")).status == 404


async def test_urgent_text_takes_the_priority_lane_ahead_of_a_backlog(settings, r):
    """A backlog sits in the ingest stream; an urgent ticket posted after it is routed before most of it."""
    from routing_engine.infra.keys import Keys

    from fixtures import InProcessPipeline

    k = Keys(settings.prefix)
    async with r.pipeline(transaction=False) as pipe:
        for i in range(300):
            pipe.xadd(k.ingest, {"data": orjson.dumps({"id": f"bg-{i}", "body": f"how do I top up my account {i}"})})
        await pipe.execute()
    async with InProcessPipeline(settings, r, stages=("enrich", "dedup", "route")) as p:
        resp = await p.client.post("/v1/tickets", json={
            "id": "hot", "subject": "URGENT", "body": "My card was stolen and someone is spending money right now!!"})
        assert resp.status == 202
        assert await r.xlen(k.ingest_urgent) == 1
        rec = await wait_for(lambda: routed(p, "hot"))
        done_before = await r.xlen(k.routed)
        assert done_before < 300, "the urgent ticket should not wait behind the whole backlog"
        assert rec["stream_id"] == (await resp.json())["stream_id"]
        await wait_for(lambda: _count(r, k.routed, 301), timeout=120)  # the backlog still drains


async def _count(r, stream, n):
    return await r.xlen(stream) >= n


async def test_several_enrich_runners_in_one_process_share_the_stream(settings, r):
    """ROUTING_ENRICH_RUNNERS=2: a second enrich read loop, a consumer of its own, set up and reading beside the first
    (cores split between their embedders: one thread each on 2 cores); every ticket still routed once."""
    s = replace(settings, enrich_runners=2)
    assert embed_threads(s) == max(1, cores() // 2) and embed_threads(replace(s, embed_threads=3)) == 3
    assert embed_threads(settings) == settings.embed_threads  # one runner: as configured (0 = every core)
    async with InProcessPipeline(s, r) as pipe:
        k = pipe.k
        for consumer in ("test-worker", "test-worker-e2"):
            await wait_for(lambda c=consumer: _ready(REGISTRY, "enrich", c))
        names = {c["name"] for c in await r.xinfo_consumers(k.ingest, "enrich")}
        assert names == {b"test-worker", b"test-worker-e2"}
        ids = [f"er-{i}" for i in range(24)]
        for tid in ids:
            await r.xadd(k.ingest, {"data": orjson.dumps({"id": tid, "subject": "Card not working",
                                                           "body": f"my card {tid} was declined at the shop"})})
        for tid in ids:
            await wait_for(lambda t=tid: routed(pipe, t))
        await wait_for(lambda: _pending_zero(r, k.ingest, "enrich"))
        enriched = [orjson.loads(f[b"data"])["ticket"]["ticket_id"] for _, f in await r.xrange(k.enriched)]
        assert sorted(enriched) == sorted(ids)  # each once


async def _ready(registry, stage: str, consumer: str) -> bool:
    return registry.get_sample_value("routing_stage_ready", {"stage": stage, "consumer": consumer}) == 1.0
