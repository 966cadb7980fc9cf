"""End to end in one process: API + every stage against the real Redis with real (tiny) models."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from conftest import wait_for


async def routed(pipeline, tid):
    resp = await pipeline.client.get(f"/v1/tickets/{tid}")
    if resp.status != 200:
        return None
    rec = await resp.json()
    return rec if rec["status"] in ("assigned", "queued", "attached") else None


async def test_http_ticket_comes_out_routed_with_trail(pipeline):
    resp = await pipeline.client.post("/v1/tickets", json={
        "subject": "Card never arrived", "body": "I ordered my card two weeks ago and it still has not arrived",
        "customer": "c-1", "channel": "email"})
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    rec = await wait_for(lambda: routed(pipeline, body["ticket_id"]))
    assert rec["stream_id"] == body["stream_id"]
    assert rec["category"] == "card_arrival" and rec["team"] == "cards"
    assert 0 < rec["enrich"]["confidence"] <= 1 and rec["enrich"]["model"].startswith("lgbm-")
    assert 0 <= rec["urgency"] <= 1
    assert rec["dedup"]["group"] == body["ticket_id"]  # first of its kind: its own group
    assert rec["status"] == "assigned" and rec["assignee"] == "ana"  # the cards specialist is free
    t = rec["timings"]
    assert t["received_at"] <= t["enriched_at"] <= t["grouped_at"] <= t["routed_at"]
    assert t["ms"]["total"] >= 0
