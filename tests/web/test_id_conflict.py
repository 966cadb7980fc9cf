"""The client id is an idempotency key: the same id with the same body is `202 duplicate`; the same id with a
different body is 409, giving the sha256 of both bodies' canonical JSON (as accepted first, as posted now)."""

from __future__ import annotations

import hashlib

import orjson

FIRST = {"id": "T-1002", "subject": "URGENT: card stolen", "body": "Someone is spending money", "customer": "acme"}


def _sha(obj) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def test_same_id_same_body_is_a_duplicate(api):
    first = await api.client.post("/v1/tickets", json=FIRST)
    assert first.status == 202 and (await first.json())["duplicate"] is False
    # the same ticket with its keys in another order is the same body
    again = await api.client.post("/v1/tickets", data=orjson.dumps(dict(reversed(FIRST.items()))),
                                  headers={"Content-Type": "application/json"})
    assert again.status == 202
    body = await again.json()
    assert body["duplicate"] is True and body["stream_id"] == (await first.json())["stream_id"]


async def test_same_id_other_body_is_409_with_both_hashes(api, r):
    assert (await api.client.post("/v1/tickets", json=FIRST)).status == 202
    other = {**FIRST, "body": "Someone is spending money right now"}
    resp = await api.client.post("/v1/tickets", json=other)
    assert resp.status == 409, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == "id_conflict" and err["field"] == "id" and err["ticket_id"] == "T-1002"
    assert err["accepted_sha256"] == _sha(FIRST) and err["posted_sha256"] == _sha(other)
    assert err["accepted_sha256"] != err["posted_sha256"]
    # nothing was written for the second body: one entry, and the record keeps the first ticket
    assert await r.xlen(api.k.ingest) + await r.xlen(api.k.ingest_urgent) == 1
    rec = await api.client.get("/v1/tickets/T-1002")
    assert (await rec.json())["body"] == FIRST["body"]


async def test_batch_gives_a_conflicting_item_its_own_409_error(api):
    assert (await api.client.post("/v1/tickets", json=FIRST)).status == 202
    other = {**FIRST, "customer": "globex"}
    resp = await api.client.post("/v1/tickets/batch", json=[
        {"id": "T-2", "subject": "card lost"}, other, FIRST, {"id": "T-2", "subject": "card found"}])
    assert resp.status == 202, await resp.text()
    new, conflict, dup, conflict2 = (await resp.json())["results"]
    assert new["ticket_id"] == "T-2" and new["duplicate"] is False
    assert dup["ticket_id"] == "T-1002" and dup["duplicate"] is True
    for item, i, posted, accepted in ((conflict, 1, other, FIRST),
                                      (conflict2, 3, {"id": "T-2", "subject": "card found"},
                                       {"id": "T-2", "subject": "card lost"})):
        assert item["index"] == i and "ticket_id" not in item
        err = item["error"]
        assert err["status"] == 409 and err["code"] == "id_conflict" and err["field"] == "id"
        assert err["accepted_sha256"] == _sha(accepted) and err["posted_sha256"] == _sha(posted)


async def test_batch_of_only_conflicts_is_409(api):
    assert (await api.client.post("/v1/tickets", json=FIRST)).status == 202
    resp = await api.client.post("/v1/tickets/batch", json=[{**FIRST, "subject": "other"}])
    assert resp.status == 409
    assert (await resp.json())["results"][0]["error"]["code"] == "id_conflict"


def test_openapi_documents_409_on_both_doors():
    from routing_engine.web.openapi import openapi_doc

    paths = openapi_doc()["paths"]
    assert "409" in paths["/v1/tickets"]["post"]["responses"]
    assert "409" in paths["/v1/tickets/batch"]["post"]["responses"]
