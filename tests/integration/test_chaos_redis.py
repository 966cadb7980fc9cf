"""Chaos: the Redis server itself SIGKILLed mid-flood and restarted on the same dir and port, under a real
`routing-engine worker` process and the webhook. The worker rides it out (the runtime waits out connection errors
and LOADING); the producer follows the README's producer's guide.

What can be lost: with AOF and `appendfsync everysec` (the embedded server's setting) a SIGKILL loses the writes
of the last ~1 s, acknowledged ones included: a ticket answered 202 may be gone, and so may any stage's progress
in that second. Redis replays the AOF as a prefix of its history, so what survives is consistent: a lost routed
entry comes with its lost XACK, and the entry is processed again. How the producer covers the gap: every ticket
acknowledged within the last 3 s before the kill, and every one whose POST failed (connection refused, 503),
is sent again after the restart with the same id and body — safe, the answer is at worst `duplicate`.

End state: every ticket routed exactly once (one routed entry per id), no agent over capacity and loads equal to
the tickets holding slots, nothing pending in any group, nothing dead-lettered."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from fixtures import Worker, check_capacity_invariant, free_port, wait_for

N = 200
TEXTS = ["my card has not arrived yet", "the money transfer never reached my friend", "ATM did not give me my cash",
         "someone stole my card", "why do you need to verify my identity", "what exchange rate do you use for euros"]
RESEND_WINDOW_S = 3.0  # > the ~1 s appendfsync everysec can lose, with a margin for the kill's own timing


def _ticket(i: int) -> dict:
    return {"id": f"rk-{i}", "subject": f"Ticket {i}", "body": f"{TEXTS[i % len(TEXTS)]} (ref {i})"}


async def _post_until_in(client, ticket: dict, acked: dict, deadline: float, refused: list) -> None:
    """The producer's guide: on a dropped connection or a 503, back off and retry with the same id and body."""
    delay = 0.05
    while time.monotonic() < deadline:
        try:
            resp = await client.post("/v1/tickets", json=ticket)
            if resp.status == 202:
                acked[ticket["id"]] = time.monotonic()
                return
            assert resp.status in (429, 503), (resp.status, await resp.text())  # anything else is a bug
            refused.append(resp.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            refused.append(type(exc).__name__)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise AssertionError(f"{ticket['id']} never accepted")


@pytest.mark.timeout(180)
async def test_redis_sigkilled_mid_flood_each_ticket_routed_once(settings, tmp_path):
    from routing_engine.infra.agents import load_agents_file, put_agent
    from routing_engine.infra.embedded_redis import EmbeddedRedis
    from routing_engine.infra.keys import Keys
    from routing_engine.web.app import make_app

    server = EmbeddedRedis(tmp_path / "redis-state", port=free_port())
    s = replace(settings, redis_url=server.start())
    r = aioredis.from_url(s.redis_url)
    k = Keys(s.prefix)
    worker = client = None
    try:
        await load_agents_file(r, k)
        for a in ("ana", "ben", "chen"):  # few slots: most tickets queue, so loads and queues are both exercised
            await put_agent(r, k, {"id": a, "name": a, "capacity": 3, "active": True,
                                   "skills": {t: 1.0 for t in ("cards", "payments", "cash_and_topups", "security",
                                                               "accounts", "fx_and_fees", "general", "triage")}})
        worker = Worker(s, "rk1", tmp_path)
        client = TestClient(TestServer(make_app(s, r)))
        await client.start_server()

        async def worker_ready():
            # every stage started (its models loaded: enrich's MiniLM can take ~10 s on a busy box, and the
            # consumers exist before that), or the flood would be over before the kill
            return worker.output().count('"event": "stage.started"') >= 3

        await wait_for(worker_ready, timeout=120, interval=0.5)
        acked: dict[str, float] = {}
        refused: list = []
        deadline = time.monotonic() + 90
        sem = asyncio.Semaphore(8)

        async def send(i, pace_s=0.0):
            await asyncio.sleep(i * pace_s)  # a flood spread over seconds, so the kill lands in the middle of it
            async with sem:
                await _post_until_in(client, _ticket(i), acked, deadline, refused)

        producer = asyncio.gather(*(send(i, 0.04) for i in range(N)))

        async def mid_flood():  # half the tickets in, and the pipeline already routing them
            return len(acked) >= N // 2 and await r.xlen(k.routed) > 0

        await wait_for(mid_flood, timeout=60, interval=0.02)
        server.proc.send_signal(signal.SIGKILL)  # no AOF flush: the last ~1 s of writes may be gone
        killed_at = time.monotonic()
        server.proc.wait(timeout=10)
        await asyncio.sleep(0.5)
        server.start()  # same dir (its AOF) and port: the worker and the API reconnect by themselves
        await producer
        # after the restart, re-send what the kill may have taken (same id and body: at worst a duplicate)
        again = [i for i in range(N) if acked[f"rk-{i}"] >= killed_at - RESEND_WINDOW_S]
        assert again and refused  # the kill landed while tickets were being accepted: some POSTs were refused
        await asyncio.gather(*(send(i) for i in again))

        async def all_routed():
            ids = [f[b"ticket_id"].decode() for _, f in await r.xrange(k.routed)]
            return ids if len(set(ids)) >= N else None

        ids = await wait_for(all_routed, timeout=90, interval=0.5)
        assert sorted(ids) == sorted(f"rk-{i}" for i in range(N))  # one routed entry per ticket, none twice

        async def nothing_pending():
            return all([(await r.xpending(stream, g))["pending"] == 0
                        for g in ("enrich", "dedup", "route") for stream in k.stage_inputs(g)
                        if await r.exists(stream)])

        await wait_for(nothing_pending, timeout=30, interval=0.5)
        await check_capacity_invariant(r, k)
        assert await r.xlen(k.dead) == 0
        assert worker.proc.poll() is None  # it rode the outage out instead of dying
    finally:
        if client is not None:
            await client.close()
        if worker is not None:
            worker.kill(sig=signal.SIGTERM)
        await r.aclose()
        server.stop()
