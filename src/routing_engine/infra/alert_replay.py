"""`routing-engine replay-alerts`: put dead-lettered alerts back on the alerts stream, each at most once.

A dead letter of the alerts stage keeps the alert's original fields; the replay writes them back with the
alert's first id (receivers de-duplicate on alert_id) and a fresh retry window (try count and first_at reset).
Which dead entries were replayed is kept in {prefix}:alerts:replayed, checked and written in the same script
as the re-queue (streams/alerts_replay.lua), so a second run sends nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from ..config import Settings
from .keys import Keys
from .scripts import Scripts

PAGE = 500
# Fields a retry adds to an alert: a replay starts the alert's count and window afresh.
RETRY_FIELDS = ("attempt", "first_at")


@dataclass
class Replayed:
    dead_id: str
    alert_id: str
    reason: str
    new_id: str | None  # the alerts entry written; None when listed only, or replayed before
    before: bool = False  # replayed by an earlier run


def alert_fields(letter: dict[bytes, bytes]) -> tuple[str, dict[str, str]]:
    """The alert id and the fields to write back, from one dead letter."""
    fields = orjson.loads(letter[b"fields"])
    alert_id = fields.get("alert_id") or letter[b"entry_id"].decode()
    out = {k: v for k, v in fields.items() if k not in RETRY_FIELDS}
    out["alert_id"] = alert_id
    return alert_id, out


async def dead_alerts(r: aioredis.Redis, k: Keys, since: str):
    """(dead id, letter) for each dead letter of the alerts stage from `since` (inclusive) on."""
    start = since
    while True:
        rows = await r.xrange(k.dead, min=start, max="+", count=PAGE)
        for eid, letter in rows:
            if letter.get(b"stage") == b"alerts":
                yield eid.decode(), letter
        if len(rows) < PAGE:
            return
        start = "(" + rows[-1][0].decode()


async def replay_alerts(r: aioredis.Redis, s: Settings, *, since: str = "-", dry_run: bool = False,
                        say: Callable[[str], None] = print) -> list[Replayed]:
    k = Keys(s.prefix)
    scripts = Scripts(r, s, k)
    done: list[Replayed] = []
    async for dead_id, letter in dead_alerts(r, k, since):
        alert_id, fields = alert_fields(letter)
        reason = letter.get(b"reason", b"").decode(errors="replace")
        if dry_run:
            before = bool(await r.sismember(k.alerts_replayed, dead_id))
            item = Replayed(dead_id, alert_id, reason, None, before)
            say(f"{'replayed before' if before else 'would replay'}  dead {dead_id}  alert {alert_id}  "
                f"({fields.get('type', '?')})  reason: {reason}")
        else:
            new_id = await scripts.alerts_replay(dead_id=dead_id, fields=fields)
            new_id = new_id.decode() if new_id else None
            item = Replayed(dead_id, alert_id, reason, new_id, new_id is None)
            say(f"skipped (replayed before)  dead {dead_id}  alert {alert_id}" if new_id is None else
                f"replayed  dead {dead_id}  alert {alert_id}  ({fields.get('type', '?')}) -> {k.alerts} {new_id}")
        done.append(item)
    fresh = sum(not x.before for x in done)
    say(f"{fresh} alert(s) {'to replay' if dry_run else 'replayed'}, {len(done) - fresh} replayed before"
        + (" (dry run: nothing written)" if dry_run else ""))
    return done
