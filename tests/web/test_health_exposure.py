"""What /healthz and /metrics tell whom: anonymous callers learn only whether the service and Redis are up; stream,
consumer and lag detail and the metrics need a read token once any token is configured."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fixtures import InProcessPipeline


@pytest.fixture
async def guarded(settings, r):
    async with InProcessPipeline(replace(settings, read_token="rd-tok", ingest_token="in-tok"), r, stages=[]) as p:
        yield p


async def test_anonymous_health_is_status_and_redis_only(guarded):
    resp = await guarded.client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok", "redis": True}


async def test_health_detail_needs_a_read_token(guarded):
    resp = await guarded.client.get("/healthz", headers={"Authorization": "Bearer rd-tok"})
    body = await resp.json()
    assert resp.status == 200 and {"streams", "lag"} <= set(body)
    resp = await guarded.client.get("/healthz", headers={"Authorization": "Bearer in-tok"})
    assert set(await resp.json()) == {"status", "redis"}  # an ingest token sees no more than anyone


async def test_metrics_need_a_read_token(guarded):
    assert (await guarded.client.get("/metrics")).status == 401
    resp = await guarded.client.get("/metrics", headers={"Authorization": "Bearer rd-tok"})
    assert resp.status == 200 and "# TYPE" in await resp.text()


async def test_open_mode_keeps_the_detail(api):
    """No token configured (loopback only): health detail and metrics stay open, as `up` on a laptop shows them."""
    assert "streams" in await (await api.client.get("/healthz")).json()
    assert (await api.client.get("/metrics")).status == 200
