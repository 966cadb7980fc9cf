"""A worker killed by an entry, restarted under the same consumer name, reads that entry back from its own pending
list: its deliveries are counted there too, so after max_deliveries it is dead-lettered instead of killing every
restart forever, and the innocent entries of its batch are committed (an entry redelivered twice runs alone).
Real OS processes against the real Redis."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import orjson

from routing_engine.infra.keys import Keys

from fixtures import wait_for

MAX = 3
KILLED = 3  # the exit status of a run the killer entry took down

# A consumer "w1" running one stage that dies hard on the entry 'killer' (as on a segfault or the OOM killer:
# nothing is caught, nothing counted). Reclaiming is pushed out of the way: only the restarts read entries back.
CONSUMER = f"""
import asyncio, os, signal, sys

import redis.asyncio as aioredis

from routing_engine.config import Settings
from routing_engine.infra.keys import Keys
from routing_engine.infra.runtime import Outcome, Stage, run_stages


class Fragile(Stage):
    name = "route"

    async def setup(self, ctx):
        self.scripts = ctx.scripts

    async def process(self, entries):
        if any(e.fields[b"t"] == b"killer" for e in entries):
            os._exit({KILLED})
        return [Outcome(e, writes=[self.scripts.commit(stage="test", status="grouped", ticket_id=t,
                                                       output_stream=self.keys.routed, data=b"{{}}")])
                for e in entries for t in [e.fields[b"t"].decode()]]


async def main():
    s = Settings(redis_url=sys.argv[1], prefix=sys.argv[2], block_ms=100, claim_idle_ms=600_000,
                 claim_every_ms=600_000, max_deliveries={MAX})
    r = aioredis.from_url(s.redis_url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await run_stages(r, [Fragile(s, Keys(s.prefix))], "w1", stop)
    await r.aclose()


asyncio.run(main())
"""


async def _routed(r, k) -> list[str]:
    return [f[b"ticket_id"].decode() for _, f in await r.xrange(k.routed)]


async def test_a_consumer_restarted_under_its_name_dead_letters_the_entry_that_kills_it(r, prefix, redis_url, tmp_path):
    k = Keys(prefix)
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    await r.xgroup_create(k.deduped, "route", id="0", mkstream=True)
    for t in ("ok-1", "killer", "ok-2"):
        await r.xadd(k.deduped, {"t": t})  # one batch: the killer takes the others down with it at first

    def start():
        return subprocess.Popen([sys.executable, str(script), redis_url, prefix], stdout=out, stderr=subprocess.STDOUT)

    out = open(tmp_path / "consumer.log", "wb")
    crashes = 0
    proc = start()
    try:
        for _ in range(MAX + 2):  # an endless crash loop would show as more than MAX crashes
            async def died_or_done(p=proc):
                return p.poll() is not None or await r.xlen(k.dead) > 0

            await wait_for(died_or_done, timeout=60, interval=0.05)
            if proc.poll() is None:
                break
            assert proc.returncode == KILLED, (tmp_path / "consumer.log").read_text()
            crashes += 1
            proc = start()  # restarted under the same name
        assert crashes == MAX
        dead = [(orjson.loads(f[b"fields"])["t"], f[b"reason"].decode()) for _, f in await r.xrange(k.dead)]
        assert dead == [("killer", f"delivered {MAX} times without success")]
        await wait_for(lambda: _has(r, k, "ok-2"), timeout=10)
        # still up: a new entry goes through
        await r.xadd(k.deduped, {"t": "ok-3"})
        await wait_for(lambda: _has(r, k, "ok-3"), timeout=10)
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        rc = await asyncio.to_thread(proc.wait, 30)
        out.close()
    assert rc == 0 and time.monotonic() - t0 < 10
    assert await _routed(r, k) == ["ok-1", "ok-2", "ok-3"]  # each innocent entry committed once
    info = (await r.xinfo_groups(k.deduped))[0]
    assert info["pending"] == 0 and info["lag"] == 0


async def _has(r, k, t) -> bool:
    return t in await _routed(r, k)
