"""What the pipeline writes to each stream matches the JSON Schema for it in streams/."""

from __future__ import annotations

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from routing_engine.resources import streams_dir

from fixtures import wait_for

JSON_FIELDS = {b"data", b"fields", b"metadata"}


def _registry():
    docs = [orjson.loads(p.read_bytes()) for p in streams_dir().glob("*.schema.json")]
    reg = Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs)
    return reg, {d["$id"].rsplit("/", 1)[1].split(".")[0]: d for d in docs}


def _decode(fields: dict[bytes, bytes]) -> dict:
    out = {}
    for k, v in fields.items():
        if k == b"emb":
            assert len(v) == 384 * 4  # float32 MiniLM embedding
            out["emb"] = "<binary>"
        elif k in JSON_FIELDS:
            try:
                out[k.decode()] = orjson.loads(v)
            except orjson.JSONDecodeError:
                out[k.decode()] = v.decode()  # a malformed producer entry: left as text
        else:
            out[k.decode()] = v.decode()
    return out


async def test_stream_entries_match_their_schemas(pipeline, r):
    from dataclasses import replace

    reg, schemas = _registry()
    assert {"ticket", "ingest", "enriched", "deduped", "routed", "alerts", "dead", "events"} <= set(schemas)
    k = pipeline.k
    # the alert stage isn't configured here (no URL), but the alert is still written to its stream
    pipeline.s = replace(pipeline.s)
    resp = await pipeline.client.post("/v1/tickets", json={
        "id": "c-1", "subject": "URGENT card stolen",
        "body": "My card was stolen and someone is spending money right now!!",
        "customer": "acme", "channel": "email", "created_at": "2026-11-25T10:00:00Z", "metadata": {"plan": "gold"}})
    assert resp.status == 202
    await r.xadd(k.ingest, {"subject": "flat entry", "body": "card declined"})
    await r.xadd(k.ingest, {"data": b"{broken"})

    async def done():
        return await r.xlen(k.routed) >= 2 and await r.xlen(k.dead) >= 1

    await wait_for(done)
    # a stream entry reusing c-1 with another body: commit.lua writes its dead letter (and a ticket.dead event)
    await r.xadd(k.ingest, {"data": orjson.dumps({"id": "c-1", "subject": "other", "body": "another ticket"})})

    async def conflict_dead():
        return await r.xlen(k.dead) >= 2

    await wait_for(conflict_dead)
    checked = 0
    for name, stream in (("ingest", k.ingest), ("ingest", k.ingest_urgent), ("enriched", k.enriched),
                         ("enriched", k.enriched_urgent), ("deduped", k.deduped), ("deduped", k.deduped_urgent),
                         ("routed", k.routed), ("alerts", k.alerts), ("dead", k.dead), ("events", k.events)):
        v = Draft202012Validator(schemas[name], registry=reg)
        for _, fields in await r.xrange(stream):
            doc = _decode(fields)
            if name == "ingest" and doc.get("data") == "{broken":
                assert not v.is_valid(doc)  # the schema rejects what the stage dead-lettered
                continue
            errors = [e.message for e in v.iter_errors(doc)]
            assert not errors, (name, doc, errors)
            checked += 1
    assert checked >= 10
    assert await r.xlen(k.alerts) == 1  # the urgent ticket, first of its group
    assert await r.xlen(k.enriched_urgent) == 1 and await r.xlen(k.deduped_urgent) == 1  # it rode the urgent lanes


@pytest.mark.parametrize("doc", [{"subject": 1}, {"priority": "x", "subject": "s"}, {}])
def test_ticket_schema_rejects_bad_tickets(doc):
    reg, schemas = _registry()
    assert not Draft202012Validator(schemas["ticket"], registry=reg).is_valid(doc)
