"""The embedded Redis refuses writes at maxmemory (noeviction) instead of evicting accepted tickets, and the
webhook answers that with 503 + Retry-After."""

from __future__ import annotations

import dataclasses

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from redis.exceptions import OutOfMemoryError

from routing_engine.infra.embedded_redis import EmbeddedRedis


async def test_full_embedded_redis_refuses_writes_and_keeps_what_it_has(settings, tmp_path):
    from routing_engine.web.app import make_app

    server = EmbeddedRedis(tmp_path, maxmemory="4mb")
    r = aioredis.from_url(server.start())
    try:
        assert (await r.config_get("maxmemory-policy"))["maxmemory-policy"] == "noeviction"
        with pytest.raises(OutOfMemoryError):
            for i in range(1000):
                await r.set(f"fill:{i}", b"x" * 65536)
        assert await r.exists("fill:0") == 1  # nothing was evicted
        client = TestClient(TestServer(make_app(dataclasses.replace(settings, redis_url=server.url), r)))
        await client.start_server()
        try:
            resp = await client.post("/v1/tickets", json={"id": "T-oom", "subject": "s", "body": "b"})
            assert resp.status == 503 and int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"]["code"] == "unavailable"
        finally:
            await client.close()
    finally:
        await r.aclose()
        server.stop()
