"""Middleware: errors become one JSON shape with the right status; the API token guards everything but the
open paths."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

from ..errors import RoutingError
from .dashboard import login_page
from .responses import error_body, jresponse
from .state import state
from .tokens import token_matches


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except RoutingError as exc:
        return jresponse(error_body(exc.code, str(exc), **exc.details), exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return jresponse(error_body(exc.reason.lower().replace(" ", "_"), exc.text or exc.reason), exc.status)
    except aioredis.ConnectionError as exc:
        return jresponse(error_body("redis_unavailable", str(exc)), 503)


def _token_ok(request: web.Request, token: str) -> bool:
    auth = request.headers.get("Authorization", "")
    given = auth[7:] if auth.startswith("Bearer ") else request.cookies.get("routing_token", "")
    return token_matches(given, token)


@web.middleware
async def auth_middleware(request: web.Request, handler):
    token = state(request).settings.api_token
    open_paths = ("/healthz", "/metrics", "/openapi.json", "/login")
    if token and not request.path.startswith(open_paths) and not _token_ok(request, token):
        if request.path == "/":  # a person at the dashboard gets the login form, not JSON
            return login_page()
        return jresponse(error_body("unauthorized",
                                    "missing or wrong API token (Bearer header or routing_token cookie)"), 401)
    return await handler(request)
