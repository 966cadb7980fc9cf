"""The event catalog: every event type on the live feed, in one place.

`STREAM_EVENTS` are entries of the events stream ({prefix}:events), written by the stages' Lua commits and the
API; streams/events.schema.json lists exactly these (a test keeps the two equal, and another scans the code,
the Lua scripts and the dashboard for a type missing here). `DERIVED_EVENTS` are computed by the SSE hub once a
second and sent without an id: derived state, never stored in the stream.
"""

from __future__ import annotations

STREAM_EVENTS: dict[str, str] = {
    "ticket.received": "accepted at a door (HTTP or stream)",
    "ticket.classified": "the cascade decided its category and team",
    "ticket.escalated": "sent to the transformer fallback",
    "ticket.grouped": "joined or started a near-duplicate group",
    "ticket.assigned": "an agent took it",
    "ticket.queued": "waits in its team's queue (no free agent)",
    "ticket.attached": "rides on its master incident's assignee",
    "ticket.resolved": "resolved (alone or with its incident)",
    "ticket.dead": "dead-lettered, with the reason",
    "incident.opened": "a storm group (rate a burst over its baseline) holds K tickets: one master incident",
    "incident.grew": "a ticket joined an open incident",
    "incident.updated": "an open incident doubled in size (from K): its size, storm rate and peak rate (no page)",
    "incident.storm_ended": "the storm behind an open incident is over: calm for ROUTING_STORM_QUIET_S (no page; the "
                            "incident stays open for people to resolve)",
    "incident.storm_resumed": "the storm behind an open incident whose storm had ended is bursting again (no page)",
    "incident.merged": "a group or incident merged into an incident of the same storm (one id survives; no page)",
    "incident.resolved": "an operator resolved the incident",
    "incident.reopened": "K tickets joined a resolved incident while its group burst again: it re-opened (one page)",
    "incident.split": "an operator split tickets off an incident, moved them out or to another group (kind says)",
    "incident.followup": "a ticket like a resolved incident, not enough to re-open it: linked to it, routed on its own",
    "agent.load": "an agent's load changed",
    "agent.updated": "an agent was created or changed",
    "breaker.state": "the fallback's circuit breaker changed state",
}

DERIVED_EVENTS: dict[str, str] = {
    "snapshot": "first message of a connection: flood state, queues, breaker, rate series",
    "flood.state": "ticket rate against its baseline, flood or normal, fastest-growing clusters",
    "queue.depths": "tickets waiting per team",
}

ALL_EVENTS = {**STREAM_EVENTS, **DERIVED_EVENTS}

# Entries of the alerts stream ({prefix}:alerts), POSTed to ROUTING_ALERT_URL (streams/alerts.schema.json).
ALERT_TYPES: dict[str, str] = {
    "ticket.urgent": "urgency above the threshold on the first ticket of its group",
    "incident.opened": "a storm group holds K tickets (its later members' alerts are suppressed)",
    "incident.reopened": "a resolved incident's storm came back (K tickets since the resolve, bursting): `reason` says",
}
