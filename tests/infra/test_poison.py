"""A stage never dies of one entry: an entry whose decode, process or commit fails is retried with its deliveries
counted, then dead-lettered with the reason; the rest of its batch is committed once, the stage and the stages beside
it keep running. Custom stages driven by run_stages against the real Redis."""

from __future__ import annotations

import asyncio
import collections

import orjson
import pytest

from routing_engine.infra.keys import Keys
from routing_engine.infra.runtime import Outcome, Stage, run_stages
from routing_engine.infra.scripts import Write

from fixtures import wait_for

MAX = 3


@pytest.fixture
def settings(redis_url, prefix):
    """No model needed: these stages are plain code. Short claim times so a retry comes within a second or two."""
    from routing_engine.config import Settings

    return Settings(redis_url=redis_url, prefix=prefix, block_ms=100, claim_idle_ms=800, claim_every_ms=200,
                    batch_size=32, max_deliveries=MAX)


class Poisonable(Stage):
    """Reads {prefix}:deduped. Each entry names a ticket `t` and how it commits (`how`):
    script: commit.lua into {prefix}:routed (acks itself) | cmd: INCR {prefix}:n:<t> (the runtime acks it);
    raise: process() blows up on any batch holding it | garbled: decode() blows up | after: after_commit blows up."""

    name = "route"

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        self.seen: collections.Counter = collections.Counter()  # process() calls that held the ticket
        self.committed: collections.Counter = collections.Counter()  # after_commit calls for it

    async def setup(self, ctx):
        self.scripts = ctx.scripts

    def decode(self, entry):
        v = {k.decode(): v.decode() for k, v in entry.fields.items()}
        if v["how"] == "garbled":
            raise ValueError(f"cannot read {v['t']}")
        return v

    async def process(self, entries):
        for e in entries:
            self.seen[e.value["t"]] += 1
        for e in entries:
            if e.value["how"] == "raise":
                raise RuntimeError(f"model blew up on {e.value['t']}")
        return [Outcome(e, writes=[self._write(e.value)], info={"t": e.value["t"], "how": e.value["how"]})
                for e in entries]

    def _write(self, v):
        if v["how"] == "cmd":
            return Write.cmd("INCR", f"{self.keys.base}:n:{v['t']}")
        return self.scripts.commit(stage="test", status="grouped", ticket_id=v["t"], output_stream=self.keys.routed,
                                   data=orjson.dumps({"t": v["t"]}))

    async def after_commit(self, outcomes, results):
        for o in outcomes:
            self.committed[o.info["t"]] += 1
        if any(o.info["how"] == "after" for o in outcomes):
            raise RuntimeError("after_commit blew up")


class Counter(Stage):
    """Another stage in the same process (reads {prefix}:enriched): counts each entry once, with INCR."""

    name = "dedup"

    async def process(self, entries):
        return [Outcome(e, writes=[Write.cmd("INCR", f"{self.keys.base}:echo:{e.fields[b't'].decode()}")])
                for e in entries]


async def _add(r, stream, t, how="script"):
    return (await r.xadd(stream, {"t": t, "how": how})).decode()


async def _dead(r, k) -> dict[str, str]:
    out = {}
    for _, f in await r.xrange(k.dead):
        fields = orjson.loads(f[b"fields"])
        out[fields["t"]] = f[b"reason"].decode()
    return out


async def _routed(r, k) -> list[str]:
    return [f[b"ticket_id"].decode() for _, f in await r.xrange(k.routed)]


async def _int(r, key) -> int:
    return int(await r.get(key) or 0)


class Running:
    """run_stages as a task for the block; on exit it must still be running (no stage died), then stops cleanly."""

    def __init__(self, r, stages, consumer="w1"):
        self.r, self.stages, self.consumer = r, stages, consumer

    async def __aenter__(self):
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(run_stages(self.r, self.stages, self.consumer, self.stop))
        return self

    async def __aexit__(self, *exc):
        alive = not self.task.done()
        self.stop.set()
        await asyncio.wait_for(self.task, 15)
        if exc[0] is None:
            assert alive, "run_stages ended before it was told to stop"


async def test_a_commit_that_fails_for_one_entry_dead_letters_it_and_commits_the_rest_once(settings, r):
    k = Keys(settings.prefix)
    stage = Poisonable(settings, k)
    # poison: the record commit.lua writes is a string, the counter INCR writes is a list (WRONGTYPE, every time)
    await r.set(k.ticket("bad-script"), "not a hash")
    await r.lpush(f"{k.base}:n:bad-cmd", "not a counter")
    for t, how in (("ok-a", "script"), ("bad-script", "script"), ("ok-b", "cmd"), ("bad-cmd", "cmd"),
                   ("ok-c", "script")):
        await _add(r, k.deduped, t, how)  # all waiting before the stage starts: one batch
    async with Running(r, [stage]):
        dead = await wait_for(lambda: _dead_when(r, k, 2), timeout=30)
        for t in ("bad-script", "bad-cmd"):
            assert dead[t].startswith(f"failed {MAX} times: ") and "WRONGTYPE" in dead[t], dead
            assert stage.seen[t] == MAX  # delivered MAX times, then no more
        # the rest of the batch was committed exactly once, with the first delivery
        assert await _routed(r, k) == ["ok-a", "ok-c"]
        assert await _int(r, f"{k.base}:n:ok-b") == 1
        assert {t: stage.committed[t] for t in ("ok-a", "ok-b", "ok-c")} == {"ok-a": 1, "ok-b": 1, "ok-c": 1}
        assert not stage.committed["bad-script"] and not stage.committed["bad-cmd"]
        # the stage is still serving: a normal entry after the poison goes through within seconds
        await _add(r, k.deduped, "ok-late")
        await wait_for(lambda: _has(_routed(r, k), "ok-late"), timeout=5)
        await wait_for(lambda: _settled(r, k.deduped, "route"), timeout=5)
    assert await _routed(r, k) == ["ok-a", "ok-c", "ok-late"]
    assert int(await r.hget(k.stats, "processed:route")) == 4  # failed commits are not counted as processed
    assert await r.hlen(k.fails("route")) == 0
    assert await r.get(k.ticket("bad-script")) == b"not a hash"  # nothing written over the poison


