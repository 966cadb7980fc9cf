"""The ingest backlog (what admission control caps) and trimming of grouped streams up to what every group acked.

A stream a consumer group reads is never trimmed by length (MAXLEN would delete entries nobody has read or
acked). Instead `trim_acked` removes, with XTRIM MINID, only entries below the oldest one any group still needs:
its oldest pending entry, else the last one it was delivered. Unprocessed entries are never trimmed.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .keys import STAGE_INPUTS, Keys

INGEST_GROUP = "enrich"


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _id(v: str) -> tuple[int, int]:
    ms, _, seq = v.partition("-")
    return int(ms), int(seq or 0)


async def ingest_backlog(r: aioredis.Redis, k: Keys) -> int:
    """Entries of the ingest lanes the enrich group has not finished: lag (unread) + pending (read, not acked).
    A lane with no group yet counts whole (XLEN); a lag Redis cannot compute (nil) counts as XLEN too."""
    lanes = (k.ingest_urgent, k.ingest)
    async with r.pipeline(transaction=False) as pipe:
        for lane in lanes:
            pipe.xinfo_groups(lane)
            pipe.xlen(lane)
        replies = await pipe.execute(raise_on_error=False)
    total = 0
    for i, _lane in enumerate(lanes):
        groups, length = replies[2 * i], replies[2 * i + 1]
        length = length if isinstance(length, int) else 0
        group = None if isinstance(groups, Exception) else next(
            (g for g in groups if _s(g["name"]) == INGEST_GROUP), None)
        if group is None or group.get("lag") is None:
            total += length
        else:
            total += int(group["lag"]) + int(group["pending"])
    return total


async def processed(r: aioredis.Redis, k: Keys) -> int:
    """Entries the enrich stage committed so far, all workers (its drain rate is the change of this)."""
    return int(await r.hget(k.stats, f"processed:{INGEST_GROUP}") or 0)


async def safe_min_id(r: aioredis.Redis, stream: str) -> str | None:
    """The oldest id some group of `stream` still needs; None when the stream has no group (keep everything)."""
    try:
        groups = await r.xinfo_groups(stream)
    except ResponseError:  # no such stream
        return None
    needed: list[tuple[int, int]] = []
    for g in groups:
        if int(g["pending"]):
            summary = await r.xpending(stream, _s(g["name"]))
            needed.append(_id(_s(summary["min"])))
        else:
            needed.append(_id(_s(g["last-delivered-id"])))
    if not needed:
        return None
    ms, seq = min(needed)
    return f"{ms}-{seq}"


async def trim_acked(r: aioredis.Redis, k: Keys, dedup_window_s: int) -> dict[str, int]:
    """XTRIM MINID ~ each grouped stream below what its groups still need; returns entries trimmed per stream.
    The deduped stream also keeps the dedup window (a starting dedup worker reads it back from now - W)."""
    trimmed = {}
    for attrs in STAGE_INPUTS.values():
        for attr in attrs:
            stream = getattr(k, attr)
            minid = await safe_min_id(r, stream)
            if minid is None:
                continue
            if attr == "deduped":
                window = int(time.time() * 1000) - dedup_window_s * 1000
                minid = min(minid, f"{window}-0", key=_id)
            trimmed[attr] = await r.xtrim(stream, minid=minid, approximate=True)
    return trimmed
