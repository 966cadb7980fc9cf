"""Client ticket ids are a safe alphabet (letters, digits, '.', '_', '-'; 1-64 characters, no '..'): an id can never
reach into another key family (`X:m` is the member list of group `X`) and both HTTP doors answer 422 naming `id`."""

from __future__ import annotations

import pytest

GOOD = ["T-1002", "demo-storm-00012", "ext-42", "fl-000001", "a", "v1.2_x-y", "A" * 64]
BAD = ["X:m", "a/b", "a@b", "has space", "..", ".", "a..b", ".hidden", "A" * 65, "", "é", "T-1\n", "T-1\x00"]


@pytest.mark.parametrize("tid", GOOD)
async def test_safe_ids_are_accepted(api, tid):
    resp = await api.client.post("/v1/tickets", json={"id": tid, "subject": "card lost"})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["ticket_id"] == tid


@pytest.mark.parametrize("tid", BAD)
async def test_unsafe_ids_are_422_naming_id(api, r, tid):
    resp = await api.client.post("/v1/tickets", json={"id": tid, "subject": "card lost"})
    assert resp.status == 422, await resp.text()
    err = (await resp.json())["error"]
    assert {p["field"] for p in err["problems"]} == {"id"}, err
    assert await r.xlen(api.k.ingest) == 0 and await r.xlen(api.k.ingest_urgent) == 0


async def test_batch_rejects_an_unsafe_id_on_its_own(api):
    resp = await api.client.post("/v1/tickets/batch", json=[
        {"id": "X", "subject": "card lost"}, {"id": "X:m", "subject": "card lost"}])
    assert resp.status == 202
    first, second = (await resp.json())["results"]
    assert first["ticket_id"] == "X"
    assert second["index"] == 1 and [p["field"] for p in second["error"]["problems"]] == ["id"]


@pytest.mark.parametrize("tid", [t for t in BAD if not t.endswith("\n")])
def test_the_schema_is_the_wire_truth(tid):
    """streams/ticket.schema.json itself rejects each unsafe id (a final newline slips past Python's `$` in
    jsonschema; the doors match the pattern whole)."""
    from routing_engine.domain.schemas import validator

    assert not validator("ticket").is_valid({"id": tid, "subject": "card lost"})
    assert validator("ticket").is_valid({"id": "demo-storm-00012", "subject": "card lost"})
