"""The one object the web app shares between its handlers, under one typed AppKey (aiohttp's "no singletons")."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web

from ..config import Settings
from ..infra.keys import Keys
from ..infra.scripts import Scripts
from .hub import Hub


@dataclass
class AppState:
    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    scripts: Scripts
    hub: Hub | None = None  # the SSE hub, created at startup (cleanup_ctx) and closed at shutdown


STATE = web.AppKey("state", AppState)


def state(request: web.Request) -> AppState:
    return request.app[STATE]
