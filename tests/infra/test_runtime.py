"""The runtime owns commits: it adds each entry's stream, group and id to the write that acks it, XACKs the
others itself, and pairs the transaction's replies with outcomes however many writes each one queued."""

from __future__ import annotations

import asyncio

from routing_engine.infra.keys import Keys
from routing_engine.infra.runtime import Outcome, Stage, run_stages
from routing_engine.infra.scripts import Write

from fixtures import wait_for


class Counting(Stage):
    """Entry i queues i INCRs on its own counter (0, 1, 2, ... writes); entry 'c' commits through commit.lua."""

    name = "route"  # any stage of the topology: it reads {prefix}:deduped

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        self.replies: dict[str, list] = {}

    async def setup(self, ctx):
        self.scripts = ctx.scripts

    def decode(self, entry):
        return {k.decode(): v.decode() for k, v in entry.fields.items()}

    async def process(self, entries):
        out = []
        for e in entries:
            n = e.value["n"]
            if n == "c":
                writes = [self.scripts.commit(stage="test", status="grouped", ticket_id=e.value["t"],
                                              output_stream=self.keys.routed, data=b'{"x": 1}')]
            else:
                writes = [Write.cmd("INCRBY", f"{self.keys.base}:count:{e.id}:{j}", 10 + j) for j in range(int(n))]
            out.append(Outcome(e, writes=writes, info={"n": n}))
        return out

    async def after_commit(self, outcomes, results):
        for o, res in zip(outcomes, results):
            self.replies[o.info["n"]] = res


async def test_replies_pair_with_outcomes_and_every_entry_is_acked(settings, r):
    k = Keys(settings.prefix)
    stage = Counting(settings, k)
    for n in ("2", "0", "c", "3", "1"):
        await r.xadd(k.deduped, {"n": n, "t": f"t-{n}"})
    stop = asyncio.Event()
    task = asyncio.create_task(run_stages(r, [stage], "w1", stop))
    try:
        await wait_for(lambda: _ready(stage))
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert stage.replies["0"] == []
    assert stage.replies["1"] == [10]
    assert stage.replies["2"] == [10, 11]
    assert stage.replies["3"] == [10, 11, 12]
    assert stage.replies["c"] == [1]  # commit.lua: committed now
    info = (await r.xinfo_groups(k.deduped))[0]
    assert info["pending"] == 0 and info["lag"] == 0  # acked by commit.lua or by the runtime, none twice
    assert await r.xlen(k.routed) == 1
    assert int(await r.hget(k.stats, "processed:route")) == 5


async def _ready(stage):
    return len(stage.replies) == 5
