"""Agents: list with load and capacity, create or update one (queued tickets then take any slot it opened)."""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest
from ..infra import agents as agents_store
from ..infra import operations
from .responses import jresponse, read_json
from .state import state

routes = web.RouteTableDef()


@routes.get("/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    rows = await agents_store.list_agents(state(request).redis, state(request).keys)
    return jresponse({"agents": rows})


@routes.put("/v1/agents/{agent_id}")
async def put_agent(request: web.Request) -> web.Response:
    obj = await read_json(request)
    agent_id = request.match_info["agent_id"]
    if isinstance(obj, dict) and obj.get("id", agent_id) != agent_id:
        raise BadRequest("id in the body differs from the URL", field="id")
    agent = agents_store.check_agent(agent_id, obj)
    st = state(request)
    await agents_store.put_agent(st.redis, st.keys, agent)
    # more capacity, a new agent or one active again: queued tickets take the free slots
    await operations.fill_after(st.redis, st.keys, st.scripts, "agent changed")
    return jresponse(await agents_store.get_agent(state(request).redis, state(request).keys, agent_id))
