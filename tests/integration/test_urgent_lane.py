"""The urgent lane end to end, on the real Redis: every stage reads its urgent lane first (a loop of its own, small
batches), so an urgent ticket passes the backlogs waiting in dedup's and route's inputs; a storm's members stop being
urgent singles once its incident is open (dedup decides it for route; enrich already sends an urgent ticket of an open
incident's category to the normal lane); a crash in the middle of an urgent batch is recovered like any other.

Orders and positions are asserted (decision sequence numbers, places in {prefix}:routed), never wall-clock times."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import orjson

from routing_engine.domain.messages import Deduped, Enriched
from routing_engine.domain.ticket import Ticket
from routing_engine.infra.keys import Keys

from fixtures import InProcessPipeline, wait_for

DIM = 384
URGENT_TEXT = {"subject": "URGENT: card stolen", "body": "Someone stole my card and is spending money right now!!"}


def enriched(tid: str, vec: np.ndarray, category: str, urgent: bool = False) -> Enriched:
    enrich = {"category": category, "team": "payments", "urgency": 0.95 if urgent else 0.2, "urgent": urgent,
              "lane": "urgent" if urgent else "normal", "confidence": 0.9, "decided_by": "lightgbm", "model": "t",
              "fast": {"top": [[category, 0.9], ["other", 0.05]]}}
    return Enriched(Ticket(tid, subject=f"s {tid}", body="b"), int(time.time() * 1000), enrich,
                    (vec / np.linalg.norm(vec)).astype(np.float32))


def random_backlog(n: int, seed: int = 7) -> list[Enriched]:
    """n normal tickets, each unlike every other (random 384-d directions, a category each): no groups."""
    rng = np.random.default_rng(seed)
    return [enriched(f"bg-{i}", rng.normal(size=DIM), f"cat-{i}") for i in range(n)]


async def xadd_all(r, stream: str, msgs) -> None:
    async with r.pipeline(transaction=False) as pipe:
        for m in msgs:
            pipe.xadd(stream, m.to_fields())
        await pipe.execute()


async def field_of(r, k, tids, name: str) -> dict[str, str | None]:
    async with r.pipeline(transaction=False) as pipe:
        for t in tids:
            pipe.hget(k.ticket(t), name)
        vals = await pipe.execute()
    return {t: (v.decode() if v is not None else None) for t, v in zip(tids, vals)}


async def ids_on(r, stream: str) -> list[str]:
    return [f[b"ticket_id"].decode() for _, f in await r.xrange(stream)]


def _all_have(r, k, tids, name):
    async def check():
        vals = await field_of(r, k, tids, name)
        return all(v is not None for v in vals.values())
    return check


async def test_an_urgent_ticket_passes_the_backlogs_waiting_for_dedup_and_route(settings, r):
    k = Keys(settings.prefix)
    batch = settings.batch_size
    backlog = random_backlog(6 * batch)
    hot = enriched("hot", np.random.default_rng(99).normal(size=DIM), "hot-cat", urgent=True)
    await xadd_all(r, k.enriched, backlog)  # dedup's input: six batches of normal tickets wait...
    await xadd_all(r, k.enriched_urgent, [hot])  # ...and one urgent ticket, after them, on the urgent lane
    ids = [m.ticket_id for m in backlog] + ["hot"]
    async with InProcessPipeline(settings, r, stages=("dedup",)):
        await wait_for(_all_have(r, k, ids, "grouped_seq"), timeout=60)
    seq = {t: int(v) for t, v in (await field_of(r, k, ids, "grouped_seq")).items()}
    # decided in the first two batches at most (one main-stream batch may have been in work), not after 192 others
    assert seq["hot"] <= 2 * batch, seq["hot"]
    assert sum(seq[m.ticket_id] > seq["hot"] for m in backlog) >= len(backlog) - 2 * batch
    # dedup hands it to route on the urgent lane; the backlog goes on the main stream
    assert await ids_on(r, k.deduped_urgent) == ["hot"]
    assert sorted(await ids_on(r, k.deduped)) == sorted(m.ticket_id for m in backlog)

    # route's input now holds the 192 normal tickets ahead of it (on deduped) and the urgent one on its lane
    async with InProcessPipeline(settings, r, stages=("route",)):
        await wait_for(lambda: _routed_count(r, k, len(ids)), timeout=60)
    routed = await ids_on(r, k.routed)
    assert sorted(routed) == sorted(ids)  # each once
    assert routed.index("hot") <= 2 * batch, routed.index("hot")  # not after the 192 waiting before it
    for stream, group in ((k.enriched_urgent, "dedup"), (k.enriched, "dedup"), (k.deduped_urgent, "route"),
                          (k.deduped, "route")):
        info = (await r.xinfo_groups(stream))[0]
        assert info["name"].decode() == group and info["pending"] == 0 and info["lag"] == 0


async def _routed_count(r, k, n):
    return await r.xlen(k.routed) >= n


async def test_storm_members_leave_the_urgent_lane_once_the_incident_is_open(settings, r):
    k = Keys(settings.prefix)
    K = settings.incident_k
    rng = np.random.default_rng(3)
    base = rng.normal(size=DIM)
    storm = [enriched(f"st-{i}", base + rng.normal(scale=0.01, size=DIM), "storm-cat", urgent=True)
             for i in range(K + 6)]
    await xadd_all(r, k.enriched_urgent, storm)  # enrich put them all on the urgent lane (no incident yet)
    ids = [m.ticket_id for m in storm]
    async with InProcessPipeline(settings, r, stages=("dedup",)):
        await wait_for(_all_have(r, k, ids, "grouped_seq"), timeout=60)
    groups = await field_of(r, k, ids, "group")
    assert len(set(groups.values())) == 1  # one storm, one group
    gid = groups["st-0"]
    assert await r.zscore(k.incidents, gid) is not None
    seq = {t: int(v) for t, v in (await field_of(r, k, ids, "grouped_seq")).items()}
    incident = await field_of(r, k, ids, "incident")
    by_order = sorted(ids, key=seq.get)
    urgent_lane, main = await ids_on(r, k.deduped_urgent), await ids_on(r, k.deduped)
    # the first K-1 were urgent singles of a small group; the K-th opened the incident; every later one is a member
    assert sorted(urgent_lane) == sorted(by_order[:K - 1])
    assert sorted(main) == sorted(by_order[K - 1:])
    assert all(incident[t] == "1" for t in main) and all(incident[t] == "0" for t in urgent_lane)
    lanes = {t: orjson.loads(v)["lane"] for t, v in (await field_of(r, k, ids, "dedup")).items()}
    assert {t for t, v in lanes.items() if v == "urgent"} == set(urgent_lane)


async def test_enrich_keeps_an_open_incidents_category_out_of_the_urgent_lane(settings, r):
    """Once an incident is open for a category, enrich sends an urgent ticket of that category to the normal lane,
    and the urgent ingest lane's triage hands such tickets to the main loop before any embedding."""
    from routing_engine.metrics import LANE_HANDED
    from routing_engine.models.classifier import Classifier, latest_model
    from routing_engine.stages import enrich as enrich_stage

    k = Keys(settings.prefix)
    handed = LANE_HANDED.labels("enrich")
    async with InProcessPipeline(settings, r, stages=("enrich",)) as p:
        resp = await p.client.post("/v1/tickets", json={"id": "first", **URGENT_TEXT})
        assert resp.status == 202 and await r.xlen(k.ingest_urgent) == 1  # the door's lane: the text reads urgent
        await wait_for(_all_have(r, k, ["first"], "enrich"), timeout=60)
        first = orjson.loads((await field_of(r, k, ["first"], "enrich"))["first"])
        assert first["urgent"] and first["lane"] == "urgent" and "lane_reason" not in first
        assert first["ingest_lane"] == "urgent"
        assert await ids_on(r, k.enriched_urgent) == ["first"]
        # the n-gram model alone (what triage uses) agrees with the whole classifier on this text
        clf = Classifier.load(latest_model(settings.models_path))
        assert clf.labels[int(clf.lexical.logits([f"{URGENT_TEXT['subject']}\n{URGENT_TEXT['body']}"]).argmax())] \
            == first["category"]
        # a storm of that category: its incident opens (as dedup's group.lua leaves it; "first" is its first ticket)
        now = int(time.time() * 1000)
        await r.hset(k.group("first"), mapping={"gid": "first", "incident": "1", "status": "open", "size": 10,
                                                "last_at": now, "opened_at": now})
        await r.zadd(k.incidents, {"first": now})
        await asyncio.sleep(2 * enrich_stage.INCIDENTS_EVERY_S)  # past the stage's cached view of the incidents
        before = handed._value.get()
        later = [f"later-{i}" for i in range(5)]
        resp = await p.client.post("/v1/tickets/batch", json=[{"id": t, **URGENT_TEXT} for t in later])
        assert resp.status == 202
        await wait_for(_all_have(r, k, later, "enrich"), timeout=60)
        assert handed._value.get() - before == len(later)  # all five handed to the main loop by the lane's triage
        info = next(g for g in await r.xinfo_groups(k.ingest_urgent) if g["name"] == b"enrich")
        assert info["pending"] == 0 and info["lag"] == 0  # and acked on the lane by the main loop's commits
    for t, v in (await field_of(r, k, later, "enrich")).items():
        e = orjson.loads(v)
        assert e["category"] == first["category"] and e["urgent"] and e["ingest_lane"] == "urgent"
        assert e["lane"] == "normal" and e["lane_reason"].startswith("incident first is open"), (t, e)
    assert sorted(await ids_on(r, k.enriched)) == sorted(later)
    assert await ids_on(r, k.enriched_urgent) == ["first"]


