"""Chaos: a flood through two real worker processes, one SIGKILLed mid-flood while an operator resolves tickets
as they come. End state: every ticket routed exactly once, every load equals the tickets holding its slots,
nothing left pending in any group. (Redis restarts are out of scope here: the test Redis is shared.)"""

from __future__ import annotations

import asyncio

import orjson

from fixtures import Worker, check_capacity_invariant, wait_for

N = 300
TEXTS = ["my card has not arrived yet", "the money transfer never reached my friend", "ATM did not give me my cash",
         "someone stole my card", "why do you need to verify my identity", "what exchange rate do you use for euros"]


async def _ready(r, k, names) -> bool:
    for stream, group in ((k.ingest, "enrich"), (k.enriched, "dedup"), (k.deduped, "route")):
        try:
            have = {c["name"].decode() for c in await r.xinfo_consumers(stream, group)}
        except Exception:
            return False
        if not set(names) <= have:
            return False
    return True


async def _resolver(r, k, scripts, stop: asyncio.Event) -> int:
    """Resolve assigned tickets while the flood runs, so slots free and queues drain under the routing."""
    from routing_engine.infra.operations import resolve_ticket

    n = 0
    while not stop.is_set():
        for tid in await r.zrange(k.idx_status("assigned"), 0, 4):
            if (await resolve_ticket(r, k, scripts, tid.decode())).outcome == "resolved":
                n += 1
        await asyncio.sleep(0.05)
    return n


async def test_flood_with_a_worker_sigkilled_routes_each_ticket_once(settings, r, tmp_path):
    from routing_engine.infra.agents import load_agents_file, put_agent
    from routing_engine.infra.keys import Keys
    from routing_engine.infra.scripts import Scripts

    k = Keys(settings.prefix)
    await load_agents_file(r, k)
    for a in ("ana", "ben", "chen", "dana", "eli", "fatima", "gus"):  # few slots: queues build up
        agent = {"id": a, "name": a, "capacity": 2, "active": True,
                 "skills": {t: 1.0 for t in ("cards", "payments", "cash_and_topups", "security", "accounts",
                                             "fx_and_fees", "general", "triage")}}
        await put_agent(r, k, agent)
    workers = [Worker(settings, f"c{i}", tmp_path) for i in (1, 2)]
    stop = asyncio.Event()
    resolver = None
    try:
        await wait_for(lambda: _ready(r, k, ["c1", "c2"]), timeout=120, interval=0.5)
        async with r.pipeline(transaction=False) as pipe:
            for i in range(N):
                t = {"id": f"chaos-{i}", "subject": f"Ticket {i}", "body": f"{TEXTS[i % len(TEXTS)]} (ref {i})"}
                pipe.xadd(k.ingest, {"data": orjson.dumps(t)})
            await pipe.execute()
        resolver = asyncio.create_task(_resolver(r, k, Scripts(r, settings, k), stop))

        async def mid_flood():
            return 0 < int(await r.hget(k.stats, "processed:enrich") or 0) < N - 50

        await wait_for(mid_flood, timeout=60, interval=0.02)
        workers[0].kill()  # SIGKILL: what it holds stays pending until the other worker reclaims it

        async def all_routed():
            ids = [f[b"ticket_id"].decode() for _, f in await r.xrange(k.routed)]
            return ids if len(ids) >= N else None

        ids = await wait_for(all_routed, timeout=120, interval=0.5)
        stop.set()
        resolved = await asyncio.wait_for(resolver, 30)
        assert len(ids) == N and set(ids) == {f"chaos-{i}" for i in range(N)}  # one routed entry per ticket
        assert resolved > 0  # slots were freed and refilled while tickets were being routed

        async def nothing_pending():
            return all([(await r.xpending(s, g))["pending"] == 0  # the urgent lanes too
                        for g in ("enrich", "dedup", "route") for s in k.stage_inputs(g) if await r.exists(s)])

        await wait_for(nothing_pending, timeout=30, interval=0.5)  # the killed worker's entries were reclaimed
        await check_capacity_invariant(r, k)
        assert await r.xlen(k.dead) == 0
    finally:
        stop.set()
        if resolver and not resolver.done():
            resolver.cancel()
        for w in workers:
            w.kill(sig=15)
