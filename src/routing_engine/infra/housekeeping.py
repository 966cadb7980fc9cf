"""Slow housekeeping of what nothing else removes: dead consumers of the stage groups, and index entries of expired
ticket records. The API's admission watcher (web/admission.py) runs `housekeep` every ROUTING_HOUSEKEEPING_S.

A consumer is deleted only when it holds no pending entry and has been idle longer than the limit; the check and
the XGROUP DELCONSUMER run in one script, so an entry delivered in between is never dropped from the PEL (a consumer
with pending entries waits until the runtime reclaims them). The status indexes and {prefix}:idx:all are walked
from their oldest members (older than the ticket TTL: a younger member's record cannot have expired) in bounded
chunks; a member is removed, in one script, only if its record is gone and its score is still that old (a ticket
re-ingested under the same id in between keeps its entry).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..metrics import CONSUMERS_DELETED, INDEX_PRUNED
from .keys import STAGE_INPUTS, Keys
from .scripts import lua

CHUNK = 500
MAX_CHUNKS = 20  # per index per pass: at most 10,000 members looked at, whatever the backlog of expired ones


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass
class Swept:
    """What one pass removed."""

    consumers_deleted: int = 0
    index_entries_pruned: int = 0


async def delete_dead_consumers(r: aioredis.Redis, k: Keys, idle_s: float) -> int:
    """XGROUP DELCONSUMER every consumer of a stage group with no pending entry, idle longer than `idle_s`."""
    script = r.register_script(lua("delconsumer_if_idle"))
    deleted = 0
    for group, attrs in STAGE_INPUTS.items():
        for attr in attrs:
            stream = getattr(k, attr)
            try:
                consumers = await r.xinfo_consumers(stream, group)
            except ResponseError:  # no such stream or group yet
                continue
            for c in consumers:
                if int(c["pending"]) or int(c["idle"]) <= idle_s * 1000:
                    continue
                deleted += int(await script(keys=[stream], args=[group, _s(c["name"])]))
    return deleted


async def prune_index(r: aioredis.Redis, k: Keys, index: str, cutoff_ms: int) -> int:
    """Remove the members of `index` scored <= cutoff_ms whose ticket record no longer exists, oldest first, at most
    MAX_CHUNKS chunks of CHUNK; live members are skipped over (an offset), so they are not read again this pass."""
    script = r.register_script(lua("prune_index"))
    removed, offset = 0, 0
    for _ in range(MAX_CHUNKS):
        ids = [_s(m) for m in await r.zrangebyscore(index, "-inf", cutoff_ms, start=offset, num=CHUNK)]
        if not ids:
            break
        async with r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.exists(k.ticket(i))
            alive = await pipe.execute()
        gone = [i for i, n in zip(ids, alive, strict=True) if not n]
        if gone:
            removed += int(await script(keys=[index, *(k.ticket(i) for i in gone)], args=[cutoff_ms, *gone]))
        offset += len(ids) - len(gone)
        if len(ids) < CHUNK:
            break
    return removed


async def prune_indexes(r: aioredis.Redis, k: Keys, ticket_ttl_s: int) -> int:
    """Prune {prefix}:idx:all and every status index of ids whose record expired; returns members removed."""
    cutoff_ms = int(time.time() * 1000) - ticket_ttl_s * 1000
    total = 0
    for index in (k.idx_all, *k.idx_statuses):
        total += await prune_index(r, k, index, cutoff_ms)
    return total


async def housekeep(r: aioredis.Redis, k: Keys, consumer_idle_s: float, ticket_ttl_s: int) -> Swept:
    """One pass: dead consumers, then expired index entries; counted in the Prometheus counters too."""
    swept = Swept(consumers_deleted=await delete_dead_consumers(r, k, consumer_idle_s),
                  index_entries_pruned=await prune_indexes(r, k, ticket_ttl_s))
    CONSUMERS_DELETED.inc(swept.consumers_deleted)
    INDEX_PRUNED.inc(swept.index_entries_pruned)
    return swept