def deduped(tid: str, group: str | None = None) -> Deduped:
    return Deduped(Ticket(tid, subject="s", body="b"), int(time.time() * 1000),
                   {"team": "payments", "category": "c", "urgency": 0.95, "urgent": True, "lane": "urgent"},
                   np.zeros(4, dtype=np.float32), {"group": group or tid, "lane": "urgent"})


async def test_a_crash_in_the_middle_of_an_urgent_batch_is_recovered(settings, r):
    k = Keys(settings.prefix)
    s = dataclasses.replace(settings, claim_idle_ms=1000, claim_every_ms=200)
    rng = np.random.default_rng(11)
    at_dedup = [enriched(f"u-{i}", rng.normal(size=DIM), f"ucat-{i}", urgent=True) for i in range(5)]
    at_route = [deduped(f"r-{i}") for i in range(3)]
    for stream, group in ((k.enriched_urgent, "dedup"), (k.deduped_urgent, "route")):
        await r.xgroup_create(stream, group, id="0", mkstream=True)
    await xadd_all(r, k.enriched_urgent, at_dedup)
    await xadd_all(r, k.deduped_urgent, at_route)
    # a dedup worker ("gone", never back) read the urgent batch and died before committing it; a route worker took
    # its urgent batch and died too, under the name the new run uses ("test-worker": its own pending comes back)
    assert len((await r.xreadgroup("dedup", "gone", {k.enriched_urgent: ">"}, count=8))[0][1]) == 5
    assert len((await r.xreadgroup("route", "test-worker", {k.deduped_urgent: ">"}, count=8))[0][1]) == 3
    ids = [m.ticket_id for m in at_dedup + at_route]
    async with InProcessPipeline(s, r, stages=("dedup", "route")):
        await wait_for(lambda: _routed_count(r, k, len(ids)), timeout=60)
        await wait_for(lambda: _nothing_pending(r, [(k.enriched_urgent, "dedup"), (k.deduped_urgent, "route")]),
                       timeout=30)
    routed = await ids_on(r, k.routed)
    assert sorted(routed) == sorted(ids)  # every one, once
    # the dedup batch was claimed from the dead consumer (a second delivery) and went on through the urgent lane
    assert await ids_on(r, k.deduped_urgent) == [m.ticket_id for m in at_route] + [m.ticket_id for m in at_dedup]
    consumers = {c["name"].decode(): c["pending"] for c in await r.xinfo_consumers(k.enriched_urgent, "dedup")}
    assert consumers.get("gone", 0) == 0 and "test-worker" in consumers
    assert await r.xlen(k.dead) == 0


