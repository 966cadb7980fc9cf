"""Master incidents: list, read, resolve, and regroup (split, move out, move, merge back)."""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest, Conflict, NotFound
from ..infra import operations, records
from .responses import int_param, jresponse, read_json
from .state import state

routes = web.RouteTableDef()


@routes.get("/v1/incidents")
async def list_incidents(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 100, 1, 1000)
    rows = await records.list_incidents(state(request).redis, state(request).keys, limit)
    return jresponse({"incidents": rows, "count": len(rows)})


@routes.get("/v1/incidents/{incident_id}")
async def get_incident(request: web.Request) -> web.Response:
    inc = await records.get_incident(state(request).redis, state(request).keys, request.match_info["incident_id"])
    if inc is None:
        raise NotFound(f"no incident {request.match_info['incident_id']!r}")
    return jresponse(inc)


@routes.post("/v1/incidents/{incident_id}/resolve")
async def resolve_incident(request: web.Request) -> web.Response:
    st, gid = state(request), request.match_info["incident_id"]
    res = await operations.resolve_incident(st.redis, st.keys, st.scripts, gid)
    outcome, n, agents = res.outcome, res.tickets, res.agents
    if outcome == "missing":
        raise NotFound(f"no incident {gid!r}")
    if outcome == "not_incident":
        raise Conflict(f"group {gid!r} never became a master incident")
    return jresponse({"incident_id": res.incident_id or gid, "status": "resolved",
                      "already_resolved": outcome == "already", "tickets_resolved": n, "agents_freed": agents})


def _ids(body: dict) -> list[str]:
    ids = body.get("ticket_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(x, str) and x for x in ids):
        raise BadRequest("ticket_ids must be a non-empty list of ticket ids", field="ticket_ids")
    if len(ids) > operations.MAX_REGROUP:
        raise BadRequest(f"at most {operations.MAX_REGROUP} ticket ids per call", field="ticket_ids")
    return ids


async def _object(request: web.Request) -> dict:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object", field="(body)")
    return body


def _named(body: dict, name: str, what: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must name {what}", field=name)
    return value


def _regrouped(res: operations.Regrouped) -> web.Response:
    return jresponse({"incident_id": res.source, "kind": res.kind, "target": res.target, "moved": res.moved,
                      "queued": res.queued, "attached": res.attached})


async def _regroup(request: web.Request, kind: str, ids: list[str], target: str = "") -> web.Response:
    st = state(request)
    res = await operations.regroup(st.redis, st.keys, st.scripts, kind, request.match_info["incident_id"], ids,
                                   target, log_window_s=st.settings.dedup_window_s)
    return _regrouped(res)


@routes.post("/v1/incidents/{incident_id}/split")
async def split_incident(request: web.Request) -> web.Response:
    """These members are another outage: they become a new incident (no page), pinned apart from this one."""
    return await _regroup(request, "split", _ids(await _object(request)))


@routes.post("/v1/incidents/{incident_id}/move-out")
async def move_out(request: web.Request) -> web.Response:
    """These members do not belong to any incident: a new group that is no incident, pinned apart from this one."""
    return await _regroup(request, "out", _ids(await _object(request)))


@routes.post("/v1/incidents/{incident_id}/move")
async def move_to(request: web.Request) -> web.Response:
    """These members belong to another incident or group (`to`)."""
    body = await _object(request)
    to = _named(body, "to", "the incident or group to move the tickets to")
    return await _regroup(request, "move", _ids(body), to)


@routes.post("/v1/incidents/{incident_id}/merge")
async def merge_into(request: web.Request) -> web.Response:
    """This incident (every member) is the same outage as `into`: merge it there (merge back after a split)."""
    into = _named(await _object(request), "into", "the incident to merge this one into")
    return await _regroup(request, "merge", [], into)
