"""The aiohttp app: webhook door, JSON API, health, metrics, OpenAPI (and, later, SSE + dashboard)."""

from __future__ import annotations

import hmac

import orjson
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from . import agents as agents_mod
from . import dashboard, events
from . import store, urgency
from .config import Settings
from .errors import BadRequest, Conflict, InvalidTicket, NotFound, PayloadTooLarge, RoutingError, UnsupportedMediaType
from .ingest import Ticket, validate
from .keys import Keys
from .metrics import HTTP_TICKETS
from .openapi import openapi_doc
from .scripts import Scripts, now_ms

log = structlog.get_logger("api")

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", aioredis.Redis)
KEYS = web.AppKey("keys", Keys)
SCRIPTS = web.AppKey("scripts", Scripts)

MAX_BATCH = 1000
routes = web.RouteTableDef()


def jresponse(data, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_body(code: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, **{k: v for k, v in extra.items() if v is not None}}}


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except InvalidTicket as exc:
        return jresponse(error_body(exc.code, str(exc), problems=exc.problems), exc.status)
    except BadRequest as exc:
        return jresponse(error_body(exc.code, str(exc), field=exc.field), exc.status)
    except RoutingError as exc:
        return jresponse(error_body(exc.code, str(exc)), exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return jresponse(error_body(exc.reason.lower().replace(" ", "_"), exc.text or exc.reason), exc.status)
    except aioredis.ConnectionError as exc:
        return jresponse(error_body("redis_unavailable", str(exc)), 503)


def _token_ok(request: web.Request, token: str) -> bool:
    auth = request.headers.get("Authorization", "")
    given = auth[7:] if auth.startswith("Bearer ") else request.cookies.get("routing_token", "")
    return bool(given) and hmac.compare_digest(given, token)


@web.middleware
async def auth_middleware(request: web.Request, handler):
    token = request.app[SETTINGS].api_token
    open_paths = ("/healthz", "/metrics", "/openapi.json", "/login")
    if token and not request.path.startswith(open_paths) and not _token_ok(request, token):
        if request.path == "/":  # a person at the dashboard gets the login form, not JSON
            from .dashboard import login_page

            return login_page()
        return jresponse(error_body("unauthorized", "missing or wrong API token (Bearer header or routing_token cookie)"), 401)
    return await handler(request)


async def _read_json(request: web.Request):
    s = request.app[SETTINGS]
    ctype = request.content_type
    if ctype != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {ctype or 'none'}")
    limit = s.max_body_bytes * (MAX_BATCH if request.path.endswith("/batch") else 1)
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body is {request.content_length} bytes; the limit is {limit}")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
    if not raw.strip():
        raise BadRequest("empty body: expected a JSON object", field="(body)")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}", field="(body)") from None


def _lane(s: Settings, k: Keys, ticket: Ticket) -> str:
    """Priority lane: text that already reads urgent (S from the text alone) skips the ingest queue."""
    pre, _ = urgency.score(ticket.subject, ticket.body, "", 0.0)
    return k.ingest_urgent if pre > s.urgent_threshold else k.ingest


def _ingest_call(app: web.Application, obj, ticket: Ticket, client=None):
    s, k = app[SETTINGS], app[KEYS]
    # the stream carries the client's object as sent; the enrich stage validates it again (same schema)
    return app[SCRIPTS].ingest(
        keys=[k.ticket(ticket.ticket_id), _lane(s, k, ticket), k.idx_all, k.idx_status("received"), k.events],
        args=[ticket.ticket_id, orjson.dumps(obj), now_ms(), s.stream_maxlen, s.ticket_ttl_s],
        client=client,
    )


async def _accept(app: web.Application, obj) -> tuple[Ticket, str, bool]:
    ticket = validate(obj, app[SETTINGS].max_text_chars)
    sid, created = await _ingest_call(app, obj, ticket)
    return ticket, sid.decode(), bool(created)


@routes.post("/v1/tickets")
async def post_ticket(request: web.Request) -> web.Response:
    obj = await _read_json(request)
    try:
        ticket, sid, created = await _accept(request.app, obj)
    except InvalidTicket:
        HTTP_TICKETS.labels("invalid").inc()
        raise
    HTTP_TICKETS.labels("accepted" if created else "duplicate").inc()
    return jresponse({"ticket_id": ticket.ticket_id, "stream_id": sid, "duplicate": not created}, 202)


@routes.post("/v1/tickets/batch")
async def post_batch(request: web.Request) -> web.Response:
    """Up to 1000 tickets in one request; each is accepted or rejected on its own."""
    items = await _read_json(request)
    if not isinstance(items, list) or not items or len(items) > MAX_BATCH:
        raise BadRequest(f"expected a JSON array of 1..{MAX_BATCH} tickets", field="(body)")
    app = request.app
    results: list[dict] = []
    accepted: list[tuple[int, Ticket]] = []
    async with app[REDIS].pipeline(transaction=False) as pipe:
        for i, obj in enumerate(items):
            try:
                ticket = validate(obj, app[SETTINGS].max_text_chars)
            except InvalidTicket as exc:
                HTTP_TICKETS.labels("invalid").inc()
                results.append({"index": i, "error": error_body(exc.code, str(exc), problems=exc.problems)["error"]})
                continue
            accepted.append((i, ticket))
            results.append({})
            await _ingest_call(app, obj, ticket, client=pipe)
        replies = await pipe.execute() if accepted else []
    slots = [r for r in results if not r]
    for slot, (i, ticket), (sid, created) in zip(slots, accepted, replies):
        HTTP_TICKETS.labels("accepted" if created else "duplicate").inc()
        slot.update({"index": i, "ticket_id": ticket.ticket_id, "stream_id": sid.decode(), "duplicate": not created})
    status = 202 if any("ticket_id" in r for r in results) else 422
    return jresponse({"results": results}, status)


