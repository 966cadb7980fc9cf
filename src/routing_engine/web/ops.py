"""Operations endpoints: health, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from ..infra.health import pipeline_state, redis_metrics
from .admission import overload_response
from .auth import READ, scopes
from .openapi import openapi_doc
from .responses import jresponse
from .state import state

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    r, k = state(request).redis, state(request).keys
    detailed = READ in scopes(request)  # anonymous: up or not, never who consumes what (that needs a read token)
    try:
        await r.ping()
        streams = await pipeline_state(r, k) if detailed else {}
    except (aioredis.ConnectionError, OSError) as exc:
        return jresponse({"status": "unavailable", "redis": False, **({"error": str(exc)} if detailed else {})}, 503)
    if (busy := overload_response(request, detailed)) is not None:
        return busy
    if not detailed:
        return jresponse({"status": "ok", "redis": True})
    lag = {f"{s}/{g}": v["lag"] for s, info in streams.items() for g, v in info.get("groups", {}).items()}
    return jresponse({"status": "ok", "redis": True, "lag": lag, "streams": streams})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(REGISTRY) + await redis_metrics(state(request).redis, state(request).keys)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return jresponse(openapi_doc())
