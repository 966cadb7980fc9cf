"""Middleware: errors become one JSON shape with the right status; each route needs a token of its scope (401 without
one, 403 with the wrong one), and with a webhook secret the ticket doors need a valid signature."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

from ..errors import RoutingError
from . import signatures
from .auth import EVERY_SCOPE, INGEST, SCOPES, given_token, required_scope, token_scopes
from .dashboard import login_page
from .responses import error_body, jresponse, read_body
from .state import state


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


def _denied(status: int, code: str, message: str, **extra) -> web.Response:
    return jresponse(error_body(code, message, **extra), status)


async def _check_signature(request: web.Request) -> web.Response | None:
    """With ROUTING_WEBHOOK_SECRET set, the ticket doors need a valid signature over the raw body (which stands in
    for the ingest token); None when it holds, else the 401."""
    s = state(request).settings
    header = request.headers.get(signatures.HEADER)
    body = await read_body(request) if header else b""  # no header: refuse before reading anything
    try:
        signatures.verify(header, body, signatures.secrets_of(s.webhook_secret), s.webhook_tolerance_s)
    except signatures.SignatureError as exc:
        return _denied(401, exc.code, str(exc))
    return None


@web.middleware
async def auth_middleware(request: web.Request, handler):
    s = state(request).settings
    # no token configured: open, as on a laptop (the CLI refuses to bind beyond loopback like that)
    request[SCOPES] = token_scopes(s, given_token(request)) if s.tokens_configured else EVERY_SCOPE
    need = required_scope(request)
    if need == INGEST and s.webhook_secret:
        refused = await _check_signature(request)
        if refused is not None:
            return refused
        request[SCOPES] = request[SCOPES] | {INGEST}
    if need is None or need in request[SCOPES]:
        return await handler(request)
    if request[SCOPES]:  # a right token, of the wrong scope
        return _denied(403, "forbidden", f"{request.method} {request.path} needs a token with the {need!r} scope; "
                       f"this one has {', '.join(sorted(request[SCOPES]))}", scope=need)
    if request.path == "/":  # a person at the dashboard gets the login form, not JSON
        return login_page()
    return _denied(401, "unauthorized", f"missing or wrong API token (Bearer header or routing_token cookie); "
                   f"{request.method} {request.path} needs the {need!r} scope", scope=need)
