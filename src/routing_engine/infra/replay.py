"""What-if replay, the Redis side: read recorded tickets with what happened to them, pace them as they came, and
compare two runs' outcomes (groups, incidents, teams, categories, assignees).

`service.replay` runs the real pipeline on a scratch prefix between these steps. Recorded tickets come from a
prefix's ticket records (its `idx:all`, oldest first: each record keeps the posted ticket and its outcome) or
from a JSONL export (one ticket record per line, as `GET /v1/tickets/{id}` returns it).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from .keys import Keys
from .records import render_ticket

TICKET_FIELDS = ("subject", "body", "customer", "channel", "created_at", "metadata")
DONE = frozenset(("assigned", "queued", "attached", "resolved", "dead"))  # statuses past the route stage
MAX_MERGE_HOPS = 16


@dataclass
class Recorded:
    """One ticket as posted (`ticket`: the object the door accepted) and what happened to it."""

    ticket: dict
    received_at: int | None = None  # ms; paces the replay
    outcome: dict = field(default_factory=dict)

    @property
    def ticket_id(self) -> str:
        return str(self.ticket["id"])


def _posted(rec: dict) -> dict:
    obj = {"id": rec["ticket_id"]}
    obj.update({f: rec[f] for f in TICKET_FIELDS if rec.get(f) not in (None, {}, "")})
    return obj


async def _final_groups(r: aioredis.Redis, k: Keys, gids: Iterable[str]) -> dict[str, dict]:
    """Each group id -> {"id": the group it ended in (merges followed), "incident": whether that one opened}."""
    out: dict[str, dict] = {}
    for gid in set(gids):
        cur, seen = gid, 0
        h: dict = {}
        while seen < MAX_MERGE_HOPS:
            h = {a.decode(): b.decode() for a, b in (await r.hgetall(k.group(cur))).items()}
            nxt = h.get("merged_into")
            if not nxt or nxt == cur:
                break
            cur, seen = nxt, seen + 1
        out[gid] = {"id": cur, "incident": "opened_at" in h or h.get("incident") == "1"}
    return out


async def _records(r: aioredis.Redis, k: Keys, ids: list[str]) -> list[dict]:
    """Each ticket id's raw record hash on prefix `k` (empty when it expired)."""
    async with r.pipeline(transaction=False) as pipe:
        for i in ids:
            pipe.hgetall(k.ticket(i))
        return await pipe.execute()


async def outcomes(r: aioredis.Redis, k: Keys, ids: list[str], rows: list[dict] | None = None) -> dict[str, dict]:
    """The outcome of each ticket id on prefix `k`: status, category, team, assignee, final group, incident.
    `rows`: the records already read for `ids` (read here when None)."""
    if rows is None:
        rows = await _records(r, k, ids)
    recs = {i: render_ticket(h) for i, h in zip(ids, rows) if h}
    finals = await _final_groups(r, k, [rec["group"] for rec in recs.values() if rec.get("group")])
    out = {}
    for i, rec in recs.items():
        g = finals.get(rec.get("group") or "", {})
        out[i] = {"status": rec["status"], "category": rec["category"], "team": rec["team"],
                  "assignee": rec["assignee"], "group": g.get("id"), "incident": bool(g.get("incident"))}
    return out


async def read_recorded(r: aioredis.Redis, k: Keys, *, since_ms: int | None = None, until_ms: int | None = None,
                        limit: int | None = None) -> list[Recorded]:
    """Tickets recorded on prefix `k` (oldest first, received between the bounds), with their outcomes."""
    ids = [i.decode() for i in await r.zrangebyscore(
        k.idx_all, since_ms if since_ms is not None else "-inf", until_ms if until_ms is not None else "+inf",
        start=0 if limit else None, num=limit or None)]
    if not ids:
        return []
    rows = await _records(r, k, ids)
    done = await outcomes(r, k, ids, rows)
    out = []
    for i, h in zip(ids, rows):
        if not h:
            continue  # in the index, but its record expired
        rec = render_ticket(h)
        out.append(Recorded(_posted(rec), rec["timings"].get("received_at"), done.get(i, {})))
    return out


