"""Names of every Redis key and stream, in one place.

All keys share one hash tag ({prefix}) so the Lua scripts that touch several of them stay atomic
on Redis Cluster too; a second pipeline (another prefix) lands on another slot.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..domain.ticket import STATUSES

# The pipeline's topology: each stage is a consumer group (named like the stage) reading these streams, given as
# Keys attribute names, most urgent first. The stage registry, the CLI and the health report all read it here.
# Every stream but the last of a stage is a priority lane (the urgent lane): the runtime reads it in its own loop,
# in small batches, so an urgent ticket never waits behind the main stream's backlog or a batch of it in work.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "enrich": ("ingest_urgent", "ingest"),
    "fallback": ("escalate",),
    "dedup": ("enriched_urgent", "enriched"),
    "route": ("deduped_urgent", "deduped"),
    "alerts": ("alerts",),
}

# The live feed is for watching, not an archive: ~100k entries is hours of a busy pipeline and a few tens of MB.
EVENTS_MAXLEN = 100_000


@dataclass(frozen=True)
class Keys:
    prefix: str = "re"

    @property
    def base(self) -> str:
        return "{" + self.prefix + "}"

    def stage_inputs(self, stage: str) -> list[str]:
        return [getattr(self, attr) for attr in STAGE_INPUTS[stage]]

    def lanes(self, stage: str) -> list[str]:
        """The stage's priority lanes (its inputs but the main one), most urgent first; empty for most stages."""
        return self.stage_inputs(stage)[:-1]

    # streams, in pipeline order
    @property
    def ingest(self) -> str:
        return f"{self.base}:ingest"

    @property
    def ingest_urgent(self) -> str:
        """Priority lane: the enrich stage takes what waits here before the ingest stream."""
        return f"{self.base}:ingest:urgent"

    @property
    def enriched(self) -> str:
        return f"{self.base}:enriched"

    @property
    def enriched_urgent(self) -> str:
        """Urgent lane of enriched: urgent tickets not (likely) part of an open incident; dedup reads it first."""
        return f"{self.base}:enriched:urgent"

    @property
    def deduped(self) -> str:
        return f"{self.base}:deduped"

    @property
    def deduped_urgent(self) -> str:
        """Urgent lane of deduped: urgent tickets that are not members of an open incident; route reads it first."""
        return f"{self.base}:deduped:urgent"

    @property
    def routed(self) -> str:
        return f"{self.base}:routed"

    @property
    def alerts(self) -> str:
        return f"{self.base}:alerts"

    @property
    def alerts_delayed(self) -> str:
        """Zset of alerts waiting for their next try (score: due time in ms); streams/alerts_due.lua moves them back."""
        return f"{self.base}:alerts:delayed"

    @property
    def alerts_replayed(self) -> str:
        """Set of {prefix}:dead ids that `replay-alerts` re-queued: a second run skips them."""
        return f"{self.base}:alerts:replayed"

    @property
    def dead(self) -> str:
        return f"{self.base}:dead"

    @property
    def events(self) -> str:
        return f"{self.base}:events"

    def ticket(self, ticket_id: str) -> str:
        return f"{self.base}:t:{ticket_id}"

    @property
    def idx_all(self) -> str:
        return f"{self.base}:idx:all"

    def idx_status(self, status: str) -> str:
        return f"{self.base}:idx:status:{status}"

    @functools.cached_property
    def idx_statuses(self) -> tuple[str, ...]:
        """Every status index, in STATUSES order: scripts that move a ticket between statuses get all of them."""
        return tuple(self.idx_status(s) for s in STATUSES)

    @property
    def agents(self) -> str:
        return f"{self.base}:agents"

    def agent(self, agent_id: str) -> str:
        return f"{self.base}:agent:{agent_id}"

    def queue(self, team: str) -> str:
        return f"{self.base}:queue:{team}"

    def group(self, gid: str) -> str:
        return f"{self.base}:g:{gid}"

    def members(self, gid: str) -> str:
        return f"{self.base}:g:{gid}:m"

    @property
    def dedup_seq(self) -> str:
        """How many grouping decisions were committed: streams/group.lua commits a batch only at the sequence its
        worker decided from."""
        return f"{self.base}:dedup:seq"

    @property
    def dedup_log(self) -> str:
        """Stream of grouping decisions (ticket, group, merges, embedding), in commit order: every dedup worker
        replays it to share one window and one set of groups."""
        return f"{self.base}:dedup:log"

    def login_failures(self, address_hash: str) -> str:
        """zset: failed logins of one client address (hashed), scored by time: web/throttle.py"""
        return f"{self.base}:login:fails:{address_hash}"

    def lease(self, job: str) -> str:
        """Held by the process doing `job` (trim, housekeeping) for one interval: infra/maintenance.py."""
        return f"{self.base}:lease:{job}"

    @property
    def incidents(self) -> str:
        return f"{self.base}:incidents"

    @property
    def storming(self) -> str:
        """zset: incidents whose storm state is on, scored by when it ends (ms) unless a new ticket keeps it on"""
        return f"{self.base}:storming"

    @property
    def stats(self) -> str:
        return f"{self.base}:stats"

    def fails(self, stage: str) -> str:
        return f"{self.base}:fails:{stage}"

    @property
    def escalate(self) -> str:
        return f"{self.base}:escalate"

    @property
    def breaker(self) -> str:
        return f"{self.base}:breaker:fallback"

    @property
    def model(self) -> str:
        return f"{self.base}:model"
