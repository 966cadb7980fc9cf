"""`up` and `worker` supervise their stages (service.supervise): a stage whose task dies is rebuilt and restarted with
a backoff, logged as stage.restarted with the count, while the other stages go on; stop still ends them all."""

from __future__ import annotations

import asyncio
import time

import pytest
import structlog

from routing_engine import service
from routing_engine.infra.keys import Keys
from routing_engine.infra.runtime import Outcome, Stage
from routing_engine.infra.scripts import Write

from fixtures import wait_for


@pytest.fixture
def settings(redis_url, prefix):
    from routing_engine.config import Settings

    return Settings(redis_url=redis_url, prefix=prefix, block_ms=100)


class Counting(Stage):
    """INCRs {prefix}:<stage>:<t> once per entry."""

    async def process(self, entries):
        return [Outcome(e, writes=[Write.cmd("INCR", f"{self.keys.base}:{self.name}:{e.fields[b't'].decode()}")])
                for e in entries]


class Flaky(Counting):
    """Reads {prefix}:deduped; its setup fails the first `failures` times it is built (a model not there yet...)."""

    name = "route"
    failures = 2
    built = 0

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        Flaky.built += 1
        self.nth = Flaky.built

    async def setup(self, ctx):
        if self.nth <= Flaky.failures:
            raise RuntimeError(f"setup failed (build {self.nth})")


class Steady(Counting):
    name = "dedup"  # reads {prefix}:enriched


async def test_a_stage_that_dies_is_restarted_with_backoff_and_the_others_go_on(settings, r):
    k = Keys(settings.prefix)
    Flaky.built = 0
    rebuilt: list[str] = []

    def rebuild(name):
        rebuilt.append(name)
        return Flaky(settings, k)

    await r.xadd(k.deduped, {"t": "waiting"})  # there before the flaky stage ever starts
    await r.xadd(k.enriched, {"t": "s0"})
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        t0 = time.monotonic()
        task = asyncio.create_task(service.supervise(r, [Flaky(settings, k), Steady(settings, k)], "w1", stop,
                                                     rebuild=rebuild))
        try:
            # the steady stage works while the flaky one is down
            await wait_for(lambda: r.get(f"{k.base}:dedup:s0"), timeout=5)
            assert not await r.get(f"{k.base}:route:waiting")
            # two deaths, restarted after 1 s then 2 s: the third build runs
            await wait_for(lambda: r.get(f"{k.base}:route:waiting"), timeout=15)
            took = time.monotonic() - t0
            await r.xadd(k.deduped, {"t": "later"})
            await r.xadd(k.enriched, {"t": "s1"})
            await wait_for(lambda: r.get(f"{k.base}:route:later"), timeout=5)
            await wait_for(lambda: r.get(f"{k.base}:dedup:s1"), timeout=5)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert rebuilt == ["route", "route"]
    assert 3.0 <= took < 10, took  # backoff: 1 s + 2 s
    restarted = [e for e in logs if e["event"] == "stage.restarted"]
    assert [(e["stage"], e["count"]) for e in restarted] == [("route", 1), ("route", 2)]
    died = [e for e in logs if e["event"] == "stage.died"]
    assert [e["restart_in_s"] for e in died] == [1.0, 2.0]
    assert all("setup failed" in e["error"] for e in died)
    assert [int(await r.get(f"{k.base}:{key}")) for key in ("route:waiting", "route:later", "dedup:s0", "dedup:s1")] \
        == [1, 1, 1, 1]


async def test_stop_ends_a_stage_waiting_to_be_restarted(settings, r):
    k = Keys(settings.prefix)
    Flaky.built = 0
    stop = asyncio.Event()
    task = asyncio.create_task(service.supervise(r, [Flaky(settings, k)], "w1", stop,
                                                 rebuild=lambda name: Flaky(settings, k)))
    await asyncio.sleep(0.3)  # died once, waiting 1 s to restart
    stop.set()
    t0 = time.monotonic()
    await asyncio.wait_for(task, 5)
    assert time.monotonic() - t0 < 0.5
    assert Flaky.built == 1
