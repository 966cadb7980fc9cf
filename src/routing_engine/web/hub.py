"""The live feed's fan-out: one Redis reader per API process, bounded per-client buffers, and the derived state
(flood meter, queue depths, breaker) computed once a second from the same events stream.

Every stage XADDs compact events to the events stream; the stream entry id is the SSE `id:`, so a browser that
reconnects with Last-Event-ID replays what it missed from the stream itself (sse.py). Each client has a bounded
buffer: a client that falls that far behind is dropped (it reconnects and resumes) instead of slowing anyone
else. Derived state goes out as events without an id: it never moves a client's resume point.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis
import structlog

from ..infra.keys import Keys

log = structlog.get_logger("events")


def sid(s: str) -> tuple[int, int]:
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


def type_filter(raw: str | None) -> tuple[str, ...] | None:
    """`?types=incident,breaker` -> prefixes; `incident` matches incident.*, `ticket.resolved` only itself."""
    if not raw:
        return None
    return tuple(t.strip() for t in raw.split(",") if t.strip()) or None


def wanted(types: tuple[str, ...] | None, etype: str) -> bool:
    return types is None or any(etype == t or etype.startswith(t + ".") for t in types)


def render(entry_id: str, fields: dict[bytes, bytes]) -> tuple[str, bytes]:
    """One stream entry -> (type, SSE frame). Field `data` (JSON from the Lua scripts) is parsed in place."""
    ev: dict = {"id": entry_id, "ts": sid(entry_id)[0]}
    for k, v in fields.items():
        key, val = k.decode(), v.decode(errors="replace")
        if key == "data":
            try:
                ev["data"] = orjson.loads(val)
                continue
            except orjson.JSONDecodeError:
                pass
        ev[key] = val
    etype = ev.get("type", "")
    return etype, b"id: " + entry_id.encode() + b"\ndata: " + orjson.dumps(ev) + b"\n\n"


def frame_noid(ev: dict) -> bytes:
    return b"data: " + orjson.dumps(ev) + b"\n\n"


class FloodMeter:
    """Tickets/s in 1-s buckets; flood when the last seconds run k x above the trailing baseline and a floor.

    Baseline = mean of the trailing `window_s` seconds before the last `recent_s`; leaving flood needs the rate
    to fall under half the entry threshold (hysteresis), so the state does not flicker at the edge.
    """

    def __init__(self, k: float = 3.0, floor: float = 20.0, recent_s: int = 3, window_s: int = 60, keep_s: int = 300):
        self.k, self.floor, self.recent_s, self.window_s, self.keep_s = k, floor, recent_s, window_s, keep_s
        self.counts: dict[int, int] = collections.defaultdict(int)
        self.flood = False
        self.since: int | None = None

    def add(self, ts_ms: int, n: int = 1) -> None:
        self.counts[ts_ms // 1000] += n

    def tick(self, now_s: int) -> dict:
        """Evaluate up to the last complete second; returns the state (with `changed`)."""
        for s in [s for s in self.counts if s < now_s - self.keep_s]:
            del self.counts[s]
        last = now_s - 1
        rate = sum(self.counts.get(s, 0) for s in range(last - self.recent_s + 1, last + 1)) / self.recent_s
        base_secs = range(last - self.recent_s - self.window_s + 1, last - self.recent_s + 1)
        baseline = sum(self.counts.get(s, 0) for s in base_secs) / self.window_s
        threshold = max(self.floor, self.k * baseline)
        was = self.flood
        if not was and rate > threshold:
            self.flood, self.since = True, last
        elif was and rate < threshold / 2:
            self.flood, self.since = False, last
        return {"type": "flood.state", "state": "flood" if self.flood else "normal", "changed": was != self.flood,
                "t": last, "count": self.counts.get(last, 0), "rate": round(rate, 2),
                "baseline": round(baseline, 2), "threshold": round(threshold, 2), "since": self.since}

    def series(self, now_s: int, seconds: int = 300) -> list[list[int]]:
        return [[s, self.counts.get(s, 0)] for s in range(now_s - seconds, now_s)]


@dataclass(eq=False)
class Client:
    types: tuple[str, ...] | None
    transport: asyncio.Transport | None
    maxlen: int
    buf: collections.deque = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: str = ""

    def offer(self, key: tuple[int, int] | None, etype: str, frame: bytes) -> bool:
        if self.dropped or not wanted(self.types, etype):
            return True
        if len(self.buf) >= self.maxlen:
            self.drop("slow")
            return False
        self.buf.append((key, frame))
        self.wake.set()
        return True

    def drop(self, why: str) -> None:
        self.dropped = why
        self.buf.clear()
        self.wake.set()
        if self.transport is not None and why == "slow":
            # a client that stopped reading leaves its handler parked in drain(); closing wakes it
            self.transport.abort()


class Hub:
    """One XREAD loop per process; per-client bounded buffers; the flood meter and queue depths once a second."""

    def __init__(self, r: aioredis.Redis, k: Keys, *, client_buffer: int = 1000, heartbeat_s: float = 15.0,
                 block_ms: int = 1000, meter: FloodMeter | None = None):
        self.r, self.k = r, k
        self.client_buffer, self.heartbeat_s, self.block_ms = client_buffer, heartbeat_s, block_ms
        self.meter = meter or FloodMeter()
        self.clients: set[Client] = set()
        self.last_id = "0-0"
        self.dropped_total = 0
        self.teams: set[str] = set()
        self.group_hits: collections.deque = collections.deque()  # (second, gid) of grouped/grew/opened events
        # second -> [ticket.classified, ticket.escalated] counts: per-second buckets stay small in a flood
        self.classified: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
        self.samples: dict[str, str] = {}
        self.last_flood: dict | None = None
        self.last_queues: dict | None = None
        self.last_breaker: dict | None = None
        self._task: asyncio.Task | None = None
        self.started = int(time.time())

    async def start(self) -> None:
        last = await self.r.xrevrange(self.k.events, count=1)
        self.last_id = last[0][0].decode() if last else "0-0"
        for a in await self.r.smembers(self.k.agents):
            skills = await self.r.hkeys(self.k.agent(a.decode()))
            self.teams.update(s.decode()[6:] for s in skills if s.startswith(b"skill:"))
        self._task = asyncio.create_task(self._run(), name="events-hub")

    async def stop(self, timeout_s: float = 5.0) -> None:
        self.close_clients()
        if self._task:
            self._task.cancel()
            # bounded: a reader cancelled inside a blocking XREAD must not hold the shutdown up
            done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
            if not done:
                log.warning("events.hub_stop_timeout", seconds=timeout_s)

    def close_clients(self) -> None:
        for c in list(self.clients):
            c.drop("shutdown")
        self.clients.clear()

    async def _run(self) -> None:
        next_tick = int(time.time()) + 1
        while True:
            try:
                timeout = max(1, min(self.block_ms, int((next_tick - time.time()) * 1000)))
                resp = await self.r.xread({self.k.events: self.last_id}, count=1000, block=timeout)
                for _, entries in resp or ():
                    self._fan_out(entries)
                if time.time() >= next_tick:
                    now_s = int(time.time())
                    next_tick = now_s + 1
                    await self._tick(now_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis blip: keep the clients, retry from the same id
                log.warning("events.read_failed", error=str(exc))
                await asyncio.sleep(1)

    def _fan_out(self, entries) -> None:
        for eid, fields in entries:
            eid = eid.decode()
            etype, frame = render(eid, fields)
            key = sid(eid)
            self._observe(key[0], etype, fields)
            for c in list(self.clients):
                if not c.offer(key, etype, frame):
                    self.clients.discard(c)
                    self.dropped_total += 1
                    log.info("events.client_dropped", reason="slow", buffer=self.client_buffer)
            self.last_id = eid

    def _observe(self, ts_ms: int, etype: str, fields: dict[bytes, bytes]) -> None:
        if etype == "ticket.received":
            self.meter.add(ts_ms)
        elif etype in ("ticket.grouped", "incident.grew", "incident.opened", "incident.reopened"):
            g = fields.get(b"group")
            if g:
                self.group_hits.append((ts_ms // 1000, g.decode()))
        elif etype in ("ticket.escalated", "ticket.classified"):
            self.classified[ts_ms // 1000][etype == "ticket.escalated"] += 1
        elif etype in ("ticket.queued", "ticket.assigned", "ticket.attached"):
            t = fields.get(b"team")
            if t:
                self.teams.add(t.decode())

    def escalation_rate(self, now_s: int, window_s: int = 60) -> float | None:
        """Share of tickets sent to the fallback in the last minute. An escalated ticket emits
        ticket.escalated and later ticket.classified; every other ticket emits only ticket.classified."""
        for s in [s for s in self.classified if s < now_s - window_s]:
            del self.classified[s]
        tickets = sum(c[0] for c in self.classified.values())
        escalated = sum(c[1] for c in self.classified.values())
        return round(min(1.0, escalated / tickets), 4) if tickets else None

    def _clusters(self, now_s: int, window_s: int = 60, top: int = 5) -> list[tuple[str, int]]:
        while self.group_hits and self.group_hits[0][0] < now_s - window_s:
            self.group_hits.popleft()
        counts = collections.Counter(g for _, g in self.group_hits)
        return [(g, n) for g, n in counts.most_common(top) if n > 1]

    async def _tick(self, now_s: int) -> None:
        flood = self.meter.tick(now_s)
        flood["escalation_rate"] = self.escalation_rate(now_s)
        if flood["changed"]:
            log.info("events.flood_state", state=flood["state"], rate=flood["rate"], baseline=flood["baseline"])
        clusters = self._clusters(now_s)
        teams = sorted(self.teams)
        async with self.r.pipeline(transaction=False) as pipe:
            for g, _ in clusters:
                pipe.hmget(self.k.group(g), "size", "sample", "incident", "status")
            for t in teams:
                pipe.zcard(self.k.queue(t))
            pipe.hgetall(self.k.breaker)
            res = await pipe.execute()
        brk = {k.decode(): v.decode() for k, v in res.pop().items()}
        if brk:  # the breaker's current state, for pages that connect between its transitions
            self.last_breaker = {"type": "breaker.state", "state": brk.get("state", "closed"),
                                 "reason": brk.get("reason", ""), "latency_ms": brk.get("last_latency_ms"),
                                 "ts": int(brk.get("changed_at") or 0) or None,
                                 "escalation_rate": flood["escalation_rate"]}
        flood["clusters"] = []
        for (g, n), (size, sample, inc, status) in zip(clusters, res[:len(clusters)]):
            flood["clusters"].append({"group": g, "last_60s": n, "size": int(size or 0),
                                      "sample": (sample or b"").decode(errors="replace")[:160],
                                      "incident": inc == b"1", "status": (status or b"open").decode()})
        self.last_flood = flood
        self.last_queues = {"type": "queue.depths", "queues": dict(zip(teams, res[len(clusters):]))}
        for ev in (flood, self.last_queues):
            frame = frame_noid(ev)
            for c in list(self.clients):
                if not c.offer(None, ev["type"], frame):
                    self.clients.discard(c)
                    self.dropped_total += 1

    def snapshot(self) -> dict:
        now = int(time.time())
        return {"type": "snapshot", "flood": self.last_flood, "queues": self.last_queues, "breaker": self.last_breaker,
                "series": self.meter.series(now, min(self.meter.keep_s, now - self.started)), "server_time": now}