async def _nothing_pending(r, pairs):
    for stream, group in pairs:
        if next(g for g in await r.xinfo_groups(stream) if g["name"].decode() == group)["pending"]:
            return False
    return True


SINGLES = [
    {"subject": "URGENT: my transfer never arrived", "body": "I sent money to my landlord 3 days ago and he still has "
                                                            "nothing, I need this fixed immediately!!"},
    {"subject": "URGENT: ATM kept my money", "body": "The cash machine took my card and did not give me the cash, "
                                                      "help right now please!!"},
]


async def test_a_burst_in_the_urgent_ingest_lane_comes_after_its_singles_and_stays_in_the_lane(settings, r):
    """No incident is open yet, and the urgent ingest lane holds a storm whose texts read urgent (one n-gram category,
    more tickets than one lane batch) with two urgent singles behind it: the lane's first batch holds the storm's
    first K (enough for dedup to open the incident) and the singles, and the rest of the storm comes after them,
    still through the lane (the storm test sees the storm as it arrives): nothing is handed to the main loop, each
    ticket is classified once and nothing stays pending."""
    from routing_engine.infra.runtime import LANE_BATCH
    from routing_engine.metrics import LANE_HANDED
    from routing_engine.models.classifier import Classifier, latest_model

    k = Keys(settings.prefix)
    cap = settings.incident_k
    storm = [f"storm-{i}" for i in range(LANE_BATCH + 2 * cap)]
    singles = [f"single-{i}" for i in range(len(SINGLES))]
    clf = Classifier.load(latest_model(settings.models_path))
    cat = lambda t: clf.labels[int(clf.lexical.logits([f"{t['subject']}\n{t['body']}"]).argmax())]  # noqa: E731
    assert len({cat(URGENT_TEXT), *map(cat, SINGLES)}) == 1 + len(SINGLES)  # three n-gram categories
    # the door only: the whole burst waits in the lane before enrich starts, the singles behind all of it
    async with InProcessPipeline(settings, r, stages=()) as p:
        body = [{"id": t, **URGENT_TEXT} for t in storm] + [{"id": t, **x} for t, x in zip(singles, SINGLES)]
        resp = await p.client.post("/v1/tickets/batch", json=body)
        assert resp.status == 202
    assert await r.xlen(k.ingest_urgent) == len(storm) + len(singles)  # every one read urgent at the door
    handed = LANE_HANDED.labels("enrich")
    before = handed._value.get()
    async with InProcessPipeline(settings, r, stages=("enrich",)):
        await wait_for(_all_have(r, k, storm + singles, "enrich"), timeout=90)
        await wait_for(lambda: _nothing_pending(r, [(k.ingest_urgent, "enrich")]), timeout=30)
    assert handed._value.get() - before == 0
    assert await ids_on(r, k.enriched) == []  # all through the lane
    out = await ids_on(r, k.enriched_urgent)
    assert sorted(out) == sorted(storm + singles)  # each once
    # the lane's first batch: the storm's first K and both singles, then the rest of the storm in arrival order
    assert set(out[:cap + len(singles)]) == set(storm[:cap]) | set(singles)
    assert out[cap + len(singles):] == storm[cap:]


