"""Workers as real OS processes sharing the stages through consumer groups, against the real Redis."""

from __future__ import annotations

import orjson

from fixtures import InProcessPipeline, Worker, check_capacity_invariant, wait_for


async def _consumers(r, stream, group) -> set[str]:
    try:
        return {c["name"].decode() for c in await r.xinfo_consumers(stream, group)}
    except Exception:
        return set()


async def _ready(r, k, names) -> bool:
    for stream, group in ((k.ingest, "enrich"), (k.enriched, "dedup"), (k.deduped, "route")):
        if not set(names) <= await _consumers(r, stream, group):
            return False
    return True


async def _routed_ids(r, k) -> list[str]:
    return [f[b"ticket_id"].decode() for _, f in await r.xrange(k.routed)]


def _tickets(n, tag):
    texts = ["my card has not arrived yet", "the money transfer never reached my friend",
             "ATM did not give me my cash", "someone stole my card", "why do you need to verify my identity",
             "what exchange rate do you use for euros"]
    return [{"id": f"{tag}-{i}", "subject": f"Ticket {i}", "body": f"{texts[i % len(texts)]} (ref {tag}-{i})"}
            for i in range(n)]


async def test_two_worker_processes_share_http_and_stream_tickets_exactly_once(settings, r, tmp_path):
    """An HTTP ticket, a stream ticket and 500 more, through two worker processes: each routed exactly once."""
    workers = [Worker(settings, f"w{i}", tmp_path) for i in (1, 2)]
    try:
        async with InProcessPipeline(settings, r, stages=[]) as p:  # the API only; the workers do the work
            k = p.k
            await wait_for(lambda: _ready(r, k, ["w1", "w2"]), timeout=120, interval=0.5)
            resp = await p.client.post("/v1/tickets", json={"id": "via-http", "subject": "Card lost",
                                                            "body": "I lost my card on the train"})
            assert resp.status == 202
            await r.xadd(k.ingest, {"data": orjson.dumps({"id": "via-stream", "subject": "Transfer missing",
                                                          "body": "my transfer has not arrived"})})
            async with r.pipeline(transaction=False) as pipe:
                for t in _tickets(500, "bulk"):
                    pipe.xadd(k.ingest, {"data": orjson.dumps(t)})
                await pipe.execute()

            async def all_routed():
                ids = await _routed_ids(r, k)
                return ids if len(ids) >= 502 else None

            ids = await wait_for(all_routed, timeout=180, interval=0.5)
            assert len(ids) == 502 and len(set(ids)) == 502
            assert {"via-http", "via-stream"} <= set(ids)
            for tid in ("via-http", "via-stream"):
                rec = await (await p.client.get(f"/v1/tickets/{tid}")).json()
                assert rec["status"] in ("assigned", "queued") and rec["enrich"]["model"] and rec["dedup"]["group"]
                assert rec["timings"]["ms"]["total"] is not None
            # both processes did work in every stage
            for stream, group in ((k.ingest, "enrich"), (k.enriched, "dedup"), (k.deduped, "route")):
                info = {c["name"].decode(): c for c in await r.xinfo_consumers(stream, group)}
                assert set(info) == {"w1", "w2"}
            assert (await r.hget(k.stats, "processed:enrich")) is not None
            await check_capacity_invariant(r, k)
            assert await r.xlen(k.dead) == 0
    finally:
        for w in workers:
            assert w.kill(sig=15) == 0, w.output()[-2000:]  # SIGTERM: graceful exit 0


async def test_sigkilled_worker_entries_are_reclaimed_by_another(settings, r, tmp_path):
    from routing_engine.infra.agents import load_agents_file
    from routing_engine.infra.keys import Keys

    k = Keys(settings.prefix)
    await load_agents_file(r, k)
    a = Worker(settings, "victim", tmp_path, stages="enrich,dedup,route")
    b = None
    try:
        await wait_for(lambda: _ready(r, k, ["victim"]), timeout=120, interval=0.5)
        async with r.pipeline(transaction=False) as pipe:
            for t in _tickets(300, "kill"):
                pipe.xadd(k.ingest, {"data": orjson.dumps(t)})
            await pipe.execute()

        async def mid_batch():
            done = int(await r.hget(k.stats, "processed:enrich") or 0)
            pend = await r.xpending(k.ingest, "enrich")
            return done > 0 and pend["pending"] > 0 and done < 250

        await wait_for(mid_batch, timeout=60, interval=0.02)
        a.kill()  # SIGKILL: no chance to ack what it holds
        pending = (await r.xpending(k.ingest, "enrich"))["pending"]
        assert pending > 0
        b = Worker(settings, "rescuer", tmp_path)

        async def all_routed():
            ids = await _routed_ids(r, k)
            return ids if len(ids) >= 300 else None

        ids = await wait_for(all_routed, timeout=180, interval=0.5)
        assert len(ids) == 300 and len(set(ids)) == 300
        assert int(await r.hget(k.stats, "processed:route")) == 300
        assert "stage.reclaimed" in b.output()
        await check_capacity_invariant(r, k)
    finally:
        if b:
            b.kill(sig=15)


async def test_dedup_reads_back_only_what_other_workers_decided(settings, r):
    """A dedup worker never reads its own decisions back from the shared log (its tail moves past them when it
    commits); what another worker decided it replays, and both then hold the same groups."""
    import numpy as np

    from routing_engine.domain.messages import Enriched
    from routing_engine.domain.ticket import Ticket
    from routing_engine.infra.keys import Keys
    from routing_engine.infra.runtime import Entry, StageContext
    from routing_engine.infra.scripts import Scripts
    from routing_engine.stages.dedup import DedupStage

    k = Keys(settings.prefix)

    def batch(*ids):
        v = np.ones(4, dtype=np.float32) / 2
        msgs = [Enriched(Ticket(t, subject="card", body="broken"), 0,
                         {"category": "atm", "team": "cards", "urgency": 0.1, "urgent": False}, v) for t in ids]
        return [Entry(f"{n + 1}-0", m.to_fields(), k.enriched, m) for n, m in enumerate(msgs)]

    w1, w2 = DedupStage(settings, k), DedupStage(settings, k)
    for name, st in (("w1", w1), ("w2", w2)):
        await st.setup(StageContext(r, Scripts(r, settings, k), name))
    await w1.process(batch("a", "b"))
    last = (await r.xrevrange(k.dedup_log, count=1))[0][0].decode()
    assert w1._tail == last and w1.seq == 2
    applied = []
    w1.grouper.apply = lambda *a, **kw: applied.append(a[0])  # nothing of its own comes back
    await w1._catch_up()
    assert applied == []
    del w1.grouper.apply
    await w2.process(batch("c"))  # w2 replays a and b first, then c joins their group
    assert w2.grouper.group_of_ticket("c") == "a" and w2.seq == 3
    await w1._catch_up()
    assert w1.grouper.group_of_ticket("c") == "a" and w1.seq == 3
