"""Dead letters never hurt a ticket they cannot prove is theirs: only an id the stage validated from the entry may
mark a ticket dead, and then only a ticket this entry owns (ingest stage) that is not routed yet. A raw id that
could not be validated is kept on the dead letter for the operator, as `ticket_id_unverified`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
import pytest

from routing_engine.infra.keys import Keys
from routing_engine.infra.runtime import Entry, Outcome, Stage, StageRunner
from routing_engine.infra.scripts import Scripts
from routing_engine.stages.enrich import EnrichStage

TEXT = {"subject": "Card not arrived", "body": "two weeks and still no card"}


@pytest.fixture
def settings(redis_url, prefix):
    """Dead letters need no model: skip the session's model training."""
    from routing_engine.config import Settings

    return Settings(redis_url=redis_url, prefix=prefix)


async def _ingest(r, settings, tid: str) -> str:
    """The ticket as the HTTP door writes it (ingest.lua): its record and its entry on the ingest stream."""
    k = Keys(settings.prefix)
    body = orjson.dumps({**TEXT, "id": tid}, option=orjson.OPT_SORT_KEYS)
    sid, created = (await Scripts(r, settings, k).ingest(ticket_id=tid, ticket_json=body, lane=k.ingest))[:2]
    assert created == 1
    return sid.decode()


async def _entry(r, k: Keys, eid: str) -> Entry:
    (got_id, fields), = await r.xrange(k.ingest, min=eid, max=eid)
    return Entry(got_id.decode(), fields, k.ingest)


async def _dead(r, k: Keys) -> list[dict]:
    return [{a.decode(): b.decode() for a, b in f.items()} for _, f in await r.xrange(k.dead)]


async def _status(r, k: Keys, tid: str) -> str:
    return (await r.hget(k.ticket(tid), "status")).decode()


def _runner(r, stage: Stage) -> StageRunner:
    return StageRunner(r, stage, "w1", asyncio.Event())


async def test_a_forged_raw_id_never_marks_a_ticket(r, settings):
    k = Keys(settings.prefix)
    await _ingest(r, settings, "T-7")
    eid = (await r.xadd(k.ingest, {"data": b"{broken", "ticket_id": b"T-7"})).decode()
    runner = _runner(r, EnrichStage(settings, k))
    await runner.dead_letter([Outcome(await _entry(r, k, eid), dead_reason="invalid: data: not valid JSON")])
    assert await _status(r, k, "T-7") == "received"
    assert await r.zscore(k.idx_status("dead"), "T-7") is None
    dead, = await _dead(r, k)
    assert dead["ticket_id"] == "" and dead["ticket_id_unverified"] == "T-7"
    events = [{a.decode(): b.decode() for a, b in f.items()} for _, f in await r.xrange(k.events)]
    assert not [e for e in events if e["type"] == "ticket.dead" and e.get("ticket_id")]


async def test_a_valid_entry_that_does_not_own_the_ticket_never_marks_it(r, settings):
    k = Keys(settings.prefix)
    await _ingest(r, settings, "T-7")
    # a producer's entry that validates, naming T-7 through the HTTP door's field
    eid = (await r.xadd(k.ingest, {"data": orjson.dumps(TEXT), "ticket_id": b"T-7"})).decode()
    stage = EnrichStage(settings, k)
    e = await _entry(r, k, eid)
    e.value = stage.decode(e)
    assert e.value.ticket_id == "T-7"
    await _runner(r, stage).dead_letter([Outcome(e, dead_reason="failed 5 times: boom")])
    assert await _status(r, k, "T-7") == "received"
    assert (await _dead(r, k))[0]["ticket_id"] == "T-7"


async def test_the_entry_that_owns_the_ticket_marks_it_dead(r, settings):
    k = Keys(settings.prefix)
    sid = await _ingest(r, settings, "T-7")
    stage = EnrichStage(settings, k)
    e = await _entry(r, k, sid)
    e.value = stage.decode(e)
    await _runner(r, stage).dead_letter([Outcome(e, dead_reason="failed 5 times: boom")])
    assert await _status(r, k, "T-7") == "dead"
    assert await r.hget(k.ticket("T-7"), "dead_reason") == b"failed 5 times: boom"
    assert await r.zscore(k.idx_status("dead"), "T-7") is not None
    assert await r.zscore(k.idx_status("received"), "T-7") is None
    events = [{a.decode(): b.decode() for a, b in f.items()} for _, f in await r.xrange(k.events)]
    assert [e["ticket_id"] for e in events if e["type"] == "ticket.dead"] == ["T-7"]


async def test_an_over_delivered_entry_is_verified_by_decoding_it(r, settings):
    """The reclaimer dead-letters entries it never decoded; the runtime decodes them to know whose they are."""
    k = Keys(settings.prefix)
    sid = await _ingest(r, settings, "T-7")
    await _runner(r, EnrichStage(settings, k)).dead_letter(
        [Outcome(await _entry(r, k, sid), dead_reason="delivered 6 times without success")])
    assert await _status(r, k, "T-7") == "dead"


@pytest.mark.parametrize("routed", ["assigned", "queued", "attached", "resolved"])
async def test_a_routed_ticket_is_never_marked_dead(r, settings, routed):
    k = Keys(settings.prefix)
    sid = await _ingest(r, settings, "T-7")
    await r.hset(k.ticket("T-7"), "status", routed)
    stage = EnrichStage(settings, k)
    e = await _entry(r, k, sid)
    e.value = stage.decode(e)
    await _runner(r, stage).dead_letter([Outcome(e, dead_reason="failed 5 times: boom")])
    assert await _status(r, k, "T-7") == routed
    assert await r.hget(k.ticket("T-7"), "dead_reason") is None


@dataclass
class Msg:
    ticket_id: str


class Later(Stage):
    """A stage past the ingest stream (it reads {prefix}:deduped): its entries never own a ticket record."""

    name = "route"

    def decode(self, entry):
        return Msg(entry.fields[b"ticket_id"].decode())


async def test_a_later_stage_marks_its_validated_ticket_dead_unless_routed(r, settings):
    k = Keys(settings.prefix)
    await _ingest(r, settings, "T-7")
    await _ingest(r, settings, "T-8")
    await r.hset(k.ticket("T-7"), "status", "grouped")
    await r.hset(k.ticket("T-8"), "status", "assigned")
    outs = []
    for tid in ("T-7", "T-8"):
        eid = (await r.xadd(k.deduped, {"data": b"{}", "ticket_id": tid})).decode()
        outs.append(Outcome(Entry(eid, {b"ticket_id": tid.encode()}, k.deduped, Msg(tid)), dead_reason="boom"))
    await _runner(r, Later(settings, k)).dead_letter(outs)
    assert await _status(r, k, "T-7") == "dead"
    assert await _status(r, k, "T-8") == "assigned"
