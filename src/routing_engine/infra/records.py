"""Read side: ticket records and incidents read back from Redis as plain dicts for the API."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from .keys import Keys

_JSON_FIELDS = ("ticket", "enrich", "dedup", "route")

_INT_FIELDS = ("received_at", "t_enrich", "t_enrich_start", "t_dedup", "t_route", "assigned_at", "resolved_at",
               "group_size")


def render_ticket(h: dict[bytes, bytes]) -> dict:
    d = {k.decode(): v for k, v in h.items()}
    out: dict = {}
    for f in _JSON_FIELDS:
        if f in d:
            out[f] = orjson.loads(d.pop(f))
    d = {k: v.decode() for k, v in d.items() if not k.startswith("done:")}
    ticket = out.pop("ticket", {}) or {}
    rec = {
        "ticket_id": d.get("ticket_id") or ticket.get("ticket_id"),
        "status": d.get("status"),
        "subject": ticket.get("subject"), "body": ticket.get("body"), "customer": ticket.get("customer"),
        "channel": ticket.get("channel"), "created_at": ticket.get("created_at"), "metadata": ticket.get("metadata"),
        "stream_id": d.get("stream_id"),
        "category": d.get("category"), "team": d.get("team"),
        "urgency": float(d["urgency"]) if "urgency" in d else None,
        "group": d.get("group"), "incident": d.get("incident") == "1", "alert": d.get("alert"),
        "assignee": d.get("assignee") or None,
        "dead_reason": d.get("dead_reason"),
        "enrich": out.get("enrich"), "dedup": out.get("dedup"), "route": out.get("route"),
    }
    t = {f: int(d[f]) for f in _INT_FIELDS if f in d}
    if rec["dedup"] is not None and "group_size" in t:
        rec["dedup"]["group_size_at_join"] = t.pop("group_size")
    rec["timings"] = {
        "received_at": t.get("received_at"), "enriched_at": t.get("t_enrich"), "grouped_at": t.get("t_dedup"),
        "routed_at": t.get("t_route"), "assigned_at": t.get("assigned_at"), "resolved_at": t.get("resolved_at"),
    }
    r_at = t.get("received_at")
    if r_at:
        rec["timings"]["ms"] = {
            "queue_wait": (t["t_enrich_start"] - r_at) if "t_enrich_start" in t else None,
            "enrich": (t["t_enrich"] - t["t_enrich_start"]) if "t_enrich" in t and "t_enrich_start" in t else None,
            "dedup": (t["t_dedup"] - t["t_enrich"]) if "t_dedup" in t and "t_enrich" in t else None,
            "route": (t["t_route"] - t["t_dedup"]) if "t_route" in t and "t_dedup" in t else None,
            "total": (t["t_route"] - r_at) if "t_route" in t else None,
        }
    return rec


async def get_ticket(r: aioredis.Redis, k: Keys, ticket_id: str) -> dict | None:
    h = await r.hgetall(k.ticket(ticket_id))
    return render_ticket(h) if h else None


async def list_tickets(r: aioredis.Redis, k: Keys, status: str | None, limit: int) -> list[dict]:
    idx = k.idx_status(status) if status else k.idx_all
    ids = [i.decode() for i in await r.zrevrange(idx, 0, limit - 1)]
    async with r.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.hgetall(k.ticket(i))
        rows = await pipe.execute()
    return [render_ticket(h) for h in rows if h]


def _group(h: dict[bytes, bytes]) -> dict:
    d = {k.decode(): v.decode() for k, v in h.items()}
    return {
        "incident_id": d.get("gid"), "status": d.get("status", "open"), "size": int(d.get("size", 0)),
        "team": d.get("team"), "sample": d.get("sample"), "assignee": d.get("assignee"),
        "created_at": int(d["created_at"]) if "created_at" in d else None,
        "opened_at": int(d["opened_at"]) if "opened_at" in d else None,
        "last_at": int(d["last_at"]) if "last_at" in d else None,
        # a group or incident folded into another one of the same storm: that one is the incident now
        "merged_into": d.get("merged_into"),
        "resolved_at": int(d["resolved_at"]) if "resolved_at" in d else None,
        # a resolved incident whose storm came back (streams/group.lua): when, how often, why
        "reopened_at": int(d["reopened_at"]) if "reopened_at" in d else None,
        "reopen_count": int(d.get("reopen_count", 0)), "reopen_reason": d.get("reopen_reason"),
        # the storm's rate (tickets/s) at its latest member, its peak, and [ms, size, rate] at opening and each
        # doubling of its size (streams/group.lua)
        "rate": float(d["rate"]) if "rate" in d else None,
        "peak_rate": float(d["peak_rate"]) if "peak_rate" in d else None,
        "series": orjson.loads(d["series"]) if "series" in d else [],
        # while its storm is on: when the storm state ends unless a new ticket keeps it on (ms, the tickets' time);
        # once it has ended, when that was said (incident.storm_ended; cleared when the storm resumes)
        "storm_until": int(d["storm_until"]) if "storm_until" in d else None,
        "storm_ended_at": int(d["storm_ended_at"]) if "storm_ended_at" in d else None,
    }


async def list_incidents(r: aioredis.Redis, k: Keys, limit: int = 100) -> list[dict]:
    gids = [g.decode() for g in await r.zrevrange(k.incidents, 0, limit - 1)]
    async with r.pipeline(transaction=False) as pipe:
        for g in gids:
            pipe.hgetall(k.group(g))
            pipe.lrange(k.members(g), 0, 4)
        rows = await pipe.execute()
    out = []
    for i in range(0, len(rows), 2):
        if rows[i]:
            inc = _group(rows[i])
            inc["first_members"] = [m.decode() for m in rows[i + 1]]
            out.append(inc)
    return out


async def get_incident(r: aioredis.Redis, k: Keys, gid: str) -> dict | None:
    h = await r.hgetall(k.group(gid))
    if not h:
        return None
    inc = _group(h)
    inc["members"] = [m.decode() for m in await r.lrange(k.members(gid), 0, -1)]
    return inc
