"""ROUTING_ACK_AFTER_FSYNC: the webhook answers 202 only once the ticket's write is in the AOF on disk.

After the ingest scripts, the same connection (one pipeline) sends WAITAOF 1 0 <timeout>: Redis replies when its
AOF holds everything this connection wrote, fsynced. Not on disk in time is a 503 with Retry-After (retrying
with the same id is safe). WAITAOF needs Redis/Valkey 7.2+ with appendonly on: the app checks it at start and
refuses to start otherwise, with the reason.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from .admission import Unavailable
from .state import STATE

log = structlog.get_logger("durability")


class FsyncUnsupported(RuntimeError):
    """ROUTING_ACK_AFTER_FSYNC asked of a Redis that cannot answer WAITAOF."""


async def execute(app: web.Application, pipe) -> list:
    """Run the pipeline of ingest calls; with the option on, also wait for their fsync. Returns their replies."""
    s = app[STATE].settings
    if not s.ack_after_fsync:
        return await pipe.execute()
    pipe.execute_command("WAITAOF", 1, 0, s.fsync_timeout_ms)
    *replies, (local, _replicas) = await pipe.execute()
    if int(local) < 1:
        raise Unavailable(f"accepted but not on disk within {s.fsync_timeout_ms} ms (ROUTING_ACK_AFTER_FSYNC); "
                          "retry with the same id and body", retry_after_s=1)
    return replies


async def check(app: web.Application):
    """At start: with the option on, WAITAOF must work here (Redis 7.2+, appendonly yes), or the app won't start."""
    st = app[STATE]
    if st.settings.ack_after_fsync:
        try:
            await st.redis.execute_command("WAITAOF", 1, 0, st.settings.fsync_timeout_ms)
        except Exception as exc:
            raise FsyncUnsupported(
                f"ROUTING_ACK_AFTER_FSYNC=true needs WAITAOF (Redis or Valkey 7.2+, with appendonly yes); this "
                f"Redis answered: {exc}") from exc
        log.info("durability.ack_after_fsync", timeout_ms=st.settings.fsync_timeout_ms)
    yield


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(check)
