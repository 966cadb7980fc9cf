"""Agents from the YAML are merged on start, not reset: a restart creates the agents that do not exist and leaves
the settings an operator changed with PUT (and every load) as they are."""

from __future__ import annotations

from routing_engine.infra.agents import get_agent, load_agents_file, put_agent
from routing_engine.infra.keys import Keys


async def test_a_restart_keeps_put_changes_and_loads_and_creates_missing_agents(r, prefix):
    k = Keys(prefix)
    n = await load_agents_file(r, k)
    assert n > 2 and (await get_agent(r, k, "ana"))["capacity"] == 8
    await put_agent(r, k, {"id": "ana", "name": "Ana", "capacity": 3, "skills": {"cards": 0.5}, "active": False})
    await r.hset(k.agent("ben"), "load", 2)  # tickets ben holds (only the scripts change loads)
    await r.delete(k.agent("chen"))  # as on a Redis that never had chen
    assert await load_agents_file(r, k) == n  # the restart
    ana = await get_agent(r, k, "ana")
    assert (ana["capacity"], ana["skills"], ana["active"]) == (3, {"cards": 0.5}, False)
    assert (await get_agent(r, k, "ben"))["load"] == 2
    chen = await get_agent(r, k, "chen")
    assert chen is not None and chen["capacity"] == 6 and chen["load"] == 0
