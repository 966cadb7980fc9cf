"""Operator actions that change several tickets at once: resolve a ticket, resolve a master incident.

Each reads what it needs (assignee, team, queue heads, members), then runs one atomic script that gets every
key it touches; when something moved between the read and the script, the script writes nothing and answers
'stale', and the action reads again.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from ..errors import RoutingError
from .keys import EVENTS_MAXLEN, Keys
from .scripts import STATUS_LIST, Scripts, now_ms

ATTEMPTS = 20  # a stale read needs another pass only when a ticket moved in between; 20 in a row is a bug


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
            "resolve", keys, [ticket_id, now_ms(), EVENTS_MAXLEN, STATUS_LIST, agent, team, *heads])
        if _s(outcome) != "stale":
            return Resolved(_s(outcome), _s(detail), _s(who))
    raise Contended(f"ticket {ticket_id!r} kept changing while being resolved; try again")


async def resolve_incident(r: aioredis.Redis, k: Keys, scripts: Scripts, gid: str) -> IncidentResolved:
    for _ in range(ATTEMPTS):
        members = [_s(m) for m in await r.lrange(k.members(gid), 0, -1)]
        async with r.pipeline(transaction=False) as pipe:
            for m in members:
                pipe.hmget(k.ticket(m), "assignee", "team")
            rows = await pipe.execute()
        keys = [k.group(gid), k.members(gid), k.incidents, k.events, *k.idx_statuses]
        args: list = [gid, now_ms(), EVENTS_MAXLEN, STATUS_LIST]
        for m, (agent, team) in zip(members, rows):
            agent, team = _s(agent), _s(team)
            keys += [k.ticket(m), k.agent(agent) if agent else k.ticket(m), k.queue(team)]
            args += [m, agent, team]
        outcome, n, agents = await scripts.call("resolve_incident", keys, args)
        if _s(outcome) != "stale":
            return IncidentResolved(_s(outcome), int(n), [_s(a) for a in agents])
    raise Contended(f"incident {gid!r} kept changing while being resolved; try again")
