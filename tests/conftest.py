"""Shared fixtures: the real Redis (per-test key prefix), a tiny real model, workers in-process or as processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tickets.csv"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# Phrasings written for the model tests only; none appear in the fixture.
UNSEEN = {
    "Three weeks on and the card you mailed me still hasn't turned up": "card_arrival",
    "Somebody pinched my card out of my coat at the gym": "lost_or_stolen_card",
    "What rate do I get when swapping pounds for US dollars?": "exchange_rate",
}


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
    from routing_engine.embedder import shared_embedder

    return shared_embedder()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, embedder):
    """A real LightGBM model trained on the hand-written fixture (seconds)."""
    from routing_engine.classifier import read_labelled, train

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


class InProcessPipeline:
    """The API (aiohttp test server) and every stage, in this process: fast to start, same code paths."""

    def __init__(self, settings, r, stages=("enrich", "fallback", "dedup", "route", "alerts")):
        self.s, self.r, self.stages = settings, r, list(stages)

    async def __aenter__(self):
        from aiohttp.test_utils import TestClient, TestServer

        from routing_engine.agents import load_agents_file
        from routing_engine.api import make_app
        from routing_engine.cli import build_stages
        from routing_engine.keys import Keys
        from routing_engine.runtime import run_stages

        self.k = Keys(self.s.prefix)
        await load_agents_file(self.r, self.k)
        self.client = TestClient(TestServer(make_app(self.s, self.r)))
        await self.client.start_server()
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(
            run_stages(self.r, build_stages(self.stages, self.s), "test-worker", self.stop))
        return self

    async def __aexit__(self, *exc):
        self.stop.set()
        await asyncio.wait_for(self.task, 30)
        await self.client.close()


@pytest.fixture
async def pipeline(settings, r):
    async with InProcessPipeline(settings, r) as p:
        yield p


async def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):
    """Poll an async predicate until it returns a truthy value; fail with the last value on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(settings, **extra) -> dict:
    env = dict(os.environ)
    env.update({
        "REDIS_URL": settings.redis_url or "", "ROUTING_PREFIX": settings.prefix,
        "ROUTING_MODELS_DIR": settings.models_dir, "ROUTING_BLOCK_MS": str(settings.block_ms),
        "ROUTING_CLAIM_IDLE_MS": str(settings.claim_idle_ms), "ROUTING_CLAIM_EVERY_MS": str(settings.claim_every_ms),
        "ROUTING_BATCH_SIZE": str(settings.batch_size), "ROUTING_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Worker:
    """`routing-engine worker` as a real OS process."""

    def __init__(self, settings, name: str, log_dir: Path, stages: str = "enrich,dedup,route", **env):
        self.name = name
        self.log = open(log_dir / f"worker-{name}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "routing_engine.cli", "worker", "--stages", stages, "--name", name],
            env=cli_env(settings, **env), stdout=self.log, stderr=subprocess.STDOUT,
        )

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")
