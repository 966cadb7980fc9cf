"""Every kind of bad input gets a clear 4xx with a JSON body naming the problem, or a dead letter with the reason."""

from __future__ import annotations

import orjson
import pytest

from fixtures import wait_for


async def _err(resp):
    body = await resp.json()
    assert "error" in body and body["error"]["message"], body
    return body["error"]


async def test_invalid_json_is_400(pipeline):
    resp = await pipeline.client.post("/v1/tickets", data=b'{"subject": "x",',
                                      headers={"Content-Type": "application/json"})
    assert resp.status == 400
    err = await _err(resp)
    assert err["code"] == "bad_request" and "invalid JSON" in err["message"]


async def test_wrong_content_type_is_415(pipeline):
    resp = await pipeline.client.post("/v1/tickets", data=b"subject=hi",
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415
    assert "application/json" in (await _err(resp))["message"]


async def test_body_over_limit_is_413(pipeline):
    big = orjson.dumps({"subject": "x", "body": "a" * (pipeline.s.max_body_bytes + 10)})
    resp = await pipeline.client.post("/v1/tickets", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await _err(resp))["code"] == "payload_too_large"


@pytest.mark.parametrize("doc, field, words", [
    ({"body": ""}, "subject", "missing text"),
    ({"customer": "c1"}, "subject", "missing text"),
    ({"subject": "   ", "body": "  "}, "subject", "blank"),
    ({"subject": 42}, "subject", "not of type 'string'"),
    ({"subject": "hi", "metadata": "x"}, "metadata", "not of type 'object'"),
    ({"subject": "hi", "created_at": "yesterday"}, "created_at", "date-time"),
    ({"subject": "hi", "created_at": "2026-13-45T00:00:00Z"}, "created_at", "date-time"),
    ({"subject": "hi", "priority": "p1"}, "priority", "not allowed"),
    ({"subject": "hi", "id": "has space"}, "id", "does not match"),
    (["not", "an", "object"], "(root)", "JSON object"),
])
async def test_schema_violations_are_422_naming_the_field(pipeline, doc, field, words):
    resp = await pipeline.client.post("/v1/tickets", json=doc)
    assert resp.status == 422
    err = await _err(resp)
    assert err["code"] == "invalid_ticket"
    assert any(p["field"] == field and words in p["problem"] for p in err["problems"]), err


async def test_bad_query_and_unknown_ids(pipeline):
    assert (await pipeline.client.get("/v1/tickets?limit=abc")).status == 400
    assert (await pipeline.client.get("/v1/tickets?status=bogus")).status == 400
    resp = await pipeline.client.get("/v1/tickets/none-such")
    assert resp.status == 404 and (await _err(resp))["code"] == "not_found"
    resp = await pipeline.client.put("/v1/agents/zed", json={"capacity": -1, "skills": {"cards": 3}})
    err = await _err(resp)
    assert resp.status == 422 and {p["field"] for p in err["problems"]} == {"capacity", "skills"}


async def test_batch_accepts_good_and_reports_bad_individually(pipeline):
    resp = await pipeline.client.post("/v1/tickets/batch", json=[
        {"subject": "Card lost", "body": "I lost my card"}, {"subject": 7}, {"body": "where is my money transfer"}])
    assert resp.status == 202
    results = (await resp.json())["results"]
    assert [("ticket_id" in x, "error" in x) for x in results] == [(True, False), (False, True), (True, False)]
    assert results[1]["index"] == 1 and results[1]["error"]["problems"][0]["field"] == "subject"


async def test_malformed_stream_entries_are_dead_lettered_with_reason(pipeline, r):
    k = pipeline.k
    good = await r.xadd(k.ingest, {"data": orjson.dumps({"subject": "Lost card", "body": "I lost my card yesterday"})})
    await r.xadd(k.ingest, {"data": b"{not json"})
    await r.xadd(k.ingest, {"data": orjson.dumps({"body": 12})})
    await r.xadd(k.ingest, {"nothing": b"useful"})

    async def dead():
        rows = await r.xrange(k.dead)
        return rows if len(rows) >= 3 else None

    rows = await wait_for(dead)
    reasons = [f[b"reason"].decode() for _, f in rows]
    assert any("data: not valid JSON" in x for x in reasons)
    assert any("body" in x and "not of type 'string'" in x for x in reasons)
    assert any("missing text" in x or "not allowed" in x for x in reasons)
    assert all(f[b"stage"] == b"enrich" for _, f in rows)
    # the good ticket beside them went through, and the stage is still alive
    tid = "s" + good.decode().replace("-", "_")

    async def routed():
        resp = await pipeline.client.get(f"/v1/tickets/{tid}")
        return resp.status == 200 and (await resp.json())["status"] in ("assigned", "queued")

    await wait_for(routed)
    nxt = await pipeline.client.post("/v1/tickets", json={"subject": "hi", "body": "my transfer failed"})
    assert nxt.status == 202
