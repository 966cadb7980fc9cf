"""Operator actions that change several tickets at once: resolve a ticket, resolve a master incident, fill free
slots from the queues (run after both, after an agent change and when the route stage queues a ticket behind
waiting ones while an agent is free).

Each reads what it needs (assignee, team, queue heads, members), then runs one atomic script that gets every
key it touches; when something moved between the read and the script, the script writes nothing and answers
'stale', and the action reads again.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog

from ..errors import RoutingError
from .agents import agent_ids
from .keys import EVENTS_MAXLEN, Keys
from .scripts import STATUS_LIST, Scripts, now_ms

ATTEMPTS = 20  # a stale read needs another pass only when a ticket moved in between; 20 in a row is a bug
FILL_MAX = 200  # queued tickets one fill call may hand out (bounds its KEYS); a full pass loops for more

log = structlog.get_logger("operations")


class Contended(RoutingError):
    status = 503
    code = "contended"


@dataclass
class Resolved:
    outcome: str  # resolved | already | missing | not_routed
    detail: str  # the next ticket handed to the agent, or the status that forbids resolving
    agent: str


@dataclass
class IncidentResolved:
    outcome: str  # resolved | already | missing | not_incident
    tickets: int
    agents: list[str]
    incident_id: str = ""  # the incident resolved: the one asked for, or the one it was merged into


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v or "")


async def resolve_ticket(r: aioredis.Redis, k: Keys, scripts: Scripts, ticket_id: str) -> Resolved:
    rec = k.ticket(ticket_id)
    for _ in range(ATTEMPTS):
        agent, team = (_s(v) for v in await r.hmget(rec, "assignee", "team"))
        queues: list[str] = []
        if agent:
            skills = await r.hgetall(k.agent(agent))
            queues = [k.queue(f.decode()[6:]) for f, w in skills.items()
                      if f.startswith(b"skill:") and float(w) > 0]
        heads = []
        for q in queues:
            top = await r.zrange(q, 0, 0)
            heads.append(_s(top[0]) if top else "")
        keys = [rec, k.events, k.agent(agent) if agent else rec, k.queue(team), *k.idx_statuses]
        for q, head in zip(queues, heads):
            keys += [q, k.ticket(head) if head else q]
        outcome, detail, who = await scripts.call(
            "resolve", keys, [ticket_id, now_ms(), EVENTS_MAXLEN, STATUS_LIST, agent, team, scripts.s.ticket_ttl_s,
                              *heads])
        if _s(outcome) != "stale":
            if _s(outcome) == "resolved":
                await fill_after(r, k, scripts, "ticket resolved")
            return Resolved(_s(outcome), _s(detail), _s(who))
    raise Contended(f"ticket {ticket_id!r} kept changing while being resolved; try again")


async def resolve_incident(r: aioredis.Redis, k: Keys, scripts: Scripts, gid: str) -> IncidentResolved:
    # an incident merged into another one of the same storm: resolving it resolves the one it became
    for _ in range(50):
        into = await r.hget(k.group(gid), "merged_into")
        if not into:
            break
        gid = _s(into)
    for _ in range(ATTEMPTS):
        members = [_s(m) for m in await r.lrange(k.members(gid), 0, -1)]
        async with r.pipeline(transaction=False) as pipe:
            for m in members:
                pipe.hmget(k.ticket(m), "assignee", "team")
            rows = await pipe.execute()
        keys = [k.group(gid), k.members(gid), k.incidents, k.events, *k.idx_statuses]
        args: list = [gid, now_ms(), EVENTS_MAXLEN, STATUS_LIST, scripts.s.ticket_ttl_s]
        for m, (agent, team) in zip(members, rows):
            agent, team = _s(agent), _s(team)
            keys += [k.ticket(m), k.agent(agent) if agent else k.ticket(m), k.queue(team)]
            args += [m, agent, team]
        outcome, n, agents = await scripts.call("resolve_incident", keys, args)
        if _s(outcome) != "stale":
            if _s(outcome) == "resolved":
                await fill_after(r, k, scripts, "incident resolved")
            return IncidentResolved(_s(outcome), int(n), [_s(a) for a in agents], gid)
    raise Contended(f"incident {gid!r} kept changing while being resolved; try again")


async def fill_slots(r: aioredis.Redis, k: Keys, scripts: Scripts) -> list[tuple[str, str]]:
    """Hand queued tickets to free agents (streams/fill.lua) until no queued ticket fits a free slot; returns
    the (ticket, agent) pairs handed out. Raises Contended when the queues kept moving under it."""
    handed: list[tuple[str, str]] = []
    attempts = 0
    while attempts < ATTEMPTS:
        ids = await agent_ids(r, k)
        async with r.pipeline(transaction=False) as pipe:
            for a in ids:
                pipe.hgetall(k.agent(a))
            rows = await pipe.execute()
        free, spare, teams = [], 0, set()
        for a, h in zip(ids, rows):
            d = {f.decode(): v.decode() for f, v in h.items()}
            room = int(d.get("capacity", 0)) - int(d.get("load", 0))
            if d.get("active", "1") != "0" and room > 0:
                free.append(a)
                spare += room
                teams |= {f[6:] for f, w in d.items() if f.startswith("skill:") and float(w) > 0}
        if not free:
            return handed
        n = min(spare, FILL_MAX)
        team_list = sorted(teams)
        async with r.pipeline(transaction=False) as pipe:
            for t in team_list:
                pipe.zrange(k.queue(t), 0, n - 1)
            heads = [[_s(x) for x in row] for row in await pipe.execute()]
        if not any(heads):
            return handed
        keys = [k.events, *k.idx_statuses, *(k.agent(a) for a in free)]
        args: list = [now_ms(), EVENTS_MAXLEN, STATUS_LIST, len(free), *free]
        for t, hs in zip(team_list, heads):
            if hs:
                keys += [k.queue(t), *(k.ticket(x) for x in hs)]
                args += [t, len(hs), *hs]
        outcome, pairs = await scripts.call("fill", keys, args)
        if _s(outcome) == "stale":
            attempts += 1
            continue
        got = [(_s(pairs[i]), _s(pairs[i + 1])) for i in range(0, len(pairs), 2)]
        handed += got
        if not got or max(len(hs) for hs in heads) < n or n < FILL_MAX:
            return handed  # every head that fits was placed (a full FILL_MAX pass may have more behind it)
    raise Contended("the queues kept changing while filling free slots; try again")


async def fill_after(r: aioredis.Redis, k: Keys, scripts: Scripts, cause: str) -> list[tuple[str, str]]:
    """fill_slots after an action that already happened: contention is logged, not raised (the next capacity
    change fills again)."""
    try:
        return await fill_slots(r, k, scripts)
    except Contended:
        log.warning("fill.contended", cause=cause)
        return []
