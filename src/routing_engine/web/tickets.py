"""Tickets: the webhook door (one or a batch), reading a ticket's trail, listing, resolving."""

from __future__ import annotations

from aiohttp import web

from ..domain.idempotency import body_hash, canonical_json
from ..domain.ticket import STATUSES, Ticket, validate
from ..errors import BadRequest, Conflict, IdConflict, InvalidTicket, NotFound, RoutingError
from ..infra import operations, records
from ..metrics import HTTP_TICKETS
from . import durability
from .admission import admit
from .responses import MAX_BATCH, error_body, int_param, jresponse, read_json
from .state import STATE, state

routes = web.RouteTableDef()


def _ingest_call(app: web.Application, body: bytes, ticket: Ticket, client=None):
    st = app[STATE]
    # the stream carries the client's object (canonical JSON); the enrich stage validates it again (same schema)
    return st.scripts.ingest(ticket_id=ticket.ticket_id, ticket_json=body,
                             lane=st.scripts.lane(ticket), client=client)


def _conflict(ticket: Ticket, accepted: bytes, body: bytes) -> IdConflict:
    return IdConflict(f"id {ticket.ticket_id!r} was accepted with another body; post it with a new id, or resend "
                      "the body first accepted", field="id", ticket_id=ticket.ticket_id,
                      accepted_sha256=accepted.decode(), posted_sha256=body_hash(body))


async def _accept(app: web.Application, obj) -> tuple[Ticket, str, bool]:
    """One ticket through the door: (ticket, stream id, created); raises InvalidTicket or IdConflict."""
    ticket = validate(obj, app[STATE].settings.max_text_chars)
    body = canonical_json(obj)
    async with app[STATE].redis.pipeline(transaction=False) as pipe:
        await _ingest_call(app, body, ticket, client=pipe)
        [(sid, created, accepted)] = await durability.execute(app, pipe)
    if created == -1:
        raise _conflict(ticket, accepted, body)
    return ticket, sid.decode(), bool(created)


@routes.post("/v1/tickets")
async def post_ticket(request: web.Request) -> web.Response:
    admit(request)
    obj = await read_json(request)
    try:
        ticket, sid, created = await _accept(request.app, obj)
    except InvalidTicket:
        HTTP_TICKETS.labels("invalid").inc()
        raise
    except IdConflict:
        HTTP_TICKETS.labels("conflict").inc()
        raise
    HTTP_TICKETS.labels("accepted" if created else "duplicate").inc()
    return jresponse({"ticket_id": ticket.ticket_id, "stream_id": sid, "duplicate": not created}, 202)


def _item_error(i: int, exc: RoutingError) -> dict:
    return {"index": i, "error": {"status": exc.status, **error_body(exc.code, str(exc), **exc.details)["error"]}}


@routes.post("/v1/tickets/batch")
async def post_batch(request: web.Request) -> web.Response:
    """Up to 1000 tickets in one request; each is accepted, a duplicate, or rejected (422, 409) on its own."""
    admit(request)
    items = await read_json(request)
    if not isinstance(items, list) or not items or len(items) > MAX_BATCH:
        raise BadRequest(f"expected a JSON array of 1..{MAX_BATCH} tickets", field="(body)")
    app = request.app
    st = app[STATE]
    results: list[dict] = []
    accepted: list[tuple[int, Ticket, bytes]] = []
    async with st.redis.pipeline(transaction=False) as pipe:
        for i, obj in enumerate(items):
            try:
                ticket = validate(obj, st.settings.max_text_chars)
            except InvalidTicket as exc:
                HTTP_TICKETS.labels("invalid").inc()
                results.append(_item_error(i, exc))
                continue
            body = canonical_json(obj)
            accepted.append((i, ticket, body))
            results.append({})
            await _ingest_call(app, body, ticket, client=pipe)
        replies = await durability.execute(app, pipe) if accepted else []
    slots = [r for r in results if not r]
    for slot, (i, ticket, body), (sid, created, hash_) in zip(slots, accepted, replies):
        if created == -1:
            HTTP_TICKETS.labels("conflict").inc()
            slot.update(_item_error(i, _conflict(ticket, hash_, body)))
            continue
        HTTP_TICKETS.labels("accepted" if created else "duplicate").inc()
        slot.update({"index": i, "ticket_id": ticket.ticket_id, "stream_id": sid.decode(), "duplicate": not created})
    # 202 when any ticket is in (new or duplicate); else the failure every item shares, 422 when they differ
    statuses = {r["error"]["status"] for r in results if "error" in r}
    status = 202 if any("ticket_id" in r for r in results) else statuses.pop() if len(statuses) == 1 else 422
    return jresponse({"results": results}, status)


@routes.get("/v1/tickets/{ticket_id}")
async def get_ticket(request: web.Request) -> web.Response:
    rec = await records.get_ticket(state(request).redis, state(request).keys, request.match_info["ticket_id"])
    if rec is None:
        raise NotFound(f"no ticket {request.match_info['ticket_id']!r}")
    return jresponse(rec)


@routes.get("/v1/tickets")
async def list_tickets(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    if status and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}", field="status")
    limit = int_param(request, "limit", 50, 1, 1000)
    rows = await records.list_tickets(state(request).redis, state(request).keys, status, limit)
    return jresponse({"tickets": rows, "count": len(rows)})


@routes.post("/v1/tickets/{ticket_id}/resolve")
async def resolve_ticket(request: web.Request) -> web.Response:
    st, tid = state(request), request.match_info["ticket_id"]
    res = await operations.resolve_ticket(st.redis, st.keys, st.scripts, tid)
    outcome, nxt, agent = res.outcome, res.detail, res.agent
    if outcome == "missing":
        raise NotFound(f"no ticket {tid!r}")
    if outcome == "not_routed":
        raise Conflict(f"ticket {tid!r} is {nxt!r}; only assigned, attached or queued tickets can be resolved")
    return jresponse({"ticket_id": tid, "status": "resolved", "already_resolved": outcome == "already",
                      "agent": agent or None, "next_ticket": nxt or None})