@routes.get("/v1/tickets/{ticket_id}")
async def get_ticket(request: web.Request) -> web.Response:
    rec = await store.get_ticket(request.app[REDIS], request.app[KEYS], request.match_info["ticket_id"])
    if rec is None:
        raise NotFound(f"no ticket {request.match_info['ticket_id']!r}")
    return jresponse(rec)


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", field=name) from None
    if not lo <= v <= hi:
        raise BadRequest(f"{name} must be in {lo}..{hi}", field=name)
    return v


@routes.get("/v1/tickets")
async def list_tickets(request: web.Request) -> web.Response:
    from .keys import STATUSES

    status = request.query.get("status") or None
    if status and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}", field="status")
    limit = _int_param(request, "limit", 50, 1, 1000)
    rows = await store.list_tickets(request.app[REDIS], request.app[KEYS], status, limit)
    return jresponse({"tickets": rows, "count": len(rows)})


@routes.post("/v1/tickets/{ticket_id}/resolve")
async def resolve_ticket(request: web.Request) -> web.Response:
    k, tid = request.app[KEYS], request.match_info["ticket_id"]
    outcome, nxt, agent = await request.app[SCRIPTS].resolve(keys=[k.ticket(tid), k.events], args=[tid, now_ms(), k.base])
    outcome, nxt, agent = outcome.decode(), nxt.decode(), agent.decode()
    if outcome == "missing":
        raise NotFound(f"no ticket {tid!r}")
    if outcome == "not_routed":
        raise Conflict(f"ticket {tid!r} is {nxt!r}; only assigned, attached or queued tickets can be resolved")
    return jresponse({"ticket_id": tid, "status": "resolved", "already_resolved": outcome == "already",
                      "agent": agent or None, "next_ticket": nxt or None})


@routes.get("/v1/incidents")
async def list_incidents(request: web.Request) -> web.Response:
    limit = _int_param(request, "limit", 100, 1, 1000)
    rows = await store.list_incidents(request.app[REDIS], request.app[KEYS], limit)
    return jresponse({"incidents": rows, "count": len(rows)})


@routes.get("/v1/incidents/{incident_id}")
async def get_incident(request: web.Request) -> web.Response:
    inc = await store.get_incident(request.app[REDIS], request.app[KEYS], request.match_info["incident_id"])
    if inc is None:
        raise NotFound(f"no incident {request.match_info['incident_id']!r}")
    return jresponse(inc)


@routes.post("/v1/incidents/{incident_id}/resolve")
async def resolve_incident(request: web.Request) -> web.Response:
    k, gid = request.app[KEYS], request.match_info["incident_id"]
    outcome, n, agents = await request.app[SCRIPTS].resolve_incident(
        keys=[k.group(gid), k.members(gid), k.incidents, k.events], args=[gid, now_ms(), k.base])
    outcome = outcome.decode()
    if outcome == "missing":
        raise NotFound(f"no incident {gid!r}")
    if outcome == "not_incident":
        raise Conflict(f"group {gid!r} never became a master incident")
    return jresponse({"incident_id": gid, "status": "resolved", "already_resolved": outcome == "already",
                      "tickets_resolved": int(n), "agents_freed": [a.decode() for a in agents]})


@routes.get("/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    rows = await agents_mod.list_agents(request.app[REDIS], request.app[KEYS])
    return jresponse({"agents": rows})


@routes.put("/v1/agents/{agent_id}")
async def put_agent(request: web.Request) -> web.Response:
    obj = await _read_json(request)
    agent_id = request.match_info["agent_id"]
    if isinstance(obj, dict) and obj.get("id", agent_id) != agent_id:
        raise BadRequest("id in the body differs from the URL", field="id")
    agent = agents_mod.check_agent(agent_id, obj)
    await agents_mod.put_agent(request.app[REDIS], request.app[KEYS], agent)
    return jresponse(await agents_mod.get_agent(request.app[REDIS], request.app[KEYS], agent_id))


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    r, k = request.app[REDIS], request.app[KEYS]
    try:
        await r.ping()
        state = await store.pipeline_state(r, k)
    except (aioredis.ConnectionError, OSError) as exc:
        return jresponse({"status": "unavailable", "redis": False, "error": str(exc)}, 503)
    lag = {f"{s}/{g}": v["lag"] for s, info in state.items() for g, v in info.get("groups", {}).items()}
    return jresponse({"status": "ok", "redis": True, "lag": lag, "streams": state})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    from .promstate import redis_metrics

    body = generate_latest(REGISTRY) + await redis_metrics(request.app[REDIS], request.app[KEYS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return jresponse(openapi_doc())


def make_app(settings: Settings, r: aioredis.Redis) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, auth_middleware],
                          client_max_size=settings.max_body_bytes * MAX_BATCH)
    app[SETTINGS] = settings
    app[REDIS] = r
    app[KEYS] = Keys(settings.prefix)
    app[SCRIPTS] = Scripts(r)
    app.add_routes(routes)
    events.setup(app)
    dashboard.setup(app)
    return app
