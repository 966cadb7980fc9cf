"""GET /v1/events: the live feed as Server-Sent Events, resumable with Last-Event-ID (see hub.py for the fan-out)."""

from __future__ import annotations

import asyncio
import re
import socket

import redis.asyncio as aioredis
from aiohttp import web

from ..errors import BadRequest
from .hub import Client, Hub, frame_noid, render, sid, type_filter, wanted
from .state import STATE

ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")

RETRY_MS = 2000

REPLAY_CHUNK = 500

SNDBUF = 128 * 1024


def _last_event_id(request: web.Request) -> str | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if not raw:
        return None
    raw = raw.strip()
    if not ID_RE.match(raw):
        raise BadRequest("Last-Event-ID must be a stream id like 1700000000000-0", field="Last-Event-ID")
    return raw


async def _replay(r: aioredis.Redis, stream: str, after: str, types, resp: web.StreamResponse) -> str:
    """Send every entry after `after` (exclusive) from the stream itself; returns the last id sent."""
    last = after
    while True:
        entries = await r.xrange(stream, min="(" + last, max="+", count=REPLAY_CHUNK)
        if not entries:
            return last
        out = []
        for eid, fields in entries:
            etype, frame = render(eid.decode(), fields)
            if wanted(types, etype):
                out.append(frame)
        last = entries[-1][0].decode()
        if out:
            await resp.write(b"".join(out))
        if len(entries) < REPLAY_CHUNK:
            return last


async def events(request: web.Request) -> web.StreamResponse:
    hub = request.app[STATE].hub
    types = type_filter(request.query.get("types"))
    after = _last_event_id(request)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        # a fixed, modest kernel send buffer: a stalled reader stalls our writes after ~256 KiB instead of
        # after megabytes of autotuned buffer, so the bounded per-client buffer is what decides when to drop it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    await resp.prepare(request)
    if request.method == "HEAD":  # headers only: stream bytes after them would be read as the next response
        return resp
    client = Client(types, request.transport, hub.client_buffer)
    try:
        await resp.write(f"retry: {RETRY_MS}\n\n".encode())
        if after is None:
            # live only: everything the hub reads from now on is new to this client; the hub's position goes
            # out as an id so that the browser's own reconnect resumes from here even before the first event
            hub.clients.add(client)
            here = b"id: " + hub.last_id.encode() + b"\n"
            await resp.write(here + (frame_noid(hub.snapshot()) if wanted(types, "snapshot") else b"\n"))
            last = (0, 0)
        else:
            # replay until caught up, then join the fan-out and replay once more: entries that land between
            # the two are in both the stream and the buffer; the id check below sends each once
            sent = await _replay(hub.r, hub.k.events, after, types, resp)
            hub.clients.add(client)
            sent = await _replay(hub.r, hub.k.events, sent, types, resp)
            last = sid(sent)
        while True:
            try:
                await asyncio.wait_for(client.wake.wait(), hub.heartbeat_s)
            except TimeoutError:
                await resp.write(b": heartbeat\n\n")
                continue
            client.wake.clear()
            if client.dropped:
                break
            out = []
            while client.buf:
                key, frame = client.buf.popleft()
                if key is not None:
                    if key <= last:
                        continue
                    last = key
                out.append(frame)
            if out:
                await resp.write(b"".join(out))
    except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        hub.clients.discard(client)
    return resp


async def _hub_ctx(app: web.Application):
    st = app[STATE]
    s = st.settings
    st.hub = Hub(st.redis, st.keys, client_buffer=s.sse_client_buffer, heartbeat_s=s.sse_heartbeat_s)
    await st.hub.start()
    yield
    await st.hub.stop()


async def _close_clients(app: web.Application) -> None:
    # on_shutdown runs before the server waits for open requests: end the streams so shutdown is prompt
    if app[STATE].hub is not None:
        app[STATE].hub.close_clients()


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/events", events)
    app.cleanup_ctx.append(_hub_ctx)
    app.on_shutdown.append(_close_clients)
