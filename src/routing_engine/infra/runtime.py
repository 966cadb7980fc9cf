"""Stage runtime: consumer groups, batching, atomic commit+ack, reclaim, dead letters, graceful stop.

A stage never talks to consumer groups itself: it turns a batch of decoded entries into Outcomes (the writes
each entry needs), and the runtime commits them all in one MULTI/EXEC, adding each entry's stream, group and
id to the script that commits it. Delivery is at-least-once; the commit scripts make the effects once (a
redelivered entry whose commit already happened is only acked).

A stage never dies of one entry: whatever goes wrong while decoding, processing or committing an entry is counted
against that entry (the stage's fails hash); the entry stays pending, comes back with its deliveries counted, and
after max_deliveries it is dead-lettered with the reason. Redis errors that mean "not now" (no connection, LOADING,
READONLY, BUSY, OOM) keep the batch in hand and retry it; a lost consumer group is recreated. Anything else is
logged and the stage goes on after a backoff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from ..config import Settings
from ..errors import InvalidTicket
from ..metrics import (
    BATCH_SECONDS,
    BATCH_SIZE,
    ENTRIES,
    LANE_ENTRIES,
    LANE_HANDED,
    LANE_WAITING,
    RECLAIMED,
    STAGE_READY,
    STEP_SECONDS,
    observe_steps,
)
from . import redis_errors
from .keys import EVENTS_MAXLEN, Keys
from .scripts import Scripts, Write

log = structlog.get_logger("runtime")

T = TypeVar("T")

# Waits between retries double from BACKOFF_MIN_S up to BACKOFF_MAX_S: a recovered Redis is noticed within seconds,
# a stage stuck on a bug does not spin.
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 3.0
# An entry delivered this many times without finishing runs alone: if it is what kills workers, it takes no other
# entry of a batch down with it (each would count a delivery too, and be dead-lettered with it in the end).
SUSPECT_DELIVERIES = 2
# A priority lane (an urgent stream: infra.keys.STAGE_INPUTS) is read in batches of at most this many entries (what
# waits, no deadline), in a loop of its own beside the main stream's: it never waits for the main stream's batch in
# work. 64 rather than 8: a backlog of urgent tickets is then a few batches, each embedded with the cores to itself
# (models/gate.py), not a dozen embedded beside the full batch (calm 5,000 --fast: urgent p99 2.4 -> 0.74 s).
LANE_BATCH = 64
# A lane whose stage triages (Stage.triage) is read this many entries at a time: the entries that are not urgent
# singles after all (a storm's members, once its incident is open) are handed to the main stream's loop at once,
# so a storm that reads urgent at the door does not queue the urgent singles behind it.
LANE_TRIAGE = 256
# A storm's members before its incident is open (triage's `later`) stay in the lane, behind its singles: the lane
# runs one batch a turn, singles first, and reads again before its next turn, so a single arriving meanwhile waits for
# one batch, not for the burst. Kept in the lane, not handed to the main loop: handed, a storm was seen from the lane
# K tickets a read, its rate grew slowly and its incident opened late (overload at capacity 200 on a ~260 texts/s box:
# 5.1 and 4.1 s after its K-th ticket in two of three runs, against 1.35-1.61 s kept in the lane). Past this many
# waiting, the newest go to the main loop.
LANE_LATER_MAX = 1024
# A turn with no singles runs at most this many of the later ones: a single arriving meanwhile waits for a short
# batch. Measured on a box with a ~200 texts/s ceiling (overload --capacity 200, two pairs): urgent singles p99 681 /
# 707 ms against 1,977 / 1,855 ms with batches of 64, the storm's incident 1.08 / 1.96 s after its K-th ticket against
# 2.37 / 2.12 s (bench/results/lane-later/).
LANE_LATER_BATCH = 16


def backoff_s(attempt: int, first: float = BACKOFF_MIN_S, cap: float = BACKOFF_MAX_S) -> float:
    return min(cap, first * 2 ** min(attempt, 30))


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Stopping(Exception):
    """Stop was set while Redis could not be reached: the entries in hand stay pending for a later run."""


@dataclass
class Entry:
    id: str
    fields: dict[bytes, bytes]
    stream: str = ""  # the input stream it came from (a stage may read several, in priority order)
    value: Any = None  # what the stage's decode() made of the fields
    deliveries: int = 1  # this delivery included: more than 1 when it was reclaimed or read back after a restart
    handed: bool = False  # read from a priority lane, handed by its triage to the main loop: not urgent work
    mark: Any = None  # what the stage's triage made of it, kept while it waits in the lane for a later batch
    later: bool = False  # triage put it after the lane's singles: it stays there until it runs or is handed


@dataclass
class Triage:
    """A triaging stage's verdict on entries read from a priority lane (see Stage.triage)."""

    hand: list[Entry] = field(default_factory=list)  # not urgent work after all: the main stream's loop runs them
    later: list[Entry] = field(default_factory=list)  # urgent-lane work, but after the rest (a burst in the lane)


