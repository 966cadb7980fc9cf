"""A real `routing-engine worker` survives a poison ticket: the enrich commit of a ticket whose record key holds the
wrong type fails (WRONGTYPE) at every delivery; it is retried, dead-lettered with the reason after max_deliveries,
the worker keeps running and routes the tickets around it and after it, and SIGTERM still stops it with exit 0."""

from __future__ import annotations

import orjson

from routing_engine.infra.agents import load_agents_file
from routing_engine.infra.keys import Keys

from fixtures import Worker, wait_for

MAX = 3


async def _routed(r, k) -> list[str]:
    return [f[b"ticket_id"].decode() for _, f in await r.xrange(k.routed)]


async def _ticket(r, k, tid: str, text: str) -> None:
    await r.xadd(k.ingest, {"data": orjson.dumps({"id": tid, "subject": "Card", "body": text})})


async def test_a_worker_process_survives_a_poison_ticket(settings, r, tmp_path):
    k = Keys(settings.prefix)
    await load_agents_file(r, k)
    w = Worker(settings, "w1", tmp_path, ROUTING_MAX_DELIVERIES=MAX)
    try:
        async def ready():
            try:
                return any(c["name"] == b"w1" for c in await r.xinfo_consumers(k.deduped, "route"))
            except Exception:
                return False

        await wait_for(ready, timeout=120, interval=0.5)
        await r.set(k.ticket("poison-1"), "not a hash")  # the record enrich's commit.lua must update
        await _ticket(r, k, "before-1", "my card has not arrived yet")
        await _ticket(r, k, "poison-1", "someone stole my card")
        await _ticket(r, k, "before-2", "the ATM did not give me my cash")

        async def dead():
            return [{a.decode(): b.decode() for a, b in f.items()} for _, f in await r.xrange(k.dead)]

        letters = await wait_for(dead, timeout=60, interval=0.25)
        assert len(letters) == 1, letters
        assert letters[0]["stage"] == "enrich"
        assert letters[0]["reason"].startswith(f"failed {MAX} times: ") and "WRONGTYPE" in letters[0]["reason"]
        assert w.proc.poll() is None, w.output()[-3000:]
        await _ticket(r, k, "after-1", "what exchange rate do you use for euros")

        async def routed():
            ids = await _routed(r, k)
            return ids if {"before-1", "before-2", "after-1"} <= set(ids) else None

        ids = await wait_for(routed, timeout=60, interval=0.25)
        assert sorted(ids) == ["after-1", "before-1", "before-2"]  # each once; the poison never
        assert await r.get(k.ticket("poison-1")) == b"not a hash"
        assert await r.hlen(k.fails("enrich")) == 0
    finally:
        rc = w.kill(sig=15)
    log = w.output()
    assert rc == 0, log[-3000:]  # SIGTERM: graceful exit 0
    assert log.count('"stage.entry_failed"') == MAX and "stage.died" not in log and "stage.error" not in log