async def test_dedup_decides_an_urgent_batch_between_slices_of_a_full_batch(settings, r):
    """A full batch in dedup is decided in slices of DECIDE_SLICE, the stage's lock released between them: an urgent
    ticket arriving while a batch of 1,024 is being decided is decided before most of that batch, not after it."""
    from routing_engine.stages.dedup import DECIDE_SLICE

    k = Keys(settings.prefix)
    s = dataclasses.replace(settings, batch_size=1024)
    backlog = random_backlog(1024, seed=5)
    hot = enriched("hot", np.random.default_rng(98).normal(size=DIM), "hot-cat", urgent=True)
    await xadd_all(r, k.enriched, backlog)
    ids = [m.ticket_id for m in backlog] + ["hot"]
    async with InProcessPipeline(s, r, stages=("dedup",)):
        async def first_slice_committed():
            return int(await r.get(k.dedup_seq) or 0) >= 1
        await wait_for(first_slice_committed, timeout=60, interval=0.005)
        await xadd_all(r, k.enriched_urgent, [hot])  # while the rest of the 1,024 are being decided
        await wait_for(_all_have(r, k, ids, "grouped_seq"), timeout=60)
    seq = {t: int(v) for t, v in (await field_of(r, k, ids, "grouped_seq")).items()}
    after_hot = sum(seq[m.ticket_id] > seq["hot"] for m in backlog)
    assert after_hot >= DECIDE_SLICE, (seq["hot"], after_hot)  # not behind the whole batch (it was one read)
    assert len(set(seq.values())) == len(ids)  # one decision each