@dataclass
class Outcome:
    """What to do with one entry: the writes to commit for it (in order), or a reason to dead-letter it."""

    entry: Entry
    writes: list[Write] = field(default_factory=list)
    dead_reason: str | None = None
    info: dict = field(default_factory=dict)  # for after_commit (alerts, metrics)


@dataclass
class StageContext:
    """What the runtime hands a stage at setup: one Redis client, its registered scripts, the consumer name."""

    r: aioredis.Redis
    scripts: Scripts
    consumer: str


class Stage:
    """Base for a pipeline stage. Subclasses set `name` (a key of STAGE_INPUTS) and implement process().

    A stage with priority lanes has process() called from two loops at once (the lanes' and the main stream's): it
    must be safe to run concurrently with itself (or serialise what is not, as dedup does)."""

    name: str = "stage"
    # True: a batch's commit runs while the next batch is read and processed (commits stay in order). For a stage
    # whose process() spends its time off the event loop (enrich embeds in a worker thread).
    overlap_commit: bool = False
    # > 0: a batch read short of batch_size waits up to this many ms for more entries (one XREADGROUP per arrival);
    # never when the batch holds an entry of a priority lane.
    batch_deadline_ms: float = 0.0
    # > 0: this stage reads at most this many entries a batch, whatever ROUTING_BATCH_SIZE says (the fallback: its
    # breaker times each batch against a budget).
    max_batch: int = 0
    # > 0: the runtime calls tick() this often (seconds) beside the read loops until stop, for work no entry brings
    # (dedup: saying a storm is over when no ticket came). A failing tick is logged and tried again next time.
    tick_every_s: float = 0.0

    @property
    def inputs(self) -> list[str]:
        """Input streams, most urgent first: the priority lanes (each read in its own loop, in small batches), then
        the main stream."""
        return self.keys.stage_inputs(self.name)

    @property
    def lanes(self) -> list[str]:
        """The priority lanes among `inputs` (all but the main stream)."""
        return self.inputs[:-1]

    @property
    def input(self) -> str:
        """The main input stream (the last of `inputs`: the one that is not a priority lane)."""
        return self.inputs[-1]

    def __init__(self, settings: Settings, keys: Keys):
        self.settings = settings
        self.keys = keys

    async def setup(self, ctx: StageContext) -> None:
        """Load models, keep what it needs of the context. Called once before the first batch."""

    def decode(self, entry: Entry) -> Any:
        """Parse the entry's fields; raise InvalidTicket to dead-letter it at once (any other error is retried)."""
        return entry.fields

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        raise NotImplementedError

    async def after_commit(self, outcomes: list[Outcome], results: list[list[Any]]) -> None:
        """Runs after EXEC: results[i] holds the replies to outcomes[i].writes, one per write, in order."""

    async def triage(self, entries: list[Entry]) -> Triage | None:
        """Of entries read from a priority lane (oldest first, those waiting from earlier reads included), which
        are not urgent work (`hand`: the runtime hands them to the main stream's loop, which runs them like its own
        entries) and which come after the rest (`later`; once there, an entry stays there until it runs or a later
        verdict hands it). None: the stage does not triage. Every entry stays
        pending on the lane, under this consumer, until the commit that acks it."""
        return None

    async def tick(self) -> None:
        pass

    async def close(self) -> None:
        pass


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class StageRunner:
    """One read loop of a stage over some of its inputs: by default every input (a stage without priority lanes);
    run() starts a second runner for the priority lanes (lane=True: those streams only, LANE_BATCH at a time, no
    waiting for a fuller batch, no overlapped commit) and keeps the main stream for itself. Both use the same
    consumer name: pending entries are per stream, so each loop drains, reclaims and acks its own streams only."""

    def __init__(self, r: aioredis.Redis, stage: Stage, consumer: str, stop: asyncio.Event,
                 streams: list[str] | None = None, lane: bool = False):
        self.r = r
        self.stage = stage
        self.s = stage.settings
        self.k = stage.keys
        self.consumer = consumer
        self.stop = stop
        self.group = stage.name
        self.streams = list(streams) if streams is not None else stage.inputs
        self.lane = lane
        size = min(self.s.batch_size, stage.max_batch) if stage.max_batch > 0 else self.s.batch_size
        self.batch_size = min(LANE_BATCH, size) if lane else size
        self.main: StageRunner | None = None  # a lane's runner: the main stream's, which takes what triage hands it
        self.handed: collections.deque[Entry] = collections.deque()  # lane entries handed to this (main) runner
        self.later: list[Entry] = []  # a lane's entries read and waiting for a later batch (triage's order)
        self._handed_turn = False
        self._touched = 0.0
        self.scripts = Scripts(r, self.s, self.k)
        self._last_claim = 0.0
        # the Redis trouble being waited out, since when, and the kinds said in this episode: each kind is logged
        # once per episode (a lane's runner shares its main runner's, so a stage says it once whichever of its loops
        # meets it, even when the two loops see different kinds in turn)
        self._troubles: list = [None, 0.0, set()]
        # this loop met the trouble itself: only its own success ends the episode. A loop that did not says nothing
        # about it: a lane's read, blocked before a long script began, is answered (empty) as the script ends, and
        # when its coroutine resumed before the main loop's, whose BUSY reply had come in just before, it ended the
        # episode and that BUSY was logged as a second one (seen in CI; valkey 9 and Redis 7 both answer a blocked
        # read only at the script's end, checked)
        self._in_trouble = False
        self._group_lost = False
        # held while a lost group is made again: a lane's runner shares its main runner's, so when both loops meet
        # NOGROUP after an empty restart one makes the groups and the other finds them (it was a race: both said so)
        self._regroup = asyncio.Lock()
        self._committing: asyncio.Task | None = None  # the previous batch's commit, with overlap_commit

    async def ensure_group(self, streams: list[str] | None = None) -> bool:
        """Create the consumer group on each input (or each of `streams`) where it is missing, and this consumer in
        it; True when it created a group."""
        created = False
        for stream in self.stage.inputs if streams is None else streams:
            if not await self._has_group(stream):
                try:
                    await self.r.xgroup_create(stream, self.group, id="0", mkstream=True)
                    created = True
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
            # registered now, not at its first entry: health reports and the other workers see it at once (a
            # refusal, out of memory or read-only, only delays that to the first entry it reads)
            with contextlib.suppress(ResponseError):
                await self.r.xgroup_createconsumer(stream, self.group, self.consumer)
        return created

    async def _has_group(self, stream: str) -> bool:
        """Looked up first: XGROUP CREATE is a write, refused while Redis is out of memory or read-only."""
        try:
            return any(g["name"].decode() == self.group for g in await self.r.xinfo_groups(stream))
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return False
            raise

    def _entries(self, resp) -> list[Entry]:
        """XREADGROUP reply -> entries, the first stream's first (priority order), tombstones dropped."""
        by_stream = {(name.decode() if isinstance(name, bytes) else name): rows for name, rows in resp or []}
        return [Entry(eid.decode(), f, stream) for stream in self.streams
                for eid, f in by_stream.get(stream, []) if f]

    async def run(self) -> None:
        """Until stop is set. It ends early only when setup (or the runtime itself) fails: that error is raised."""
        lanes = self.stage.lanes
        if lanes and self.streams == self.stage.inputs:
            self.streams = [self.stage.input]  # the priority lanes get a loop of their own; this one keeps the main
        else:
            lanes = []
        try:  # the lanes' groups are the lanes' loop's to make: Redis refusing them does not hold the main stream
            await self._patiently(lambda: self.ensure_group(self.streams))
        except Stopping:
            return
        try:
            await self.stage.setup(StageContext(self.r, self.scripts, self.consumer))
            log.info("stage.started", stage=self.stage.name, consumer=self.consumer, streams=self.stage.inputs)
            STAGE_READY.labels(self.stage.name, self.consumer).set(1)
            loops = [self._run_loop()]
            if lanes:
                lane = StageRunner(self.r, self.stage, self.consumer, self.stop, streams=lanes, lane=True)
                lane.main, lane._troubles, lane._regroup = self, self._troubles, self._regroup
                loops.append(lane._run_loop())
            if self.stage.tick_every_s > 0:
                loops.append(self._tick_loop())
            await asyncio.gather(*loops)
        finally:
            STAGE_READY.labels(self.stage.name, self.consumer).set(0)
            try:  # also after a failed setup: whatever it opened is closed before a supervisor builds a new one
                await self.stage.close()
            except Exception as exc:
                log.error("stage.close_failed", stage=self.stage.name, error=describe(exc), exc_info=True)
            log.info("stage.stopped", stage=self.stage.name, consumer=self.consumer)

    async def _run_loop(self) -> None:
        try:
            if self.lane:
                try:
                    await self._patiently(lambda: self.ensure_group(self.streams))
                except Stopping:
                    return
            await self._loop()
        finally:
            with contextlib.suppress(Stopping):  # stopped while Redis was away: that batch stays pending
                await self._settle()

    async def _loop(self) -> None:
        own_pending = True  # what this consumer name held when an earlier run stopped or died is still pending for it
        errors = 0
        while not self.stop.is_set():
            try:
                if self._group_lost:
                    # recreated from the stream's start: every entry still in it comes back, and the commit
                    # scripts only ack the ones already done, so nothing runs twice (said by the loop that did it)
                    async with self._regroup:
                        created = await self.ensure_group()
                    if created:
                        log.warning("stage.group_recreated", stage=self.stage.name, streams=self.stage.inputs)
                    self._group_lost = False
                if own_pending:
                    await self._drain_own_pending()
                    own_pending = False
                await self._step()
                errors = 0
            except asyncio.CancelledError:
                raise
            except Stopping:
                break
            except Exception as exc:
                kind = redis_errors.trouble(exc)
                delay = backoff_s(errors)
                errors += 1
                if kind == redis_errors.NOGROUP:
                    self._group_lost = True
                    log.warning("stage.group_lost", stage=self.stage.name, error=str(exc))
                elif kind is not None:
                    self._waiting(kind, exc)
                else:
                    log.error("stage.error", stage=self.stage.name, error=describe(exc), retry_in_s=delay,
                              exc_info=True)
                await self._pause(delay)

    async def _step(self) -> None:
        if time.monotonic() - self._last_claim > self.s.claim_every_ms / 1000:
            await self._reclaim()
        if self.handed:
            await self._touch_waiting(self.handed)
            # lane entries handed over and the main stream's own take turns, a batch each
            self._handed_turn = not self._handed_turn
            if self._handed_turn:
                batch = [self.handed.popleft() for _ in range(min(len(self.handed), self.batch_size))]
                await self.handle(batch, overlap=self.stage.overlap_commit)
                return
        t = time.perf_counter()
        triage = self.lane and self.main is not None and type(self.stage).triage is not Stage.triage
        if self.later:
            await self._touch_waiting(self.later)
        resp = await self.r.xreadgroup(
            self.group, self.consumer, {stream: ">" for stream in self.streams},
            count=LANE_TRIAGE if triage else self.batch_size,
            block=None if self.handed or self.later else self.s.block_ms,
        )
        self._recovered()
        entries = self._entries(resp)
        if entries:  # an empty read only waited out BLOCK: not time spent on work
            STEP_SECONDS.labels(self.stage.name, "read").observe(time.perf_counter() - t)
        if not self.lane:
            if not entries:
                return
            if self.stage.batch_deadline_ms > 0 and not self.handed:
                entries += await self._top_up(entries)
            await self.handle(entries, overlap=self.stage.overlap_commit)
            return
        LANE_ENTRIES.labels(self.stage.name).inc(len(entries))
        if not triage:
            for i in range(0, len(entries), self.batch_size):
                await self.handle(entries[i:i + self.batch_size])
            return
        entries, self.later = self.later + entries, []
        if not entries:
            return
        try:
            verdict = await self.stage.triage(entries) or Triage()
        except Exception as exc:  # triage only orders work: every entry read stays in this lane's batches
            log.warning("stage.triage_failed", stage=self.stage.name, error=describe(exc))
            verdict = Triage()
        hand = {e.id for e in verdict.hand}
        later = ({e.id for e in verdict.later} | {e.id for e in entries if e.later}) - hand
        for e in entries:
            e.later = e.id in later
        front = [e for e in entries if e.id not in hand and e.id not in later]
        order = front + [e for e in entries if e.id in later]
        # singles run alone, up to a full batch; a turn of later ones only is small, so a single arriving meanwhile
        # waits for a short batch
        n = min(len(front), self.batch_size) if front else min(self.batch_size, LANE_LATER_BATCH)
        batch, self.later = order[:n], order[n:]
        if len(self.later) > LANE_LATER_MAX:  # the newest of a long wait: the main loop's, as if handed
            hand.update(e.id for e in self.later[LANE_LATER_MAX:])
            self.later = self.later[:LANE_LATER_MAX]
        LANE_WAITING.labels(self.stage.name).set(len(self.later))
        if hand:
            LANE_HANDED.labels(self.stage.name).inc(len(hand))
            for e in entries:
                if e.id in hand:
                    e.handed = True
                    self.main.handed.append(e)
        if batch:
            await self.handle(batch)

    async def _touch_waiting(self, waiting) -> None:
        """Entries read and waiting here (a lane's later ones, or lane entries handed to this main loop) stay pending
        under this consumer: XCLAIM JUSTID to itself (no delivery counted) every third of claim_idle_ms keeps them
        from looking abandoned to any reclaimer, this consumer's own included."""
        if time.monotonic() - self._touched < self.s.claim_idle_ms / 3000:
            return
        self._touched = time.monotonic()
        by_stream: dict[str, list[str]] = {}
        for e in waiting:
            by_stream.setdefault(e.stream, []).append(e.id)
        async with self.r.pipeline(transaction=False) as pipe:
            for stream, ids in by_stream.items():
                for i in range(0, len(ids), 1000):
                    pipe.xclaim(stream, self.group, self.consumer, min_idle_time=0, message_ids=ids[i:i + 1000],
                                justid=True)
            await pipe.execute()

    async def _top_up(self, entries: list[Entry]) -> list[Entry]:
        """Adaptive batching: a short batch waits up to batch_deadline_ms for more (what arrives meanwhile joins
        it, up to batch_size). A batch holding a priority-lane entry goes at once."""
        more: list[Entry] = []
        if any(e.stream != self.stage.input for e in entries):
            return more
        deadline = time.monotonic() + self.stage.batch_deadline_ms / 1000
        while len(entries) + len(more) < self.batch_size and (left := deadline - time.monotonic()) > 0:
            resp = await self.r.xreadgroup(
                self.group, self.consumer, {stream: ">" for stream in self.streams},
                count=self.batch_size - len(entries) - len(more), block=max(1, int(left * 1000)),
            )
            got = self._entries(resp)
            if not got:
                break
            more += got
        return more

    # ---- waiting out Redis

    async def _tick_loop(self) -> None:
        while not self.stop.is_set():
            await self._pause(self.stage.tick_every_s)
            if self.stop.is_set():
                return
            try:
                await self.stage.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away (the read loops say so, once an episode), or a bug: next tick
                if redis_errors.trouble(exc) is None:
                    log.warning("stage.tick_failed", stage=self.stage.name, error=describe(exc), exc_info=True)

    async def _pause(self, seconds: float) -> None:
        """Sleep, waking at once when stop is set."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    def _waiting(self, kind: str, exc: BaseException) -> None:
        """Log a Redis trouble when it starts (or turns into a kind not seen yet in this episode), not at every
        retry."""
        self._in_trouble = True
        if self._troubles[0] is None:
            self._troubles[1] = time.monotonic()
        self._troubles[0] = kind
        if kind in self._troubles[2]:
            return
        self._troubles[2].add(kind)
        if kind == redis_errors.OOM:
            log.error("stage.redis_out_of_memory", stage=self.stage.name, error=str(exc),
                      detail="Redis is out of memory (maxmemory reached) and refuses writes: the entries stay "
                             "pending, nothing is acked or dead-lettered; retrying until it accepts them")
        else:
            log.warning("stage.redis_unavailable", stage=self.stage.name, reason=kind, error=str(exc),
                        detail="waiting for Redis; the entries in hand stay pending and are retried")

    def _recovered(self) -> None:
        if not self._in_trouble:
            return
        self._in_trouble = False
        if self._troubles[0] is not None:
            log.info("stage.redis_recovered", stage=self.stage.name, reason=self._troubles[0],
                     after_s=round(time.monotonic() - self._troubles[1], 1))
            self._troubles[:] = [None, 0.0, set()]

    async def _patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        """await call() until Redis answers: "not now" errors wait (backing off) and retry, so the entries in hand
        stay pending and nothing is counted against them; stop ends the wait (Stopping). Other errors raise."""
        attempt = 0
        while True:
            try:
                result = await call()
            except Exception as exc:
                if not redis_errors.waits(exc):
                    raise
                self._waiting(redis_errors.trouble(exc), exc)
                if self.stop.is_set():
                    raise Stopping from exc
                await self._pause(backoff_s(attempt))
                attempt += 1
                if self.stop.is_set():
                    raise Stopping from exc
                continue
            self._recovered()
            return result

    # ---- entries delivered before: reclaimed, or read back after a restart

    async def _drain_own_pending(self) -> None:
        """Entries still pending for this consumer name (an earlier run under it stopped or died holding them) run
        first, with their deliveries counted."""
        for stream in self.streams:
            after = "-"
            while not self.stop.is_set():
                pend = await self.r.xpending_range(stream, self.group, min=after, max="+", count=self.batch_size,
                                                   consumername=self.consumer)
                if not pend:
                    break
                after = "(" + pend[-1]["message_id"].decode()
                await self._rerun(stream, {p["message_id"].decode(): p["times_delivered"] for p in pend})

    async def _reclaim(self) -> None:
        """Take over entries idle longer than claim_idle_ms (their consumer died, or they failed and wait for their
        next try) and run them here."""
        self._last_claim = time.monotonic()
        for stream in self.streams:
            start = "0-0"
            while not self.stop.is_set():
                # JUSTID: taking them over counts no delivery; _rerun counts one for each entry it runs
                ids = await self.r.xautoclaim(stream, self.group, self.consumer, self.s.claim_idle_ms,
                                              start_id=start, count=self.batch_size, justid=True)
                if not ids:
                    break
                ids = [i.decode() if isinstance(i, bytes) else i for i in ids]
                RECLAIMED.labels(self.stage.name).inc(len(ids))
                log.info("stage.reclaimed", stage=self.stage.name, count=len(ids), stream=stream)
                async with self.r.pipeline(transaction=False) as pipe:
                    for eid in ids:
                        pipe.xpending_range(stream, self.group, min=eid, max=eid, count=1)
                    pend = {p["message_id"].decode(): p["times_delivered"]
                            for rows in await pipe.execute() for p in rows}
                await self._rerun(stream, pend)
                start = ids[-1]  # inclusive, but no longer idle: the scan goes on past it

    async def _rerun(self, stream: str, pend: dict[str, int]) -> None:
        """Run pending entries of this consumer again (pend: entry id -> deliveries so far). One delivered
        max_deliveries times already is dead-lettered; one delivered SUSPECT_DELIVERIES times runs alone; the rest
        run as one batch."""
        over = [eid for eid, n in pend.items() if n >= self.s.max_deliveries]
        calm = [eid for eid, n in pend.items() if n < min(SUSPECT_DELIVERIES, self.s.max_deliveries)]
        suspects = [eid for eid in pend if eid not in over and eid not in calm]
        if over:
            await self._bury([Outcome(e, dead_reason=f"delivered {e.deliveries - 1} times without success")
                              for e in await self._claim(stream, over, pend)])
        for ids in ([calm] if calm else []) + [[eid] for eid in suspects]:
            if entries := await self._claim(stream, ids, pend):
                await self.handle(entries)

    async def _claim(self, stream: str, ids: list[str], pend: dict[str, int]) -> list[Entry]:
        """XCLAIM the ids to this consumer, which counts a delivery and returns their fields. An entry trimmed from
        the stream while pending has nothing left to run: it is acked."""
        rows = await self.r.xclaim(stream, self.group, self.consumer, min_idle_time=0, message_ids=ids)
        entries = [Entry(eid.decode(), f, stream, deliveries=pend[eid.decode()] + 1) for eid, f in rows if f]
        gone = set(ids) - {e.id for e in entries}
        if gone:
            await self.r.xack(stream, self.group, *gone)
        return entries

    # ---- one batch: decode, process, commit

    async def _settle(self) -> None:
        """Wait for the previous batch's commit (overlap_commit): its errors surface here, in the stage's loop."""
        task, self._committing = self._committing, None
        if task is not None:
            await task

    async def handle(self, entries: list[Entry], overlap: bool = False) -> None:
        """Decode, process and commit one batch. With `overlap` the commit is left running (the next batch's read
        and process go on meanwhile); the next batch's commit, or the loop's end, waits for it first."""
        t0 = time.perf_counter()
        ok: list[Entry] = []
        dead: list[Outcome] = []
        for e in entries:
            try:
                e.value = self.stage.decode(e)
                ok.append(e)
            except InvalidTicket as exc:
                dead.append(Outcome(e, dead_reason=f"invalid: {exc}", info={"problems": exc.problems}))
            except Exception as exc:  # a bug, or input decode() did not foresee: retried like any failure
                if (o := await self._failed(e, exc, "decode")) is not None:
                    dead.append(o)
        if dead:
            await self._bury(dead)
        if not ok:
            return
        t1 = time.perf_counter()
        outcomes = await self._patiently(lambda: self._process(ok))
        t2 = time.perf_counter()
        await self._settle()  # commits stay in order
        steps = {"decode": t1 - t0, "process": t2 - t1}
        if overlap:
            self._committing = asyncio.create_task(self._commit_batch_of(outcomes, len(entries), t0, steps))
        else:
            await self._commit_batch_of(outcomes, len(entries), t0, steps)

    async def _commit_batch_of(self, outcomes: list[Outcome], size: int, t0: float, steps: dict) -> None:
        t = time.perf_counter()
        await self.commit(outcomes)
        observe_steps(self.stage.name, {**steps, "commit": time.perf_counter() - t})
        BATCH_SIZE.labels(self.stage.name).observe(size)
        BATCH_SECONDS.labels(self.stage.name).observe(time.perf_counter() - t0)

    async def _process(self, entries: list[Entry]) -> list[Outcome]:
        try:
            return await self.stage.process(entries)
        except Exception as exc:
            if redis_errors.trouble(exc):
                raise  # Redis, not the batch: waited out (or the group recreated) with the batch in hand
            if len(entries) == 1:
                o = await self._failed(entries[0], exc, "process")
                return [o] if o is not None else []
            log.warning("stage.batch_failed", stage=self.stage.name, size=len(entries), error=describe(exc),
                        exc_info=True)
            return await self._one_by_one(entries)

    async def _one_by_one(self, entries: list[Entry]) -> list[Outcome]:
        """Isolate the entry that broke the batch; the rest go on. Failures stay pending for a retry."""
        outcomes = []
        for e in entries:
            try:
                outcomes.extend(await self.stage.process([e]))
            except Exception as exc:
                if redis_errors.trouble(exc):
                    raise
                if (o := await self._failed(e, exc, "process")) is not None:
                    outcomes.append(o)
        return outcomes

    async def _failed(self, e: Entry, error: BaseException, step: str) -> Outcome | None:
        """Count a failure against the entry. At max_deliveries it is dead-lettered (the Outcome returned); before
        that it stays pending, and comes back for another try once idle for claim_idle_ms."""
        reason = describe(error)
        fails = await self._patiently(lambda: self.r.hincrby(self.k.fails(self.stage.name), e.id, 1))
        tries = max(fails, e.deliveries)  # deliveries also count runs that died before they could count a failure
        ENTRIES.labels(self.stage.name, "failed").inc()
        trace = {"trace": "".join(traceback.format_exception(error, limit=3))} if error.__traceback__ else {}
        log.warning("stage.entry_failed", stage=self.stage.name, step=step, entry=e.id, stream=e.stream, fails=fails,
                    deliveries=e.deliveries, error=reason, **trace)
        if tries >= self.s.max_deliveries:
            return Outcome(e, dead_reason=f"failed {tries} times: {reason}")
        return None

    async def commit(self, outcomes: list[Outcome]) -> None:
        """Commit the live outcomes in one MULTI/EXEC and dead-letter the others. MULTI/EXEC does not roll back:
        when one outcome's write fails, the other outcomes' commands ran, so they are committed. The failing ones
        are retried each on its own; one that fails alone too is counted against its entry, which stays pending
        (its acking script failed, and the runtime acks the others only after EXEC, when all their writes held)."""
        live = [o for o in outcomes if o.dead_reason is None]
        dead = [o for o in outcomes if o.dead_reason is not None]
        if live:
            failed = await self._commit_batch(live)
            if failed and len(live) > 1:
                failed = [f for o, _ in failed for f in await self._commit_batch([o])]
            for o, exc in failed:
                if (d := await self._failed(o.entry, exc, "commit")) is not None:
                    dead.append(d)
        if dead:
            await self._bury(dead)

    async def _commit_batch(self, outs: list[Outcome]) -> list[tuple[Outcome, BaseException]]:
        """One MULTI/EXEC for these outcomes; returns those that failed, with the error. An outcome that failed
        with a "not now" error (OOM while its script wrote) stays in hand: waited out, then committed again."""
        broken: list[tuple[Outcome, BaseException]] = []
        attempt = 0
        while outs:
            results = await self._patiently(lambda outs=outs: self._transaction(outs))
            await self._committed([(o, res) for o, res in zip(outs, results) if not isinstance(res, BaseException)])
            failed = [(o, res) for o, res in zip(outs, results) if isinstance(res, BaseException)]
            broken += [(o, exc) for o, exc in failed if not redis_errors.waits(exc)]
            later = [(o, exc) for o, exc in failed if redis_errors.waits(exc)]
            if later:
                self._waiting(redis_errors.trouble(later[0][1]), later[0][1])
                await self._pause(backoff_s(attempt))
                attempt += 1
                if self.stop.is_set():
                    raise Stopping
            outs = [o for o, _ in later]
        return broken

    async def _transaction(self, outs: list[Outcome]) -> list[list[Any] | BaseException]:
        """One MULTI/EXEC; per outcome, the replies to its writes or the error that failed it. Redis refusing the
        whole transaction (a command rejected as it was queued: EXECABORT) fails every outcome; "not now" raises."""
        async with self.r.pipeline(transaction=True) as pipe:
            spans = [await self._queue(pipe, o) for o in outs]
            # counted inside the transaction so a crash can't commit tickets without counting them
            pipe.hincrby(self.k.stats, f"processed:{self.stage.name}", len(outs))
            try:
                replies = await pipe.execute(raise_on_error=False)
            except ResponseError as exc:
                if redis_errors.trouble(exc):
                    raise
                return [exc] * len(outs)  # nothing ran
        results: list[list[Any] | BaseException] = []
        for o, (start, end, acked_at) in zip(outs, spans):
            res = replies[start:end]
            errors = [x for x in res if isinstance(x, BaseException)]
            if errors and acked_at is not None and not isinstance(res[acked_at], BaseException):
                # its acking script committed (and acked) the entry; an earlier write's error can't be undone
                log.error("stage.partial_commit", stage=self.stage.name, entry=o.entry.id,
                          error=describe(errors[0]))
                errors = []
            results.append(errors[0] if errors else res)
        failed = sum(isinstance(x, BaseException) for x in results)
        if failed:
            with contextlib.suppress(RedisError):  # only a statistic: never worth failing the batch over
                await self.r.hincrby(self.k.stats, f"processed:{self.stage.name}", -failed)
        return results

    async def _queue(self, pipe, o: Outcome) -> tuple[int, int, int | None]:
        """Queue one outcome's writes; returns the span of replies that answer them (so replies pair with outcomes
        however many commands each one queued) and where in it the acking script's reply is (None: no write acks
        the entry; the runtime acks it after EXEC, only if every write held)."""
        start = len(pipe.command_stack)
        acked_at = None
        for w in o.writes:
            if w.command:
                pipe.execute_command(*w.command)
            elif w.acks:
                acked_at = len(pipe.command_stack) - start
                await self.scripts[w.script](keys=[o.entry.stream, *w.keys], args=[self.group, o.entry.id, *w.args],
                                             client=pipe)
            else:
                await self.scripts[w.script](keys=w.keys, args=w.args, client=pipe)
        return start, len(pipe.command_stack), acked_at

    async def _committed(self, done: list[tuple[Outcome, list[Any]]]) -> None:
        """After EXEC, for the outcomes that committed: XACK those no script acked (a failed write is never acked,
        at the price of running such writes again if the worker dies right here), forget the failures of retried
        entries, then the stage's after_commit (its errors are logged: the commit stands)."""
        if not done:
            return
        outs = [o for o, _ in done]
        unacked: dict[str, list[str]] = {}
        for o in outs:
            if not any(w.acks for w in o.writes):
                unacked.setdefault(o.entry.stream, []).append(o.entry.id)
        retried = [o.entry.id for o in outs if o.entry.deliveries > 1]
        if unacked or retried:
            async def tidy():
                async with self.r.pipeline(transaction=False) as pipe:
                    for stream, ids in unacked.items():
                        pipe.xack(stream, self.group, *ids)
                    if retried:
                        pipe.hdel(self.k.fails(self.stage.name), *retried)
                    await pipe.execute()

            await self._patiently(tidy)
        ENTRIES.labels(self.stage.name, "ok").inc(len(outs))
        try:
            await self.stage.after_commit(outs, [res for _, res in done])
        except Exception as exc:
            log.error("stage.after_commit_failed", stage=self.stage.name, size=len(outs), error=describe(exc),
                      exc_info=True)

    async def _bury(self, outcomes: list[Outcome]) -> None:
        """dead_letter, waiting out "not now" errors. It is one MULTI/EXEC: when Redis answers one of its commands
        with an error, the others ran (the letters are written): logged, not retried, or they would be written
        twice."""
        try:
            await self._patiently(lambda: self.dead_letter(outcomes))
        except ResponseError as exc:
            if redis_errors.trouble(exc) == redis_errors.NOGROUP:
                raise
            log.error("stage.dead_letter_failed", stage=self.stage.name, entries=[o.entry.id for o in outcomes],
                      error=describe(exc))

    async def dead_letter(self, outcomes: list[Outcome]) -> None:
        now = int(time.time() * 1000)
        ingest = (self.k.ingest, self.k.ingest_urgent)
        async with self.r.pipeline(transaction=True) as pipe:
            for o in outcomes:
                raw = {k.decode(errors="replace"): v.decode(errors="replace")
                       for k, v in o.entry.fields.items() if k != b"emb"}
                tid = self._verified_id(o.entry)
                letter = {"stage": self.stage.name, "stream": o.entry.stream, "entry_id": o.entry.id,
                          "reason": o.dead_reason, "ticket_id": tid, "fields": orjson.dumps(raw), "at": now}
                if raw.get("ticket_id", tid) != tid:
                    # what the entry claims, kept for the operator only: anyone can XADD any ticket_id
                    letter["ticket_id_unverified"] = raw["ticket_id"]
                pipe.xadd(self.k.dead, letter, maxlen=self.s.stream_maxlen, approximate=True)
                if tid:
                    # the script marks the ticket only if this entry owns it and it is not routed yet
                    await self.scripts.mark_dead(ticket_id=tid, reason=o.dead_reason, at_ms=now, client=pipe,
                                                 owner=o.entry.id if o.entry.stream in ingest else "")
                else:
                    pipe.xadd(self.k.events, {"type": "ticket.dead", "ticket_id": "", "reason": o.dead_reason[:300]},
                              maxlen=EVENTS_MAXLEN, approximate=True)
                pipe.xack(o.entry.stream, self.group, o.entry.id)
                pipe.hdel(self.k.fails(self.stage.name), o.entry.id)
            pipe.hincrby(self.k.stats, "dead_letters", len(outcomes))
            await pipe.execute()
        ENTRIES.labels(self.stage.name, "dead").inc(len(outcomes))
        for o in outcomes:
            log.warning("stage.dead_letter", stage=self.stage.name, entry=o.entry.id, reason=o.dead_reason)

    def _verified_id(self, entry: Entry) -> str:
        """The ticket id of the entry as the stage validated it, '' when there is none. An entry the reclaimer gives
        up on was never decoded: decode it now; if that fails, nothing in its fields can be trusted."""
        value = entry.value
        if value is None:
            try:
                value = self.stage.decode(entry)
            except Exception:  # whatever decode raises, the answer is the same: unverified
                return ""
        tid = getattr(value, "ticket_id", None)
        return tid if isinstance(tid, str) else ""


async def run_stage(r: aioredis.Redis, stage: Stage, consumer: str, stop: asyncio.Event) -> None:
    """One stage until `stop` is set; it finishes the batch in hand first. It ends early only when its setup or the
    runtime itself fails, with that error, for a supervisor to restart it (service.supervise)."""
    await StageRunner(r, stage, consumer, stop).run()


async def run_stages(r: aioredis.Redis, stages: list[Stage], consumer: str, stop: asyncio.Event) -> None:
    """Run each stage as its own task until `stop` is set; each finishes the batch in hand first. A stage that dies
    is logged and the others go on."""
    if not stages:
        await stop.wait()
        return

    async def one(stage: Stage) -> None:
        try:
            await run_stage(r, stage, consumer, stop)
        except Exception as exc:
            log.error("stage.died", stage=stage.name, error=describe(exc), exc_info=True)

    await asyncio.gather(*(one(s) for s in stages))