async def test_an_entry_that_breaks_decode_or_process_is_isolated_and_other_stages_keep_working(settings, r):
    k = Keys(settings.prefix)
    stage, other = Poisonable(settings, k), Counter(settings, k)
    for t, how in (("ok-1", "script"), ("boom", "raise"), ("garbled", "garbled"), ("ok-2", "cmd"),
                   ("after", "after")):
        await _add(r, k.deduped, t, how)
    async with Running(r, [stage, other]):
        n = 0

        async def feed_other():
            nonlocal n
            while True:
                await r.xadd(k.enriched, {"t": f"e{n}"})
                n += 1
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(feed_other())
        try:
            dead = await wait_for(lambda: _dead_when(r, k, 2), timeout=30)
            before = n
            # the other stage kept going all along, and still does
            await wait_for(lambda: _int(r, f"{k.base}:echo:e{before + 5}"), timeout=5)
        finally:
            feeder.cancel()
        assert dead["boom"].startswith(f"failed {MAX} times: RuntimeError: model blew up on boom"), dead
        assert dead["garbled"].startswith(f"failed {MAX} times: ValueError: cannot read garbled"), dead
        assert stage.seen["boom"] >= MAX and not stage.seen["garbled"]
        await _add(r, k.deduped, "ok-late")
        await wait_for(lambda: _has(_routed(r, k), "ok-late"), timeout=5)
        await wait_for(lambda: _settled(r, k.enriched, "dedup"), timeout=5)
    assert await _routed(r, k) == ["ok-1", "after", "ok-late"]
    assert await _int(r, f"{k.base}:n:ok-2") == 1
    # an after_commit error does not undo or repeat a commit
    assert stage.committed["after"] == 1 and "after" not in dead
    for i in range(n):
        assert await _int(r, f"{k.base}:echo:e{i}") == 1
    assert await r.hlen(k.fails("route")) == 0


async def test_a_restarted_consumer_honours_the_deliveries_of_its_own_pending_entries(settings, r):
    """Entries still pending for this consumer name (its earlier runs died holding them) are read back with their
    delivery count: one delivered max_deliveries times is dead-lettered, not run again."""
    k = Keys(settings.prefix)
    await r.xgroup_create(k.deduped, "route", id="0", mkstream=True)
    await r.set(k.ticket("killer"), "not a hash")
    killer = await _add(r, k.deduped, "killer")
    await r.xreadgroup("route", "w1", {k.deduped: ">"}, count=1)  # a first run took it and died
    for _ in range(MAX - 1):  # each restart under the same name read it back, and died again
        await r.xreadgroup("route", "w1", {k.deduped: "0"}, count=1)
    innocent = await _add(r, k.deduped, "innocent")
    await r.xreadgroup("route", "w1", {k.deduped: ">"}, count=1)  # the last run died holding this one too
    pend = {p["message_id"].decode(): p["times_delivered"]
            for p in await r.xpending_range(k.deduped, "route", "-", "+", 10)}
    assert pend == {killer: MAX, innocent: 1}
    stage = Poisonable(settings, k)
    async with Running(r, [stage], consumer="w1"):
        dead = await wait_for(lambda: _dead_when(r, k, 1), timeout=10)
        await wait_for(lambda: _has(_routed(r, k), "innocent"), timeout=5)
        await wait_for(lambda: _settled(r, k.deduped, "route"), timeout=5)
    assert dead == {"killer": f"delivered {MAX} times without success"}
    assert stage.seen["killer"] == 0 and stage.seen["innocent"] == 1
    assert await _routed(r, k) == ["innocent"]


async def test_a_lost_consumer_group_is_recreated_and_the_stage_goes_on(settings, r):
    k = Keys(settings.prefix)
    stage = Poisonable(settings, k)
    async with Running(r, [stage]):
        for t in ("a", "b"):
            await _add(r, k.deduped, t)
        await wait_for(lambda: _has(_routed(r, k), "b"), timeout=5)
        await asyncio.sleep(0.3)  # the stage is blocked in XREADGROUP again
        assert await r.xgroup_destroy(k.deduped, "route") == 1  # as after a Redis restart without persistence
        await asyncio.sleep(0.5)
        for t in ("c", "d"):
            await _add(r, k.deduped, t)
        await wait_for(lambda: _has(_routed(r, k), "d"), timeout=5)
        await wait_for(lambda: _settled(r, k.deduped, "route"), timeout=5)
    # the recreated group starts from the stream's beginning: a and b came back and were only acked (done before)
    assert await _routed(r, k) == ["a", "b", "c", "d"]
    assert [g["name"] for g in await r.xinfo_groups(k.deduped)] == [b"route"]


async def _dead_when(r, k, n):
    dead = await _dead(r, k)
    return dead if len(dead) >= n else None


async def _has(coro, item) -> bool:
    return item in await coro


async def _settled(r, stream, group) -> bool:
    info = next(g for g in await r.xinfo_groups(stream) if g["name"].decode() == group)
    return info["pending"] == 0 and info["lag"] == 0
