"""Scoped tokens: ingest may only post tickets, read may only read (JSON, SSE, dashboard, metrics), operate may do
everything; ROUTING_API_TOKEN still works as operate. No token is 401, the wrong scope 403 naming the scope."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fixtures import InProcessPipeline

TOKENS = {"ingest": "in-tok", "read": "rd-tok", "operate": "op-tok"}
AGENT = {"name": "Ann", "capacity": 2, "skills": {"cards": 1.0}}


@pytest.fixture
async def scoped(settings, r):
    s = replace(settings, ingest_token=TOKENS["ingest"], read_token=TOKENS["read"], operate_token=TOKENS["operate"],
                api_token="legacy-tok")
    async with InProcessPipeline(s, r, stages=[]) as p:
        yield p


def _h(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def _calls(client, token: str) -> dict[str, int]:
    """One request per kind of route; the status each got."""
    h = _h(token) if token else {}
    out = {}
    resp = await client.post("/v1/tickets", json={"subject": "card lost", "body": "help"}, headers=h)
    out["ingest"] = resp.status
    resp = await client.post("/v1/tickets/batch", json=[{"subject": "card lost", "body": "again"}], headers=h)
    out["batch"] = resp.status
    out["read"] = (await client.get("/v1/tickets", headers=h)).status
    out["metrics"] = (await client.get("/metrics", headers=h)).status
    out["operate"] = (await client.put("/v1/agents/ann", json=AGENT, headers=h)).status
    return out


@pytest.mark.parametrize("who, expected", [
    ("ingest", {"ingest": 202, "batch": 202, "read": 403, "metrics": 403, "operate": 403}),
    ("read", {"ingest": 403, "batch": 403, "read": 200, "metrics": 200, "operate": 403}),
    ("operate", {"ingest": 202, "batch": 202, "read": 200, "metrics": 200, "operate": 200}),
    ("legacy", {"ingest": 202, "batch": 202, "read": 200, "metrics": 200, "operate": 200}),
    ("none", {"ingest": 401, "batch": 401, "read": 401, "metrics": 401, "operate": 401}),
    ("wrong", {"ingest": 401, "batch": 401, "read": 401, "metrics": 401, "operate": 401}),
])
async def test_each_scope_reaches_exactly_its_routes(scoped, who, expected):
    token = {"legacy": "legacy-tok", "none": "", "wrong": "op-tok-"}.get(who, TOKENS.get(who, ""))
    assert await _calls(scoped.client, token) == expected


async def test_wrong_scope_is_403_naming_the_scope_needed(scoped):
    resp = await scoped.client.post("/v1/tickets/t1/resolve", headers=_h(TOKENS["read"]))
    assert resp.status == 403
    err = (await resp.json())["error"]
    assert err["code"] == "forbidden" and err["scope"] == "operate" and "operate" in err["message"]
    resp = await scoped.client.get("/v1/events", headers=_h(TOKENS["ingest"]))
    assert resp.status == 403 and (await resp.json())["error"]["scope"] == "read"
    resp = await scoped.client.get("/v1/agents")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"


async def test_the_read_cookie_opens_the_dashboard_but_not_resolve(scoped):
    cookies = {"routing_token": TOKENS["read"]}
    resp = await scoped.client.get("/", cookies=cookies)
    assert resp.status == 200 and "<html" in (await resp.text()).lower()
    resp = await scoped.client.post("/v1/incidents/g1/resolve", cookies=cookies)
    assert resp.status == 403


async def test_with_no_token_configured_everything_is_open(api):
    """Loopback only (the CLI refuses any other bind without a token): a newcomer's laptop, as before."""
    assert await _calls(api.client, "") == {"ingest": 202, "batch": 202, "read": 200, "metrics": 200, "operate": 200}
