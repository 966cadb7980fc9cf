"""The Lua scripts of streams/, registered on a client, plus the argument plumbing of commit.lua."""

from __future__ import annotations

import time
from typing import Awaitable

import redis.asyncio as aioredis

from .config import Settings
from .contracts import lua
from .keys import Keys


class Scripts:
    def __init__(self, r: aioredis.Redis):
        self.ingest = r.register_script(lua("ingest"))
        self.commit = r.register_script(lua("commit"))
        self.group = r.register_script(lua("group"))
        self.route = r.register_script(lua("route"))
        self.resolve = r.register_script(lua("resolve"))
        self.resolve_incident = r.register_script(lua("resolve_incident"))


def now_ms() -> int:
    return int(time.time() * 1000)


def commit_entry(
    pipe, scripts: Scripts, s: Settings, k: Keys, *, input_stream: str, output_stream: str, group: str,
    entry_id: str, stage: str, status: str, ticket_id: str, output: bytes = b"", emb: bytes = b"",
    owner: str = "", event: str = "", event_data: bytes = b"", record: dict | None = None,
) -> Awaitable:
    """Queue commit.lua for one entry on a (MULTI) pipeline: record fields, next-stream entry, XACK."""
    flat: list = []
    for key, value in (record or {}).items():
        flat += [key, value]
    return scripts.commit(
        keys=[input_stream, output_stream, k.ticket(ticket_id), k.idx_all, k.idx_status(status), k.events],
        args=[group, entry_id, stage, status, now_ms(), s.stream_maxlen, s.ticket_ttl_s, ticket_id,
              output, emb, owner, k.base, event, event_data, *flat],
        client=pipe,
    )
