"""The runtime owns commits: it adds each entry's stream, group and id to the write that acks it, XACKs the
others itself, and pairs the transaction's replies with outcomes however many writes each one queued."""

from __future__ import annotations

import asyncio
import os

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


class Overlapping(Stage):
    """Commits overlap the next batch's processing: each batch appends its ids to one list in Redis (RPUSH), and
    process() records how many batches were committed when it started."""

    name = "route"
    overlap_commit = True

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        self.seen_committed: list[int] = []
        self.committed = 0

    async def setup(self, ctx):
        self.r = ctx.r

    async def process(self, entries):
        self.seen_committed.append(self.committed)
        await asyncio.sleep(0.05)  # work off the loop: the previous batch's commit runs meanwhile
        return [Outcome(e, writes=[Write.cmd("RPUSH", f"{self.keys.base}:order", e.id)]) for e in entries]

    async def after_commit(self, outcomes, results):
        await asyncio.sleep(0.1)  # a slow commit: the next batch is read and processed meanwhile
        self.committed += 1


async def test_overlapped_commits_stay_in_order_and_the_last_one_lands_before_stop(settings, r):
    from dataclasses import replace

    k = Keys(settings.prefix)
    stage = Overlapping(replace(settings, batch_size=4), k)
    ids = [await r.xadd(k.deduped, {"n": str(i)}) for i in range(18)]
    stop = asyncio.Event()
    task = asyncio.create_task(run_stages(r, [stage], "w1", stop))
    try:
        await wait_for(lambda: _all_pushed(r, k, len(ids)), timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert [x.decode() for x in await r.lrange(f"{k.base}:order", 0, -1)] == [i.decode() for i in ids]
    info = (await r.xinfo_groups(k.deduped))[0]
    assert info["pending"] == 0 and info["lag"] == 0
    # the 2nd batch was processed while the 1st one's commit was still running (one after the other: [0, 1])
    assert stage.seen_committed[:2] == [0, 0] and stage.committed == len(stage.seen_committed) == 5


async def test_a_short_batch_waits_for_more_up_to_the_deadline(settings, r):
    from dataclasses import replace

    k = Keys(settings.prefix)
    stage = Overlapping(replace(settings, batch_size=8), k)
    stage.batch_deadline_ms = 400.0
    sizes = _batch_sizes(stage)
    stop = asyncio.Event()
    task = asyncio.create_task(run_stages(r, [stage], "w1", stop))
    try:
        await wait_for(lambda: _has_consumer(r, k), timeout=10)
        for i in range(3):  # three arrivals 50 ms apart, within one deadline: one batch
            await r.xadd(k.deduped, {"n": str(i)})
            await asyncio.sleep(0.05)
        await wait_for(lambda: _all_pushed(r, k, 3), timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert sizes == [3]


async def test_a_stage_cap_on_the_batch_wins_over_the_batch_size(settings, r):
    """The fallback reads at most 64 a batch (its breaker times each batch) while the others read ROUTING_BATCH_SIZE."""
    from dataclasses import replace

    from routing_engine.stages.fallback import FallbackStage

    assert FallbackStage.max_batch == 64
    k = Keys(settings.prefix)
    stage = Overlapping(replace(settings, batch_size=32), k)
    stage.max_batch = 5
    sizes = _batch_sizes(stage)
    for i in range(12):  # a backlog before the stage starts: full batches from the first read
        await r.xadd(k.deduped, {"n": str(i)})
    stop = asyncio.Event()
    task = asyncio.create_task(run_stages(r, [stage], "w1", stop))
    try:
        await wait_for(lambda: _all_pushed(r, k, 12), timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert sizes == [5, 5, 2]


async def test_a_stage_tick_runs_beside_the_loops_and_survives_its_own_failure(settings, r):
    """dedup's tick says a storm is over when no ticket comes: it must run without entries, and a failing tick
    (Redis away, a bug) must neither stop the stage nor the next tick."""
    k = Keys(settings.prefix)
    stage = Overlapping(settings, k)
    stage.tick_every_s = 0.05
    ticks: list[int] = []

    async def tick():
        ticks.append(len(ticks))
        if len(ticks) == 1:
            raise RuntimeError("first tick fails")

    stage.tick = tick
    stop = asyncio.Event()
    task = asyncio.create_task(run_stages(r, [stage], "w1", stop))
    try:
        await wait_for(lambda: _ticked(ticks, 3), timeout=10)
        await r.xadd(k.deduped, {"n": "0"})
        await wait_for(lambda: _all_pushed(r, k, 1), timeout=10)  # the read loop runs beside it
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert len(ticks) >= 3


async def _ticked(ticks, n):
    return len(ticks) >= n


def _batch_sizes(stage) -> list[int]:
    """The size of every batch the stage's process() gets from now on, in order."""
    sizes: list[int] = []
    process = stage.process

    async def sized(entries):
        sizes.append(len(entries))
        return await process(entries)

    stage.process = sized
    return sizes


async def _all_pushed(r, k, n):
    return await r.llen(f"{k.base}:order") == n


async def _has_consumer(r, k):
    try:
        return bool(await r.xinfo_consumers(k.deduped, "route"))
    except Exception:
        return False


class Blocking(Stage):
    """A main-stream batch waits inside process() until the urgent lane's entry has been processed: the runtime must
    run the lane in a loop of its own (one loop would wait forever, and the test fails on its timeout)."""

    name = "route"  # reads {prefix}:deduped:urgent (its urgent lane) and {prefix}:deduped

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        self.lane_done = asyncio.Event()
        self.batches: list[tuple[str, int]] = []  # (stream, size) in the order process() began them

    async def setup(self, ctx):
        pass

    async def process(self, entries):
        lane = entries[0].stream == self.keys.deduped_urgent
        assert all((e.stream == self.keys.deduped_urgent) == lane for e in entries)  # never a mixed batch
        self.batches.append(("urgent" if lane else "main", len(entries)))
        if lane:
            self.lane_done.set()
        else:
            await asyncio.wait_for(self.lane_done.wait(), 20)
        return [Outcome(e, writes=[Write.cmd("RPUSH", f"{self.keys.base}:order", e.id)]) for e in entries]


async def test_the_urgent_lane_runs_beside_a_main_batch_in_work_in_small_batches(settings, r):
    from routing_engine.infra.runtime import LANE_BATCH

    k = Keys(settings.prefix)
    stage = Blocking(settings, k)
    for i in range(40):  # a backlog on the main stream: its first batch blocks until an urgent entry is done
        await r.xadd(k.deduped, {"n": str(i)})
    stop = asyncio.Event()
    task = asyncio.create_task(run_stages(r, [stage], "w1", stop))
    try:
        await wait_for(lambda: _started(stage), timeout=10)
        urgent = [await r.xadd(k.deduped_urgent, {"n": f"u{i}"}) for i in range(LANE_BATCH + 3)]
        await wait_for(lambda: _all_pushed(r, k, 40 + len(urgent)), timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    order = await r.lrange(f"{k.base}:order", 0, -1)
    assert set(urgent) <= set(order) and len(order) == len(set(order))
    # the main stream's first batch was in work (it cannot end before an urgent batch ran) when the lane's began
    assert stage.batches[0] == ("main", settings.batch_size) and stage.batches[1][0] == "urgent"
    assert max(n for kind, n in stage.batches if kind == "urgent") <= LANE_BATCH
    for stream in (k.deduped, k.deduped_urgent):
        info = (await r.xinfo_groups(stream))[0]
        assert info["pending"] == 0 and info["lag"] == 0
    # one consumer name on both streams, each loop reading its own
    assert [c["name"] for c in await r.xinfo_consumers(k.deduped_urgent, "route")] == [b"w1"]


async def _started(stage):
    return bool(stage.batches)


async def test_a_stage_says_ready_only_once_its_setup_is_done(settings, r):
    """The consumer is registered in Redis before setup (health and the other workers see it at once), so joining
    the group says nothing about readiness: routing_stage_ready is 0 while setup loads models, 1 once the stage
    reads, and 0 again after it stopped. (The flood bench sent tickets before the fallback had loaded: every run
    began with a breaker trip.)"""
    from prometheus_client import REGISTRY

    def ready():
        return REGISTRY.get_sample_value("routing_stage_ready", {"stage": "route", "consumer": "w-ready"})

    k = Keys(settings.prefix)
    stage = Counting(settings, k)
    loaded = asyncio.Event()
    setup = stage.setup

    async def slow_setup(ctx):
        await loaded.wait()  # loading models
        await setup(ctx)

    stage.setup = slow_setup
    stop = asyncio.Event()
    task = asyncio.create_task(run_stages(r, [stage], "w-ready", stop))
    try:
        await wait_for(lambda: _has_consumer(r, k), timeout=10)  # joined the group...
        assert ready() in (None, 0.0)  # ...but not ready
        loaded.set()
        await wait_for(lambda: _is_ready(ready), timeout=10)
        await r.xadd(k.deduped, {"n": "1", "t": "t-1"})
        await wait_for(lambda: _replied(stage, "1"), timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert ready() == 0.0


async def _is_ready(ready):
    return ready() == 1.0


async def _replied(stage, n):
    return n in stage.replies


def test_a_serving_process_runs_blas_on_the_threads_it_is_given():
    """limit_blas (serve calls it with ROUTING_BLAS_THREADS) holds numpy's BLAS and the copies loaded after it
    (FAISS's, at a stage's setup); 0 leaves each library's own default. In a process of its own: it is global."""
    import subprocess
    import sys

    code = ("import sys, numpy\nfrom routing_engine.service import limit_blas\nlimit_blas(int(sys.argv[1]))\n"
            "import faiss, scipy.linalg\nfrom threadpoolctl import threadpool_info\n"
            "print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    got = {n: subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True, env=env,
                             timeout=120, check=True).stdout.strip() for n in (1, 0)}
    assert got[1] == "[1]"
    if (os.cpu_count() or 1) > 1:  # the libraries' default is one thread per core
        assert got[0] != "[1]", got


class Triaging(Stage):
    """Triages its urgent lane by each entry's `cat` field: a category in `open` is handed to the main loop, past
    the first two of a category in what waits it comes later; process() pushes each id with the loop that ran it."""

    name = "route"  # reads {prefix}:deduped:urgent (its urgent lane) and {prefix}:deduped

    def __init__(self, settings, keys, consumer: str = "w1", slow_s: float = 0.0):
        super().__init__(settings, keys)
        self.open: set[str] = set()
        self.consumer, self.slow_s = consumer, slow_s
        self.lane_batches: list[list[str]] = []
        self.triaged = 0

    async def setup(self, ctx):
        pass

    def decode(self, entry):
        return entry.fields[b"n"].decode()

    async def triage(self, entries):
        from routing_engine.infra.runtime import Triage

        self.triaged += 1
        verdict, seen = Triage(), {}
        for e in entries:
            if e.mark is None:
                e.mark = e.fields[b"cat"].decode()
            seen[e.mark] = seen.get(e.mark, 0) + 1
            if e.mark in self.open:
                verdict.hand.append(e)
            elif seen[e.mark] > 2:
                verdict.later.append(e)
        return verdict

    async def process(self, entries):
        lane = all(e.stream == self.keys.deduped_urgent and not e.handed for e in entries)
        if lane:
            self.lane_batches.append([e.value for e in entries])
            if self.slow_s:
                await asyncio.sleep(self.slow_s)
        where = "lane" if lane else "main"
        return [Outcome(e, writes=[Write.cmd("RPUSH", f"{self.keys.base}:order", f"{e.value}@{where}@{self.consumer}")])
                for e in entries]


async def _order(r, k) -> list[tuple[str, str, str]]:
    return [tuple(x.decode().split("@")) for x in await r.lrange(f"{k.base}:order", 0, -1)]


async def test_a_lane_runs_its_singles_first_and_hands_what_waits_once_triage_says_so(settings, r):
    """A burst in the urgent lane (one category, more than a lane batch) with singles behind it: the lane's first
    batch holds the burst's first two and the singles (alone: a short batch), the rest waits in the lane; once the
    stage's triage says the burst's category is not urgent work (an incident opened while that batch ran), what
    still waits is handed to the main loop at the next turn. Each entry runs once; nothing stays pending."""
    from routing_engine.infra.runtime import LANE_BATCH
    from routing_engine.metrics import LANE_HANDED

    k = Keys(settings.prefix)
    stage = Triaging(settings, k)
    lane = min(LANE_BATCH, settings.batch_size)  # the lane's batch
    burst = [f"b{i}" for i in range(lane + 40)]
    for n in burst:
        await r.xadd(k.deduped_urgent, {"n": n, "cat": "storm"})
    for n in ("s0", "s1"):
        await r.xadd(k.deduped_urgent, {"n": n, "cat": f"cat-{n}"})
    process = stage.process

    async def opening(entries):
        out = await process(entries)
        stage.open.add("storm")  # the first lane batch opened the burst's incident
        return out

    stage.process = opening
    handed = LANE_HANDED.labels("route")
    before = handed._value.get()
    stop = asyncio.Event()
    task = asyncio.create_task(run_stages(r, [stage], "w1", stop))
    try:
        await wait_for(lambda: _all_pushed(r, k, len(burst) + 2), timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    order = await _order(r, k)
    assert sorted(n for n, _, _ in order) == sorted(burst + ["s0", "s1"])  # each once
    assert stage.lane_batches[0] == burst[:2] + ["s0", "s1"]  # singles run alone, the burst's first two with them
    assert len(stage.lane_batches) == 1  # the rest of the burst: the main loop's, handed at the next turn
    assert [n for n, where, _ in order if where == "main"] == burst[2:]
    assert handed._value.get() - before == len(burst) - 2
    info = next(g for g in await r.xinfo_groups(k.deduped_urgent) if g["name"] == b"route")
    assert info["pending"] == 0 and info["lag"] == 0


async def test_entries_waiting_in_a_lane_are_not_reclaimed_by_another_worker(settings, r):
    """What a lane read and keeps for later batches stays pending under its consumer, idle as far as Redis can tell:
    the runner touches it (XCLAIM JUSTID to itself) so a second worker's reclaim, due every 100 ms and taking entries
    idle 400 ms, never takes it while the lane works through ~2.5 s of batches. Each entry runs once, by one worker."""
    from dataclasses import replace

    from routing_engine.infra.runtime import LANE_BATCH, LANE_LATER_BATCH
    from routing_engine.metrics import RECLAIMED

    k = Keys(settings.prefix)
    s = replace(settings, claim_idle_ms=400, claim_every_ms=100)
    lane = min(LANE_BATCH, settings.batch_size)
    ids = [f"b{i}" for i in range(3 * lane - 10)]
    for n in ids:
        await r.xadd(k.deduped_urgent, {"n": n, "cat": "storm"})
    stages = [Triaging(s, k, consumer=c, slow_s=0.35) for c in ("w1", "w2")]
    reclaimed = RECLAIMED.labels("route")
    before = reclaimed._value.get()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_stages(r, [st], st.consumer, stop)) for st in stages]
    try:
        await wait_for(lambda: _all_pushed(r, k, len(ids)), timeout=20)
        await asyncio.sleep(0.5)  # a reclaim that took a waiting entry would run it again meanwhile
    finally:
        stop.set()
        await asyncio.gather(*(asyncio.wait_for(t, 10) for t in tasks))
    order = await _order(r, k)
    assert sorted(n for n, _, _ in order) == sorted(ids)  # each once
    assert len({c for _, _, c in order}) == 1  # all by the worker whose lane read them
    assert reclaimed._value.get() == before
    assert sum(len(b) for st in stages for b in st.lane_batches) == len(ids)
    # the burst's first two, then the rest in short batches while they wait (7 x 0.35 s with batch_size 32)
    later = min(lane, LANE_LATER_BATCH)
    assert [len(b) for st in stages for b in st.lane_batches] == [2] + [later] * ((len(ids) - 2) // later) + (
        [(len(ids) - 2) % later] if (len(ids) - 2) % later else [])
