"""Operator actions that change several tickets at once: resolve a ticket, resolve a master incident, regroup an
incident's tickets (split, move out, move, merge back), fill free slots from the queues (run after these, after an
agent change and when the route stage queues a ticket behind waiting ones while an agent is free).

Each reads what it needs (assignee, team, queue heads, members), then runs one atomic script that gets every
key it touches; when something moved between the read and the script, the script writes nothing and answers
'stale', and the action reads again.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis
import structlog

from ..errors import BadRequest, Conflict, NotFound, RoutingError
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


async def survivor(r: aioredis.Redis, k: Keys, gid: str) -> str:
    """The group `gid` became: followed through `merged_into` (50 hops at most)."""
    for _ in range(50):
        into = await r.hget(k.group(gid), "merged_into")
        if not into:
            break
        gid = _s(into)
    return gid


async def resolve_incident(r: aioredis.Redis, k: Keys, scripts: Scripts, gid: str) -> IncidentResolved:
    # an incident merged into another one of the same storm: resolving it resolves the one it became
    gid = await survivor(r, k, gid)
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


@dataclass
class Regrouped:
    kind: str  # split | out | move | merge
    source: str
    target: str
    moved: int
    queued: list[str]  # riders of the source's assignee that nobody covers now: queued on their teams
    attached: int  # riders now on the target incident's assignee


REGROUP_KINDS = ("split", "out", "move", "merge")
MAX_REGROUP = 1000  # ticket ids one call may move (bounds the script's KEYS)


async def regroup(r: aioredis.Redis, k: Keys, scripts: Scripts, kind: str, source: str, tickets: list[str],
                  target: str = "", log_window_s: int = 300) -> Regrouped:
    """An operator moves tickets between groups (streams/regroup.lua): `split` makes `tickets` a new incident,
    `out` a new group that is no incident, `move` adds them to the existing `target`, `merge` moves every member of
    `source` to `target` and points `source` to it. Raises NotFound / Conflict / BadRequest with the reason."""
    if kind not in REGROUP_KINDS:
        raise BadRequest(f"unknown regroup kind {kind!r}")
    h = await r.hgetall(k.group(source))
    if not h:
        raise NotFound(f"no incident or group {source!r}")
    if into := h.get(b"merged_into"):
        raise Conflict(f"{source!r} was merged into {_s(into)!r}: regroup that one")
    if kind in ("move", "merge"):
        target = await survivor(r, k, target)  # a target merged away: the group it became
        if target == source:
            raise BadRequest(f"{source!r} cannot {kind} into itself", field="into" if kind == "merge" else "to")
        if not await r.exists(k.group(target)):
            raise NotFound(f"no incident or group {target!r} to {kind} into")
    for _ in range(ATTEMPTS):
        members = [_s(m) for m in await r.lrange(k.members(source), 0, -1)]
        ids = list(members) if kind == "merge" else list(dict.fromkeys(tickets))
        if kind != "merge":
            missing = sorted(set(ids) - set(members))
            if missing:
                raise BadRequest(f"not members of {source!r}: {', '.join(missing[:20])}", field="ticket_ids")
            if len(ids) == len(members):
                raise BadRequest(f"that is every member of {source!r}: merge it, or resolve it, instead",
                                 field="ticket_ids")
        if len(ids) > MAX_REGROUP:
            raise BadRequest(f"at most {MAX_REGROUP} tickets per call", field="ticket_ids")
        dst = target
        if kind in ("split", "out"):
            n = 1
            while await r.exists(k.group(f"{source}.{kind}{n}")):
                n += 1
            dst = f"{source}.{kind}{n}"
        assignee = _s(await r.hget(k.group(dst), "assignee")) if kind in ("move", "merge") else ""
        if not assignee and kind == "merge":
            assignee = _s(h.get(b"assignee"))
        async with r.pipeline(transaction=False) as pipe:
            for t in ids:
                pipe.hget(k.ticket(t), "team")
            teams = [_s(x) for x in await pipe.execute()]
        sample = _s(h.get(b"sample"))
        if kind in ("split", "out"):  # the new group's sample: its first ticket's subject
            raw = await r.hget(k.ticket(ids[0]), "ticket")
            t = orjson.loads(raw) if raw else {}
            sample = ((t.get("subject") or t.get("body") or "")[:200]) or sample
        keys = [k.dedup_seq, k.dedup_log, k.incidents, k.events, k.group(source), k.members(source), k.group(dst),
                k.members(dst), k.agent(assignee) if assignee else k.group(dst), *k.idx_statuses]
        for t, team in zip(ids, teams):
            keys += [k.ticket(t), k.queue(team or "_none")]
        keys.append(k.storming)
        log_min = now_ms() - (log_window_s + 60) * 1000
        reply = await scripts.call("regroup", keys, [kind, source, dst, now_ms(), EVENTS_MAXLEN, log_min, STATUS_LIST,
                                                      len(members), sample, _s(h.get(b"team")), *ids])
        outcome = _s(reply[0])
        if outcome == "stale":
            continue
        if outcome == "error":
            why = _s(reply[1])
            if why.startswith("not_member:"):
                raise BadRequest(f"{why[11:]!r} is not a member of {source!r}", field="ticket_ids")
            raise Conflict(f"cannot {kind} {source!r}: {why.replace('_', ' ')}")
        queued = [_s(x) for x in reply[3]]
        log.info("regroup.done", kind=kind, source=source, target=dst, moved=int(reply[2]), queued=len(queued))
        if queued:
            await fill_after(r, k, scripts, f"incident {kind}")
        return Regrouped(kind, source, dst, int(reply[2]), queued, int(reply[4]))
    raise Contended(f"{source!r} kept changing while being regrouped; try again")
