"""The aiohttp app, assembled: one state object, middleware, the route table of each area, SSE, dashboard."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web

from ..config import Settings
from ..infra.keys import Keys
from ..infra.scripts import Scripts
from . import admission, agents, dashboard, durability, incidents, ops, sse, tickets
from .access_log import access_log_middleware
from .middleware import auth_middleware, errors_middleware
from .responses import MAX_BATCH
from .state import STATE, AppState


def make_app(settings: Settings, r: aioredis.Redis) -> web.Application:
    app = web.Application(middlewares=[access_log_middleware, errors_middleware, auth_middleware,
                                       admission.oom_middleware],
                          client_max_size=settings.max_body_bytes * MAX_BATCH)
    keys = Keys(settings.prefix)
    app[STATE] = AppState(settings, r, keys, Scripts(r, settings, keys))
    for area in (tickets, incidents, agents, ops):
        app.add_routes(area.routes)
    # the durability check first: when it refuses to start, no background task has been started yet (one left
    # running by a failed start could hang the event loop's shutdown)
    durability.setup(app)
    admission.setup(app)
    sse.setup(app)
    dashboard.setup(app)
    return app
