"""Typed stage messages: to stream fields and back, and the fields match the stream's JSON Schema."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from routing_engine.domain.messages import Deduped, Enriched, Grouping, Routed, received_at_of
from routing_engine.domain.schemas import schema
from routing_engine.domain.ticket import Ticket

ENRICH = {"category": "card_arrival", "team": "cards", "confidence": 0.91, "model": "lgbm-x", "decided_by": "lightgbm",
          "urgency": 0.2, "urgent": False}


def _validator(name: str) -> Draft202012Validator:
    docs = [schema(n) for n in ("enriched", "deduped")]
    reg = Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs)
    return Draft202012Validator(schema(name), registry=reg)


def _as_json(fields: dict) -> dict:
    return {"ticket_id": fields["ticket_id"], "data": orjson.loads(fields["data"]), "emb": "<binary>"}


def test_enriched_round_trip_and_schema():
    vec = np.arange(384, dtype=np.float32) / 384
    msg = Enriched(Ticket("t-1", "Card", "never arrived", customer="acme"), 1_700_000_000_123, dict(ENRICH), vec)
    fields = msg.to_fields()
    back = Enriched.from_fields({k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()})
    assert back.ticket == msg.ticket and back.received_at == msg.received_at and back.enrich == msg.enrich
    np.testing.assert_array_equal(back.emb, vec)
    assert (back.category, back.team, back.urgent) == ("card_arrival", "cards", False)
    assert not list(_validator("enriched").iter_errors(_as_json(fields)))


def test_deduped_carries_the_grouping_and_matches_its_schema():
    base = Enriched(Ticket("t-2", "ATM", "kept my card"), received_at_of("1700000000999-3"), dict(ENRICH),
                    np.ones(384, dtype=np.float32))
    g = Grouping(neighbor="t-1", score=0.61, group="t-1", joined=True, rule="tau_category", tau=0.85,
                 tau_category=0.5, window_s=300)
    msg = Deduped.of(base, g)
    fields = msg.to_fields()
    back = Deduped.from_fields({k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()})
    assert back.group == "t-1" and back.dedup == g.to_dict() and back.received_at == 1700000000999
    assert not list(_validator("deduped").iter_errors(_as_json(fields)))
    summary = Routed.summary_of(back)
    assert summary == {"ticket_id": "t-2", "category": "card_arrival", "team": "cards", "urgency": 0.2,
                       "group": "t-1", "received_at": 1700000000999}
    routed = {"ticket_id": "t-2", "status": "queued", "assignee": "", "team": "cards", "data": summary}
    assert not list(Draft202012Validator(schema("routed")).iter_errors(routed))
    raw = {b"ticket_id": b"t-2", b"status": b"queued", b"assignee": b"", b"team": b"cards",
           b"data": orjson.dumps(summary)}
    assert Routed.from_fields(raw) == Routed("t-2", "queued", "", "cards", summary)


def test_a_message_missing_its_trail_is_refused():
    fields = {b"data": orjson.dumps({"ticket": {"ticket_id": "x"}, "received_at": 1}), b"emb": b"", b"ticket_id": b"x"}
    with pytest.raises(KeyError, match="enrich"):
        Enriched.from_fields(fields)
