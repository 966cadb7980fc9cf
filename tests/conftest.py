"""Pytest fixtures: the real Redis (a key prefix per test), the real MiniLM, a tiny real model, settings, the
pipeline in this process. Helpers live in the fixtures module (tests import them from there)."""

from __future__ import annotations

import uuid

import pytest
import redis
import redis.asyncio as aioredis

from fixtures import FIXTURE, REDIS_URL, InProcessPipeline


def _redis_up() -> bool:
    try:
        return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="session")
def redis_url():
    if not _redis_up():
        pytest.fail(f"no Redis at {REDIS_URL}: start one (redis-server) or set TEST_REDIS_URL")
    return REDIS_URL


@pytest.fixture
def prefix(redis_url):
    """A fresh key prefix per test; its keys are deleted afterwards."""
    p = "test-" + uuid.uuid4().hex[:10]
    yield p
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match="{" + p + "}*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i:i + 500])


@pytest.fixture(scope="session")
def embedder():
    from routing_engine.models.embedder import shared_embedder

    return shared_embedder()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, embedder):
    """A real LightGBM model trained on the hand-written fixture (seconds)."""
    from routing_engine.models.data import read_labelled
    from routing_engine.models.training import train

    d = tmp_path_factory.mktemp("models")
    texts, labels = read_labelled(FIXTURE)
    train(texts, labels, embedder, progress=False, holdout=0).save(d)
    return d


@pytest.fixture
def settings(redis_url, prefix, models_dir, tmp_path):
    from routing_engine.config import Settings

    return Settings(redis_url=redis_url, prefix=prefix, models_dir=str(models_dir), state_dir=str(tmp_path),
                    block_ms=100, claim_idle_ms=1500, claim_every_ms=500, batch_size=32)


@pytest.fixture
async def r(redis_url):
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def pipeline(settings, r):
    async with InProcessPipeline(settings, r) as p:
        yield p
