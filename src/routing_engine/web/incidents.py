"""Master incidents: list, read, resolve."""

from __future__ import annotations

from aiohttp import web

from ..errors import Conflict, NotFound
from ..infra import operations, records
from .responses import int_param, jresponse
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
