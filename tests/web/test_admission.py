"""Admission control at the webhook: 429 with Retry-After and the figures while the ingest backlog is over the
limit, /healthz "overloaded", and a Retry-After on every 503 (real Redis, real app)."""

from __future__ import annotations

import dataclasses

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from routing_engine.infra.backlog import ingest_backlog
from routing_engine.infra.keys import Keys

from fixtures import InProcessPipeline, wait_for

TICKET = {"id": "T-adm-1", "subject": "card", "body": "my card has not arrived"}


@pytest.fixture
async def small_api(settings, r):
    async with InProcessPipeline(dataclasses.replace(settings, max_ingest_lag=5), r, stages=[]) as p:
        yield p


async def _backlog_over_limit(p, r, n=10):
    for i in range(n):
        await r.xadd(p.k.ingest, {"data": b"{}", "ticket_id": f"x{i}"})

    async def refused():
        resp = await p.client.post("/v1/tickets", json={**TICKET, "id": "T-probe"})
        return resp if resp.status == 429 else None

    return await wait_for(refused, timeout=5)


async def test_ingest_over_the_limit_is_429_with_retry_after_and_figures(small_api, r):
    assert (await small_api.client.post("/v1/tickets", json={**TICKET, "id": "T-adm-0"})).status == 202
    resp = await _backlog_over_limit(small_api, r)
    wait = int(resp.headers["Retry-After"])
    err = (await resp.json())["error"]
    assert err["code"] == "overloaded"
    assert err["lag"] >= 10 and err["limit"] == 5 and err["retry_after_s"] == wait >= 1
    # nothing is written for a refused ticket
    assert (await small_api.client.post("/v1/tickets", json=TICKET)).status == 429
    assert await r.exists(small_api.k.ticket(TICKET["id"])) == 0
    batch = await small_api.client.post("/v1/tickets/batch", json=[TICKET])
    assert batch.status == 429 and "Retry-After" in batch.headers


async def test_healthz_says_overloaded(small_api, r):
    await _backlog_over_limit(small_api, r)
    resp = await small_api.client.get("/healthz")
    body = await resp.json()
    assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    assert body["status"] == "overloaded" and body["retry_after_s"] >= 1


async def test_backlog_counts_unread_and_pending_of_the_enrich_group(r, prefix):
    k = Keys(prefix)
    for _ in range(10):
        await r.xadd(k.ingest, {"data": b"{}"})
    assert await ingest_backlog(r, k) == 10  # no group yet: the whole stream
    await r.xgroup_create(k.ingest, "enrich", id="0")
    read = await r.xreadgroup("enrich", "c", {k.ingest: ">"}, count=6)
    assert await ingest_backlog(r, k) == 10  # 4 unread + 6 pending
    await r.xack(k.ingest, "enrich", *[eid for eid, _ in read[0][1]])
    await r.xadd(k.ingest_urgent, {"data": b"{}"})
    assert await ingest_backlog(r, k) == 5  # 4 unread + 1 on the urgent lane


async def test_redis_unavailable_is_503_with_retry_after(settings, tmp_path):
    from routing_engine.infra.embedded_redis import EmbeddedRedis
    from routing_engine.web.app import make_app

    server = EmbeddedRedis(tmp_path)
    own = aioredis.from_url(server.start())
    client = TestClient(TestServer(make_app(settings, own)))
    await client.start_server()
    try:
        server.stop()  # Redis goes away under a running app
        resp = await client.post("/v1/tickets", json=TICKET)
        assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
    finally:
        await client.close()
        await own.aclose()
        server.stop()