def read_export(path: str | Path) -> list[Recorded]:
    """A JSONL export: each line a ticket record (`GET /v1/tickets/{id}`) or a plain posted ticket (`id`, ...)."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
        if not isinstance(rec, dict) or not (rec.get("ticket_id") or rec.get("id")):
            raise ValueError(f"{path}:{n}: a ticket record needs ticket_id (or a posted ticket's id)")
        if "ticket_id" in rec:
            group = rec.get("group")
            outcome = {"status": rec.get("status"), "category": rec.get("category"), "team": rec.get("team"),
                       "assignee": rec.get("assignee"), "group": group, "incident": bool(rec.get("incident"))}
            out.append(Recorded(_posted(rec), (rec.get("timings") or {}).get("received_at"), outcome))
        else:
            out.append(Recorded({key: v for key, v in rec.items() if key == "id" or key in TICKET_FIELDS}))
    out.sort(key=lambda x: (x.received_at is None, x.received_at or 0))
    return out


def pacing(received_ms: list[int | None], *, window_s: float, speed: float) -> list[float]:
    """Seconds from the start at which to post each ticket: the recorded gaps divided by `speed`, except that a gap
    longer than the dedup window W is cut to W + 1 s (tickets that far apart never meet in the window either
    way), so a replay of a quiet day does not take a day. `speed` = inf posts everything at once."""
    out, t, prev = [], 0.0, None
    for ms in received_ms:
        if prev is not None and ms is not None and speed != float("inf"):
            gap = max(0.0, (ms - prev) / 1000.0)
            t += min(gap, window_s + 1.0) / speed
        out.append(t)
        prev = ms if ms is not None else prev
    return out


def _pairs(groups: dict[str, str | None]) -> set[tuple[str, str]]:
    by: dict[str, list[str]] = collections.defaultdict(list)
    for tid, g in groups.items():
        if g:
            by[g].append(tid)
    return {p for members in by.values() for p in itertools.combinations(sorted(members), 2)}


def _clusters(outs: dict[str, dict]) -> dict[str, list[str]]:
    by: dict[str, list[str]] = collections.defaultdict(list)
    for tid, o in outs.items():
        if o.get("group"):
            by[o["group"]].append(tid)
    return {g: m for g, m in by.items() if len(m) >= 2}


def compare(before: dict[str, dict], after: dict[str, dict]) -> dict:
    """What differs between two runs over the same tickets (keyed by ticket id)."""
    ids = sorted(set(before) & set(after))
    b = {i: before[i] for i in ids}
    a = {i: after[i] for i in ids}
    changes = {}
    for key in ("category", "team", "assignee"):
        moved = collections.Counter((b[i].get(key), a[i].get(key)) for i in ids if b[i].get(key) != a[i].get(key))
        changes[key] = {"changed": sum(moved.values()),
                        "top": [{"before": x, "after": y, "tickets": n} for (x, y), n in moved.most_common(5)]}
    pb, pa = _pairs({i: b[i].get("group") for i in ids}), _pairs({i: a[i].get("group") for i in ids})
    cb, ca = _clusters(b), _clusters(a)
    inc_b = {g for g, m in cb.items() if any(b[i].get("incident") for i in m)}
    inc_a = {g for g, m in ca.items() if any(a[i].get("incident") for i in m)}

    def incidents(clusters, opened, this, other):
        rows = []
        for g in sorted(opened, key=lambda g: -len(clusters[g])):
            m = clusters[g]
            team = collections.Counter(this[i].get("team") for i in m).most_common(1)[0][0]
            there = collections.Counter(other[i].get("group") or "(none)" for i in m)  # the same tickets, other run
            rows.append({"id": g, "size": len(m), "team": team,
                         "other_run": [{"group": gid, "tickets": n} for gid, n in there.most_common(3)]})
        return rows

    return {
        "tickets": len(ids), "missing_after": sorted(set(before) - set(after))[:20],
        "dead": {"before": sum(1 for i in ids if b[i].get("status") == "dead"),
                 "after": sum(1 for i in ids if a[i].get("status") == "dead")},
        "groups": {"before": len(cb), "after": len(ca),
                   "largest_before": max((len(m) for m in cb.values()), default=0),
                   "largest_after": max((len(m) for m in ca.values()), default=0)},
        "incidents": {"before": len(inc_b), "after": len(inc_a),
                      "list_before": incidents(cb, inc_b, b, a), "list_after": incidents(ca, inc_a, a, b)},
        "pairs": {"together_both": len(pb & pa), "only_before": len(pb - pa), "only_after": len(pa - pb)},
        **changes,
    }


def format_comparison(d: dict, header: str) -> str:
    lines = [header, "", f"{'':22}{'before':>10}{'after':>10}"]
    for name, key in (("groups (2+ tickets)", "groups"), ("incidents", "incidents")):
        lines.append(f"{name:22}{d[key]['before']:>10}{d[key]['after']:>10}")
    lines.append(f"{'largest group':22}{d['groups']['largest_before']:>10}{d['groups']['largest_after']:>10}")
    lines.append(f"{'dead-lettered':22}{d['dead']['before']:>10}{d['dead']['after']:>10}")
    p = d["pairs"]
    lines += ["", f"ticket pairs grouped together: in both runs {p['together_both']}, only before {p['only_before']}, "
                  f"only after {p['only_after']}"]
    for key in ("category", "team", "assignee"):
        c = d[key]
        top = ", ".join(f"{t['before']} -> {t['after']} ({t['tickets']})" for t in c["top"][:3])
        lines.append(f"{key + ' changed':22}{c['changed']:>10} of {d['tickets']}" + (f"   e.g. {top}" if top else ""))
    for when in ("after", "before"):
        rows = d["incidents"][f"list_{when}"]
        if rows:
            lines += ["", f"incidents {when} the change (id, tickets, team; where their tickets are in the other run):"]
            for row in rows[:10]:
                other = ", ".join(f"{x['group']} x{x['tickets']}" for x in row["other_run"])
                lines.append(f"  {row['id']:<28} {row['size']:>5}  {row['team'] or '-':<14} {other}")
    if d["missing_after"]:
        lines.append(f"\nnot finished in the replay: {', '.join(d['missing_after'])}")
    return "\n".join(lines)
