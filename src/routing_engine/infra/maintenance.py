"""Upkeep of what no stage removes: the grouped streams, trimmed below what every group acked (infra/backlog.py), and
the housekeeping sweep of dead consumers and expired index entries (infra/housekeeping.py).

Every API and worker process runs it. A lease in Redis (SET NX PX, one interval long) lets one process do each job
per interval: before, only the API's admission watcher did them, so a deployment of workers alone (the API on
other hosts, or none) let its streams grow without bound. The lease is never released early: it expires, and the
next process to look takes it, so a holder that dies costs at most one interval.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis
import structlog

from ..config import Settings
from . import backlog, housekeeping
from .keys import Keys

log = structlog.get_logger("maintenance")

TRIM_EVERY_S = 5.0  # the streams grow by at most ~5 s of traffic between trims
LOOK_EVERY_S = 1.0  # how often each process tries the leases (two SETs)


async def take_lease(r: aioredis.Redis, k: Keys, job: str, holder: str, seconds: float) -> bool:
    """True when this process holds `job` for the next `seconds` (nobody else did)."""
    return bool(await r.set(k.lease(job), holder, nx=True, px=max(1, int(seconds * 1000))))


async def upkeep(r: aioredis.Redis, k: Keys, s: Settings, holder: str) -> dict:
    """One pass: each job that is due (its lease free) and taken here is done. Returns what was done."""
    done: dict = {}
    if await take_lease(r, k, "trim", holder, TRIM_EVERY_S):
        done["trimmed"] = await backlog.trim_acked(r, k, s.dedup_window_s)
    if await take_lease(r, k, "housekeeping", holder, s.housekeeping_s):
        done["swept"] = await housekeeping.housekeep(r, k, s.consumer_idle_delete_s, s.ticket_ttl_s)
    return done


async def run(r: aioredis.Redis, k: Keys, s: Settings, holder: str, stop: asyncio.Event,
              every_s: float = LOOK_EVERY_S) -> None:
    """Until `stop` is set. Redis away: said once, tried again at the next look."""
    failing = False
    while not stop.is_set():
        try:
            await upkeep(r, k, s, holder)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:
                log.warning("maintenance.failed", error=str(exc))
            failing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)

