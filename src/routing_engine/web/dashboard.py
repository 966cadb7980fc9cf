"""The live monitor page: serves dashboards/ at / and a token login that sets the routing_token cookie.

EventSource cannot send an Authorization header, so a browser proves a read (or operate) token once through the
login form (POST) and then rides on an HttpOnly, SameSite=Strict cookie, Secure over TLS, which auth_middleware
accepts.
"""

from __future__ import annotations

import html
import math

from aiohttp import web

from ..resources import asset_dir
from .auth import READ, came_over_tls, client_address, token_scopes
from .state import STATE
from .throttle import SharedThrottle

COOKIE = "routing_token"
THROTTLE = web.AppKey("login_throttle", SharedThrottle)

_LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>routing-engine · sign in</title>
<style>body{{font:15px system-ui,sans-serif;background:#0f1419;color:#e6e6e6;display:grid;place-items:center;
min-height:90vh}}form{{background:#1a2028;padding:24px;border-radius:8px;display:grid;gap:10px;min-width:260px}}
input,button{{font:inherit;padding:8px;border-radius:4px;border:1px solid #394452;background:#0f1419;color:inherit}}
button{{background:#2f6feb;border:0;cursor:pointer}}.err{{color:#ff7b72}}</style></head>
<body><form method="post" action="/login"><b>Live monitor</b>
<label for="token">API token</label><input id="token" name="token" type="password" \
autocomplete="current-password" autofocus>
{error}<button type="submit">Sign in</button></form></body></html>"""


def login_page(error: str = "", status: int = 401) -> web.Response:
    err = f'<div class="err">{html.escape(error)}</div>' if error else ""
    return web.Response(text=_LOGIN.format(error=err), status=status, content_type="text/html")


async def login(request: web.Request) -> web.StreamResponse:
    """GET shows the form; POST checks it. A token is never read from the URL (history, proxies and access logs
    keep URLs); failures are throttled per client address."""
    s = request.app[STATE].settings
    if request.method == "GET" and "token" in request.query:
        return login_page("a token in the address is not accepted (it stays in history and logs): use this form",
                          status=400)
    if not s.tokens_configured:
        raise web.HTTPFound("/")
    if request.method == "GET":
        return login_page(status=200)
    st = request.app[STATE]
    throttle, who = request.app[THROTTLE], client_address(request, s.trust_proxy)
    wait = await throttle.retry_after(st.redis, st.keys, who)
    if wait:
        resp = login_page("too many failed attempts: wait a minute", status=429)
        resp.headers["Retry-After"] = str(math.ceil(wait))
        return resp
    try:
        form = await request.post()
    except ValueError as exc:  # a form aiohttp cannot parse (multipart without a boundary, ...): the client's fault
        return login_page(f"the form could not be read: {exc}", status=400)
    given = str(form.get("token", ""))
    if READ not in token_scopes(s, given):  # an ingest-only token cannot watch the monitor either
        await throttle.failed(st.redis, st.keys, who)
        return login_page("wrong token")
    # 303: the browser follows with a GET to /
    resp = web.HTTPSeeOther("/")
    resp.set_cookie(COOKIE, given, httponly=True, samesite="Strict", secure=came_over_tls(request, s.trust_proxy),
                    path="/")
    raise resp


async def logout(request: web.Request) -> web.StreamResponse:
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(COOKIE, path="/")
    raise resp


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(asset_dir("dashboards") / "index.html", headers={"Cache-Control": "no-cache"})


def setup(app: web.Application) -> None:
    app[THROTTLE] = SharedThrottle(limit=5, window_s=60.0)
    app.router.add_get("/", index)
    app.router.add_route("GET", "/login", login)
    app.router.add_route("POST", "/login", login)
    app.router.add_get("/logout", logout)
    app.router.add_static("/dashboard/", asset_dir("dashboards"), append_version=False)
