"""Who may do what: three scoped tokens (ingest, read, operate), which scope each route needs, and the two facts
about a request that depend on trusting a proxy (the client's address, whether it came over TLS).

ROUTING_API_TOKEN is the operate token under its older name. With no token configured at all every request gets
every scope: the CLI only allows that on loopback (Settings.bind_refusal).
"""

from __future__ import annotations

from aiohttp import web

from ..config import Settings
from .tokens import token_matches

INGEST, READ, OPERATE = "ingest", "read", "operate"
EVERY_SCOPE = frozenset((INGEST, READ, OPERATE))
INGEST_ROUTES = ("/v1/tickets", "/v1/tickets/batch")
# /healthz answers everyone (detail only with read); the login form must be reachable without a token
OPEN_PATHS = ("/healthz", "/openapi.json", "/login", "/logout")
SCOPES = web.RequestKey("scopes", frozenset)  # the scopes this request proved


def token_scopes(s: Settings, given: str) -> frozenset[str]:
    """The scopes `given` grants. Every configured token is compared (constant time each), match or not."""
    granted: set[str] = set()
    for token, scopes in ((s.operate_token, EVERY_SCOPE), (s.api_token, EVERY_SCOPE),
                          (s.read_token, {READ}), (s.ingest_token, {INGEST})):
        if token_matches(given, token):
            granted |= scopes
    return frozenset(granted)


def given_token(request: web.Request) -> str:
    """Bearer header, else the dashboard's cookie; never the URL (it would end up in history and access logs)."""
    auth = request.headers.get("Authorization", "")
    return auth[7:] if auth.startswith("Bearer ") else request.cookies.get("routing_token", "")


def required_scope(request: web.Request) -> str | None:
    if request.path in OPEN_PATHS:
        return None
    if request.method == "POST" and request.path in INGEST_ROUTES:
        return INGEST
    if request.method in ("GET", "HEAD"):
        return READ  # the JSON reads, the SSE feed, the dashboard and its assets, /metrics
    return OPERATE  # resolve, PUT agents, anything that changes state


def scopes(request: web.Request) -> frozenset[str]:
    return request.get(SCOPES, frozenset())


def client_address(request: web.Request, trust_proxy: bool) -> str:
    """The peer, or with a trusted proxy the address it saw (the last X-Forwarded-For hop: the one it added)."""
    if trust_proxy:
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        if hops:
            return hops[-1]
    return request.remote or "unknown"


def came_over_tls(request: web.Request, trust_proxy: bool) -> bool:
    if request.secure:
        return True
    # only a proxy we run may say so: a client could send the header itself
    return trust_proxy and request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower() == "https"
