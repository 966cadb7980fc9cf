"""Admission control: the webhook answers 429 (with Retry-After and the figures) while the ingest backlog is over
ROUTING_MAX_INGEST_LAG, instead of queueing without bound; every 429 and 503 carries a Retry-After.

One background task per API process reads the backlog every 200 ms (so a request only compares two numbers),
estimates how fast the enrich stage drains it, and takes its turn at the upkeep every API and worker process shares
through leases in Redis (infra/maintenance.py): trimming grouped streams up to what every group has acked every few
seconds, deleting dead consumers and pruning index entries of expired tickets every ROUTING_HOUSEKEEPING_S. A Redis
refusing writes at maxmemory (OOM) is a 503 too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass

import structlog
from aiohttp import web
from redis.exceptions import OutOfMemoryError

from ..errors import RoutingError
from ..infra import backlog, maintenance
from ..infra.runtime import consumer_name
from .responses import jresponse
from .state import STATE

log = structlog.get_logger("admission")

REFRESH_S = 0.2
DEFAULT_RETRY_S = 1
MAX_RETRY_S = 60
RETRY_AFTER = web.RequestKey("retry_after", int)


class Overloaded(RoutingError):
    """The ingest backlog is over the limit: `lag`, `limit` and `retry_after_s` are in the error."""

    status = 429
    code = "overloaded"


class Unavailable(RoutingError):
    """Redis cannot take the write now (out of memory, or not on disk in time): retry after `retry_after_s`."""

    status = 503
    code = "unavailable"


@dataclass
class Backlog:
    """The latest reading: ingest backlog, the drain rate of the enrich stage (entries/s, smoothed), when read."""

    lag: int = 0
    rate: float = 0.0
    read_at: float = 0.0
    _processed: int | None = None

    def update(self, lag: int, processed: int, now: float) -> None:
        if self._processed is not None and now > self.read_at:
            inst = max(0, processed - self._processed) / (now - self.read_at)
            self.rate = inst if self.rate == 0 else 0.8 * self.rate + 0.2 * inst
        self.lag, self._processed, self.read_at = lag, processed, now

    def wait_s(self, limit: int) -> int:
        """Seconds until the backlog is back under the limit at the current drain rate (1..60)."""
        over = max(0, self.lag - limit) + 1
        if self.rate <= 0:
            return 5
        return max(DEFAULT_RETRY_S, min(MAX_RETRY_S, math.ceil(over / self.rate)))

    def figures(self, limit: int) -> dict:
        return {"lag": self.lag, "limit": limit, "retry_after_s": self.wait_s(limit),
                "drain_per_s": round(self.rate, 1)}


BACKLOG = web.AppKey("backlog", Backlog)


def overloaded(app: web.Application) -> dict | None:
    """The figures when the ingest backlog is over the limit, else None (the cached reading; no Redis call)."""
    limit = app[STATE].settings.max_ingest_lag
    b = app[BACKLOG]
    return b.figures(limit) if b.lag > limit else None


def admit(request: web.Request) -> None:
    """Raise Overloaded (429) when the ingest backlog is over ROUTING_MAX_INGEST_LAG."""
    over = overloaded(request.app)
    if over:
        request[RETRY_AFTER] = over["retry_after_s"]
        raise Overloaded(f"the ingest backlog ({over['lag']} tickets) is over the limit ({over['limit']}); retry "
                         f"after {over['retry_after_s']} s with the same id and body", **over)


async def _watch(app: web.Application, stop: asyncio.Event) -> None:
    st, b = app[STATE], app[BACKLOG]
    last_upkeep, failing, holder = 0.0, False, "api-" + consumer_name()
    while not stop.is_set():
        try:
            lag, done = await backlog.ingest_backlog(st.redis, st.keys), await backlog.processed(st.redis, st.keys)
            b.update(lag, done, time.monotonic())
            if time.monotonic() - last_upkeep > maintenance.LOOK_EVERY_S:
                # trimming and housekeeping, by whichever process (API or worker) holds the job's lease
                last_upkeep = time.monotonic()
                await maintenance.upkeep(st.redis, st.keys, st.settings, holder)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: keep the last reading; the doors answer 503 on their own
            if not failing:
                log.warning("admission.read_failed", error=str(exc))
            failing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REFRESH_S)


async def _watcher(app: web.Application):
    # Stopped by an event, not only by cancel(): a cancel that lands inside a Redis call can be swallowed by the
    # client, and the loop then slept and read again forever, hanging the app's shutdown (seen in the test suite).
    stop = asyncio.Event()
    task = asyncio.create_task(_watch(app, stop))
    yield
    stop.set()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), 5)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)


@web.middleware
async def oom_middleware(request: web.Request, handler):
    """Redis at maxmemory (noeviction) refuses the write: a 503 to retry, not a 500."""
    try:
        return await handler(request)
    except OutOfMemoryError as exc:
        raise Unavailable("Redis is out of memory and refuses writes; retry later with the same id and body",
                          retry_after_s=DEFAULT_RETRY_S) from exc


async def _retry_after(request: web.Request, response: web.StreamResponse) -> None:
    if response.status in (429, 503) and "Retry-After" not in response.headers:
        response.headers["Retry-After"] = str(request.get(RETRY_AFTER, DEFAULT_RETRY_S))


def setup(app: web.Application) -> None:
    app[BACKLOG] = Backlog()
    app.cleanup_ctx.append(_watcher)
    app.on_response_prepare.append(_retry_after)


def overload_response(request: web.Request, detailed: bool) -> web.Response | None:
    """/healthz while the ingest backlog is over the limit: 503 "overloaded" with Retry-After; the figures only for
    a caller allowed the detail (anonymous callers get the status and the wait)."""
    over = overloaded(request.app)
    if not over:
        return None
    request[RETRY_AFTER] = over["retry_after_s"]
    body = {"status": "overloaded", "redis": True, "retry_after_s": over["retry_after_s"]}
    if detailed:
        body["ingest"] = over
    return jresponse(body, 503)
