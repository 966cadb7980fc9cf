"""ROUTING_ACK_AFTER_FSYNC: 202 only once WAITAOF says the ticket is in the AOF on disk (an embedded server with
AOF on); a Redis that cannot answer WAITAOF (the shared test Redis runs without AOF) refuses the option at start."""

from __future__ import annotations

import dataclasses

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from routing_engine.infra.embedded_redis import EmbeddedRedis
from routing_engine.web.app import make_app
from routing_engine.web.durability import FsyncUnsupported

TICKET = {"id": "T-fsync", "subject": "card", "body": "my card has not arrived"}


async def test_ticket_acked_after_fsync(settings, tmp_path):
    server = EmbeddedRedis(tmp_path)
    r = aioredis.from_url(server.start())
    client = TestClient(TestServer(make_app(dataclasses.replace(settings, ack_after_fsync=True), r)))
    await client.start_server()
    try:
        resp = await client.post("/v1/tickets", json=TICKET)
        assert resp.status == 202
        batch = await client.post("/v1/tickets/batch", json=[{**TICKET, "id": "T-fsync-2"}])
        assert batch.status == 202
        info = await r.info("persistence")
        assert info["aof_enabled"] == 1 and await r.exists("{" + settings.prefix + "}:t:T-fsync-2") == 1
    finally:
        await client.close()
        await r.aclose()
        server.stop()


async def test_option_refused_where_waitaof_cannot_work(settings, r):
    client = TestClient(TestServer(make_app(dataclasses.replace(settings, ack_after_fsync=True), r)))
    with pytest.raises(FsyncUnsupported, match="WAITAOF"):
        await client.start_server()
    await client.close()
