"""One structlog line per request: method, path (never the query string: it may carry secrets), status, ms,
client. Replaces aiohttp's access log, which the service turns off."""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web

from .auth import client_address
from .state import state

log = structlog.get_logger("http")


@web.middleware
async def access_log_middleware(request: web.Request, handler):
    t0 = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:  # redirects (login) travel as exceptions
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away (an SSE tab closed), as nginx logs it
        raise
    finally:
        log.info("http.request", method=request.method, path=request.path, status=status,
                 ms=round((time.perf_counter() - t0) * 1000, 1),
                 client=client_address(request, state(request).settings.trust_proxy))
