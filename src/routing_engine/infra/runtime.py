"""Stage runtime: consumer groups, batching, atomic commit+ack, reclaim, dead letters, graceful stop.

A stage never talks to consumer groups itself: it turns a batch of decoded entries into Outcomes (the writes
each entry needs), and the runtime commits them all in one MULTI/EXEC, adding each entry's stream, group and
id to the script that commits it, or an XACK of its own. Delivery is at-least-once; the commit scripts make the
effects once (a redelivered entry whose commit already happened is only acked).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from ..config import Settings
from ..errors import InvalidTicket
from ..metrics import BATCH_SECONDS, BATCH_SIZE, ENTRIES, RECLAIMED
from .keys import EVENTS_MAXLEN, Keys
from .scripts import Scripts, Write

log = structlog.get_logger("runtime")


@dataclass
class Entry:
    id: str
    fields: dict[bytes, bytes]
    stream: str = ""  # the input stream it came from (a stage may read several, in priority order)
    value: Any = None  # what the stage's decode() made of the fields


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
    """Base for a pipeline stage. Subclasses set `name` (a key of STAGE_INPUTS) and implement process()."""

    name: str = "stage"

    @property
    def inputs(self) -> list[str]:
        """Input streams, most urgent first; a batch takes what waits on the first before the rest."""
        return self.keys.stage_inputs(self.name)

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
        """Parse the entry's fields; raise InvalidTicket to dead-letter it at once."""
        return entry.fields

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        raise NotImplementedError

    async def after_commit(self, outcomes: list[Outcome], results: list[list[Any]]) -> None:
        """Runs after EXEC: results[i] holds the replies to outcomes[i].writes, one per write, in order."""

    async def close(self) -> None:
        pass


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class StageRunner:
    def __init__(self, r: aioredis.Redis, stage: Stage, consumer: str, stop: asyncio.Event):
        self.r = r
        self.stage = stage
        self.s = stage.settings
        self.k = stage.keys
        self.consumer = consumer
        self.stop = stop
        self.group = stage.name
        self.scripts = Scripts(r, self.s, self.k)
        self._last_claim = 0.0

    async def ensure_group(self) -> None:
        for stream in self.stage.inputs:
            try:
                await self.r.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _entries(self, resp) -> list[Entry]:
        """XREADGROUP reply -> entries, the first input's first (priority order), tombstones dropped."""
        by_stream = {(name.decode() if isinstance(name, bytes) else name): rows for name, rows in resp or []}
        return [Entry(eid.decode(), f, stream) for stream in self.stage.inputs
                for eid, f in by_stream.get(stream, []) if f]

    async def run(self) -> None:
        await self.ensure_group()
        await self.stage.setup(StageContext(self.r, self.scripts, self.consumer))
        log.info("stage.started", stage=self.stage.name, consumer=self.consumer, streams=self.stage.inputs)
        # Entries delivered to this consumer name before a restart are still pending for it.
        await self._drain_own_pending()
        while not self.stop.is_set():
            try:
                if time.monotonic() - self._last_claim > self.s.claim_every_ms / 1000:
                    await self._reclaim()
                resp = await self.r.xreadgroup(
                    self.group, self.consumer, {stream: ">" for stream in self.stage.inputs},
                    count=self.s.batch_size, block=self.s.block_ms,
                )
                entries = self._entries(resp)
                if entries:
                    await self.handle(entries)
            except asyncio.CancelledError:
                raise
            except (ConnectionError, OSError, aioredis.ConnectionError) as exc:
                log.warning("stage.redis_unavailable", stage=self.stage.name, error=str(exc))
                await asyncio.sleep(1.0)
        await self.stage.close()
        log.info("stage.stopped", stage=self.stage.name, consumer=self.consumer)

    async def _drain_own_pending(self) -> None:
        for stream in self.stage.inputs:
            while not self.stop.is_set():
                resp = await self.r.xreadgroup(self.group, self.consumer, {stream: "0"}, count=self.s.batch_size)
                entries = self._entries(resp)
                if not entries:
                    break
                await self.handle(entries)

    async def _reclaim(self) -> None:
        """Take over entries idle longer than claim_idle_ms (their consumer died) and run them here."""
        self._last_claim = time.monotonic()
        for stream in self.stage.inputs:
            start = "0-0"
            while not self.stop.is_set():
                nxt, claimed, deleted = (await self.r.xautoclaim(
                    stream, self.group, self.consumer, self.s.claim_idle_ms, start_id=start, count=self.s.batch_size,
                ))[:3]
                for eid in deleted or []:
                    # trimmed from the stream while pending: nothing left to run, just ack it
                    await self.r.xack(stream, self.group, eid)
                entries = [Entry(eid.decode(), f, stream) for eid, f in claimed if f]
                if entries:
                    RECLAIMED.labels(self.stage.name).inc(len(entries))
                    log.info("stage.reclaimed", stage=self.stage.name, count=len(entries), stream=stream)
                    await self.handle(await self._over_delivered(entries))
                if nxt in (b"0-0", "0-0") or not claimed:
                    break
                start = nxt

    async def _over_delivered(self, entries: list[Entry]) -> list[Entry]:
        """An entry delivered too often (it keeps killing workers) is dead-lettered instead of run again."""
        keep = []
        for e in entries:
            info = await self.r.xpending_range(e.stream, self.group, min=e.id, max=e.id, count=1)
            if info and info[0]["times_delivered"] > self.s.max_deliveries:
                await self.dead_letter([Outcome(e, dead_reason=f"delivered {info[0]['times_delivered']} times "
                                                               "without success")])
            else:
                keep.append(e)
        return keep

    async def handle(self, entries: list[Entry]) -> None:
        t0 = time.perf_counter()
        ok: list[Entry] = []
        dead: list[Outcome] = []
        for e in entries:
            try:
                e.value = self.stage.decode(e)
                ok.append(e)
            except InvalidTicket as exc:
                dead.append(Outcome(e, dead_reason=f"invalid: {exc}", info={"problems": exc.problems}))
        if dead:
            await self.dead_letter(dead)
        if not ok:
            return
        try:
            outcomes = await self.stage.process(ok)
        except Exception:
            log.exception("stage.batch_failed", stage=self.stage.name, size=len(ok))
            outcomes = await self._one_by_one(ok)
        await self.commit(outcomes)
        BATCH_SIZE.labels(self.stage.name).observe(len(entries))
        BATCH_SECONDS.labels(self.stage.name).observe(time.perf_counter() - t0)

    async def _one_by_one(self, entries: list[Entry]) -> list[Outcome]:
        """Isolate the entry that broke the batch; the rest go on. Failures stay pending for a retry."""
        outcomes = []
        for e in entries:
            try:
                outcomes.extend(await self.stage.process([e]))
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                fails = await self.r.hincrby(self.k.fails(self.stage.name), e.id, 1)
                ENTRIES.labels(self.stage.name, "failed").inc()
                log.warning("stage.entry_failed", stage=self.stage.name, entry=e.id, fails=fails, error=reason,
                            trace=traceback.format_exc(limit=3))
                if fails >= self.s.max_deliveries:
                    outcomes.append(Outcome(e, dead_reason=f"failed {fails} times: {reason}"))
        return outcomes

    async def commit(self, outcomes: list[Outcome]) -> None:
        live = [o for o in outcomes if o.dead_reason is None]
        dead = [o for o in outcomes if o.dead_reason is not None]
        if live:
            async with self.r.pipeline(transaction=True) as pipe:
                spans = [await self._queue(pipe, o) for o in live]
                # counted inside the transaction so a crash can't commit tickets without counting them
                pipe.hincrby(self.k.stats, f"processed:{self.stage.name}", len(live))
                results = await pipe.execute()
            await self.stage.after_commit(live, [results[a:b] for a, b in spans])
            ENTRIES.labels(self.stage.name, "ok").inc(len(live))
        if dead:
            await self.dead_letter(dead)

    async def _queue(self, pipe, o: Outcome) -> tuple[int, int]:
        """Queue one outcome's writes (plus its XACK when no write acks it); returns the span of replies that
        answer its writes, so replies pair with outcomes however many commands each one queued."""
        start = len(pipe.command_stack)
        acked = False
        for w in o.writes:
            if w.command:
                pipe.execute_command(*w.command)
            elif w.acks:
                await self.scripts[w.script](keys=[o.entry.stream, *w.keys], args=[self.group, o.entry.id, *w.args],
                                             client=pipe)
                acked = True
            else:
                await self.scripts[w.script](keys=w.keys, args=w.args, client=pipe)
        end = len(pipe.command_stack)
        if not acked:
            pipe.xack(o.entry.stream, self.group, o.entry.id)
        return start, end

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


async def run_stages(r: aioredis.Redis, stages: list[Stage], consumer: str, stop: asyncio.Event) -> None:
    """Run each stage as its own task until `stop` is set; each finishes the batch in hand first."""
    runners = [StageRunner(r, s, consumer, stop) for s in stages]
    tasks = [asyncio.create_task(run.run(), name=f"stage:{run.stage.name}") for run in runners]
    if not tasks:
        await stop.wait()
        return
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception():
                stop.set()
                raise t.exception()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
