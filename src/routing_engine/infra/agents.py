"""Agents in Redis: load from YAML, list, update. Loads change only inside the Lua scripts."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis
import yaml

from ..errors import InvalidTicket
from ..resources import asset_dir
from .keys import EVENTS_MAXLEN, Keys


def default_agents_file() -> Path:
    return asset_dir("config") / "agents.yaml"


def check_agent(agent_id: str, doc: dict) -> dict:
    """Validate one agent document (from YAML or PUT); returns the normalised agent."""
    problems = []
    if not isinstance(doc, dict):
        raise InvalidTicket([{"field": "(root)", "problem": "expected a JSON object"}])
    unknown = set(doc) - {"id", "name", "capacity", "skills", "active"}
    for f in sorted(unknown):
        problems.append({"field": f, "problem": "unknown field"})
    cap = doc.get("capacity", 1)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0 or cap > 10_000:
        problems.append({"field": "capacity", "problem": "must be an integer 0..10000"})
    skills = doc.get("skills", {})
    if not isinstance(skills, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
        for k, v in skills.items()
    ):
        problems.append({"field": "skills", "problem": "must map team names to weights in [0, 1]"})
    if "active" in doc and not isinstance(doc["active"], bool):
        problems.append({"field": "active", "problem": "must be true or false"})
    if "name" in doc and not isinstance(doc["name"], str):
        problems.append({"field": "name", "problem": "must be a string"})
    if not agent_id or len(agent_id) > 64 or not all(c.isalnum() or c in "._-" for c in agent_id):
        problems.append({"field": "id", "problem": "1-64 characters: letters, digits, . _ -"})
    if problems:
        raise InvalidTicket(problems)
    return {"id": agent_id, "name": doc.get("name", agent_id), "capacity": cap,
            "skills": {k: float(v) for k, v in skills.items()}, "active": doc.get("active", True)}


async def put_agent(r: aioredis.Redis, k: Keys, agent: dict) -> None:
    """Create or replace an agent's settings; its current load is kept."""
    key = k.agent(agent["id"])
    old = await r.hkeys(key)
    async with r.pipeline(transaction=True) as pipe:
        stale = [f for f in old if f.startswith(b"skill:")]
        if stale:
            pipe.hdel(key, *stale)
        mapping = {"name": agent["name"], "capacity": agent["capacity"], "active": "1" if agent["active"] else "0"}
        mapping.update({f"skill:{t}": w for t, w in agent["skills"].items()})
        pipe.hset(key, mapping=mapping)
        pipe.hsetnx(key, "load", 0)
        pipe.sadd(k.agents, agent["id"])
        pipe.xadd(k.events, {"type": "agent.updated", "agent": agent["id"]}, maxlen=EVENTS_MAXLEN, approximate=True)
        await pipe.execute()


async def load_agents_file(r: aioredis.Redis, k: Keys, path: str | Path | None = None) -> int:
    """Merge the YAML's agents into Redis: an agent that does not exist yet is created; one that exists keeps its
    settings (what an operator changed with PUT survives a restart) and its load. Returns how many the file has."""
    path = Path(path) if path else default_agents_file()
    doc = yaml.safe_load(path.read_text()) or {}
    agents = doc.get("agents", [])
    for a in agents:
        agent = check_agent(str(a.get("id", "")), {x: y for x, y in a.items()})
        if not await r.hexists(k.agent(agent["id"]), "capacity"):
            await put_agent(r, k, agent)
    return len(agents)


def _decode(agent_id: str, h: dict[bytes, bytes]) -> dict:
    d = {k.decode(): v.decode() for k, v in h.items()}
    return {
        "id": agent_id, "name": d.get("name", agent_id), "capacity": int(d.get("capacity", 0)),
        "load": int(d.get("load", 0)), "active": d.get("active", "1") != "0",
        "skills": {f[6:]: float(v) for f, v in d.items() if f.startswith("skill:")},
    }


async def agent_ids(r: aioredis.Redis, k: Keys) -> list[str]:
    return sorted(i.decode() for i in await r.smembers(k.agents))


async def list_agents(r: aioredis.Redis, k: Keys) -> list[dict]:
    ids = await agent_ids(r, k)
    async with r.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.hgetall(k.agent(i))
        rows = await pipe.execute()
    return [_decode(i, h) for i, h in zip(ids, rows)]


async def get_agent(r: aioredis.Redis, k: Keys, agent_id: str) -> dict | None:
    h = await r.hgetall(k.agent(agent_id))
    return _decode(agent_id, h) if h else None
