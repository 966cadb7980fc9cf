"""The Lua scripts of streams/, registered on a client, and the one place that lays out their KEYS and ARGV.

Every key a script touches arrives in KEYS (Redis Cluster requires it; all of a pipeline's keys share one hash
tag, so they live on one slot). Scripts that commit a stage's entry also XACK it, so that a failing script
never acknowledges its input: the runtime prepends the entry's stream to KEYS and its group and id to ARGV.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import orjson
import redis.asyncio as aioredis

from ..config import Settings
from ..domain import urgency
from ..domain.idempotency import body_hash
from ..domain.ticket import STATUSES
from ..resources import streams_dir
from .keys import EVENTS_MAXLEN, Keys

SCRIPT_NAMES = ("ingest", "commit", "group", "route", "resolve", "resolve_incident", "fill", "mark_dead",
                "alerts_due", "alerts_replay", "regroup", "storm_end")
STATUS_LIST = ",".join(STATUSES)
# Streams a consumer group reads (ingest lanes, escalate, enriched, deduped, alerts) are never trimmed by length:
# MAXLEN would delete entries no worker has read or acked yet. Their ARGV slot for a maxlen gets this; only
# routed, dead and events (history nobody acks) are capped by ROUTING_STREAM_MAXLEN. infra/retention.py trims
# the grouped streams up to what every group has acked.
UNTRIMMED = 0


@functools.cache
def lua(name: str) -> str:
    return (streams_dir() / f"{name}.lua").read_text()


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Write:
    """One command a stage wants committed for an entry: a script by name, or a plain Redis command.

    `acks=True`: the script commits the entry itself (effectively once) and XACKs it; the runtime adds the
    entry's stream as KEYS[1] and its group and id as ARGV[1], ARGV[2]. An outcome with no acking write is
    XACKed by the runtime in the same transaction.
    """

    script: str | None = None
    keys: list = field(default_factory=list)
    args: list = field(default_factory=list)
    acks: bool = False
    command: tuple = ()

    @classmethod
    def cmd(cls, *command) -> Write:
        return cls(command=command)


class Scripts:
    """The registered scripts of one client, and builders for their calls."""

    def __init__(self, r: aioredis.Redis, settings: Settings, keys: Keys):
        self.s, self.k = settings, keys
        self._by_name = {name: r.register_script(lua(name)) for name in SCRIPT_NAMES}

    def __getitem__(self, name: str):
        return self._by_name[name]

    async def call(self, name: str, keys: list, args: list, client=None):
        return await self._by_name[name](keys=keys, args=args, client=client)

    # ---- stage commits (the runtime adds the entry; see Write)

    def commit(self, *, stage: str, status: str, ticket_id: str, output_stream: str, data: bytes = b"",
               emb: bytes = b"", owner: str = "", event: str = "", event_data: bytes = b"",
               record: dict | None = None) -> Write:
        """commit.lua: record fields, the next stream's entry, an event, all with the entry's XACK."""
        flat: list = []
        for key, value in (record or {}).items():
            flat += [key, value]
        k, s = self.k, self.s
        return Write("commit", acks=True,
                     keys=[output_stream, k.ticket(ticket_id), k.idx_all, k.events, *k.idx_statuses, k.dead],
                     args=[stage, status, now_ms(), s.stream_maxlen, EVENTS_MAXLEN, s.ticket_ttl_s, ticket_id,
                           data, emb, owner, event, event_data, STATUS_LIST, *flat])

    def group(self, *, expected_seq: int, tickets: list[tuple[str, bytes, bytes]], groups: list[tuple[str, int]],
              members: list[str], log_min_ms: int, client=None):
        """group.lua: commit a batch of grouping decisions decided at sequence `expected_seq` (else 'stale').
        `tickets`: (ticket id, decision JSON, embedding bytes); `groups`: (group id, members expected before the
        batch or -1) for every group the batch touches; `members`: ids of the merged groups' earlier members."""
        k, s = self.k, self.s
        keys = [k.dedup_seq, k.dedup_log, k.incidents, k.alerts, k.events, *(k.ticket(t) for t, _, _ in tickets)]
        args: list = [expected_seq, now_ms(), s.incident_k, s.ticket_ttl_s, EVENTS_MAXLEN, log_min_ms, len(tickets),
                      len(groups), len(members)]
        for gid, expect in groups:
            keys += [k.group(gid), k.members(gid)]
            args += [gid, expect]
        keys += [k.ticket(m) for m in members]
        keys.append(k.storming)
        args += members
        for _, spec, emb in tickets:
            args += [spec, emb]
        return self.call("group", keys, args, client)

    async def storm_end(self, gid: str, client=None) -> bool:
        """storm_end.lua: say once that the storm behind open incident `gid` is over, if it is (see the script)."""
        k = self.k
        return bool(await self.call("storm_end", [k.storming, k.group(gid), k.events], [gid, now_ms(), EVENTS_MAXLEN],
                                    client))

    def route(self, *, ticket_id: str, team: str, gid: str, urgency: float, summary: dict,
              agent_ids: list[str]) -> Write:
        """route.lua: assign, attach or queue the ticket; `agent_ids` are every agent known now."""
        k, s = self.k, self.s
        return Write("route", acks=True,
                     keys=[k.routed, k.ticket(ticket_id), k.queue(team), k.group(gid), k.events, *k.idx_statuses,
                           *(k.agent(a) for a in agent_ids)],
                     args=[ticket_id, team, urgency, now_ms(), s.stream_maxlen, EVENTS_MAXLEN, s.ticket_ttl_s,
                           orjson.dumps(summary), STATUS_LIST, *agent_ids])

    # ---- calls made directly (doors, operator actions, the runtime's dead letters)

    def lane(self, ticket) -> str:
        """Priority lane: text that may be urgent once its team is known (urgency.door_urgent) skips the ingest
        queue."""
        urgent = urgency.door_urgent(ticket.subject, ticket.body, self.s.urgent_threshold)
        return self.k.ingest_urgent if urgent else self.k.ingest

    def ingest(self, *, ticket_id: str, ticket_json: bytes, lane: str, client=None):
        """ingest.lua: replies {stream_id, created (1 new, 0 duplicate, -1 id taken by another body), accepted
        hash}; `ticket_json` is the canonical JSON, whose hash the record keeps."""
        k, s = self.k, self.s
        return self.call("ingest", [k.ticket(ticket_id), lane, k.idx_all, k.idx_status("received"), k.events],
                         [ticket_id, ticket_json, now_ms(), UNTRIMMED, s.ticket_ttl_s, EVENTS_MAXLEN,
                          body_hash(ticket_json)], client)

    def alerts_due(self, *, limit: int = 100, client=None):
        """alerts_due.lua: alerts whose next try is due go back onto the alerts stream; replies how many."""
        return self.call("alerts_due", [self.k.alerts_delayed, self.k.alerts], [now_ms(), limit], client)

    def alerts_replay(self, *, dead_id: str, fields: dict, client=None):
        """alerts_replay.lua: re-queue a dead-lettered alert unless it was replayed before (then replies None)."""
        flat = [x for kv in fields.items() for x in kv]
        return self.call("alerts_replay", [self.k.alerts_replayed, self.k.alerts], [dead_id, *flat], client)

    def mark_dead(self, *, ticket_id: str, reason: str, at_ms: int, owner: str = "", client=None):
        """mark_dead.lua, with the ticket.dead event; `owner`: the ingest entry that must own the record."""
        return self.call("mark_dead", [self.k.ticket(ticket_id), self.k.events, *self.k.idx_statuses],
                         [reason, at_ms, ticket_id, STATUS_LIST, owner, EVENTS_MAXLEN, reason[:300]], client)
