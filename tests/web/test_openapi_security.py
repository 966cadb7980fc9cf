"""The OpenAPI document tells the truth about security: every guarded operation lists 401 and 403 with the scope
it needs, and the running app answers a token lacking that scope with 403 naming the same scope."""

from __future__ import annotations

import re
from dataclasses import replace

from fixtures import InProcessPipeline

LACKING = {"ingest": "rd-tok", "read": "in-tok", "operate": "rd-tok"}  # a token without that scope


async def test_documented_scopes_match_the_app(settings, r):
    from routing_engine.web.openapi import openapi_doc

    doc = openapi_doc()
    assert {"bearer", "cookie", "webhookSignature"} <= set(doc["components"]["securitySchemes"])
    s = replace(settings, read_token="rd-tok", ingest_token="in-tok")
    checked = 0
    async with InProcessPipeline(s, r, stages=[]) as p:
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                if "403" not in op["responses"]:
                    continue
                assert "401" in op["responses"], (method, path)
                scope = re.search(r"lacks the (\w+) scope", op["responses"]["403"]["description"]).group(1)
                url = re.sub(r"\{\w+\}", "x", path)
                bearer = {"Authorization": f"Bearer {LACKING[scope]}"}
                resp = await p.client.request(method.upper(), url, headers=bearer)
                assert resp.status == 403, (method, path)
                assert (await resp.json())["error"]["scope"] == scope, (method, path)
                checked += 1
    assert checked >= 12  # every route of the API table but the open ones
