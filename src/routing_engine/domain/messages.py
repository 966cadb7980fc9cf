"""Typed messages between stages: what enrich writes for dedup, what dedup writes for route, what route emits.

Each maps one-to-one onto the stream entry described by its JSON Schema in streams/ (the wire truth):
`to_fields()` gives the entry's fields, `from_fields()` reads them back. The classification trail stays a
plain dict (`enrich`): it is stored on the ticket and served by the API as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson

from .ticket import Ticket


def received_at_of(entry_id: str) -> int:
    """When an entry reached its stream: the millisecond part of its id."""
    return int(entry_id.split("-")[0])


@dataclass
class Enriched:
    """Entry of {prefix}:enriched (enrich/fallback → dedup) and of {prefix}:escalate (enrich → fallback)."""

    ticket: Ticket
    received_at: int
    enrich: dict  # the classification trail: enriched.schema.json#/$defs/enrich
    emb: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.float32))

    @property
    def ticket_id(self) -> str:
        return self.ticket.ticket_id

    @property
    def category(self) -> str:
        return self.enrich["category"]

    @property
    def team(self) -> str:
        return self.enrich["team"]

    @property
    def urgency(self) -> float:
        return float(self.enrich["urgency"])

    @property
    def urgent(self) -> bool:
        return bool(self.enrich["urgent"])

    def data(self) -> dict:
        # a shallow copy, not asdict: asdict deep-copies every nested value, and these are only serialised
        return {"ticket": dict(vars(self.ticket)), "received_at": self.received_at, "enrich": self.enrich}

    def emb_bytes(self) -> bytes:
        return np.ascontiguousarray(self.emb, dtype=np.float32).tobytes()

    def to_fields(self) -> dict[str, bytes | str]:
        return {"data": orjson.dumps(self.data()), "emb": self.emb_bytes(), "ticket_id": self.ticket_id}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Enriched:
        data = orjson.loads(fields[b"data"])
        return cls(Ticket(**data["ticket"]), int(data["received_at"]), data["enrich"],
                   np.frombuffer(fields[b"emb"], dtype=np.float32))


@dataclass
class Grouping:
    """The dedup decision for one ticket: deduped.schema.json#/properties/data/properties/dedup."""

    neighbor: str | None  # nearest ticket in the window
    score: float  # the cosine that decided: to the group's centroid or to the neighbour (-1: the window was empty)
    group: str  # group id = id of the group's first ticket (the surviving group when this ticket caused a merge)
    joined: bool
    rule: str  # centroid | centroid_category | centroid_storm_prior | tau | tau_category | none (it starts a group)
    tau: float
    tau_category: float
    window_s: int
    neighbor_score: float = -1.0  # the nearest ticket's cosine
    joined_group: str = ""  # the group it joined, before any merge it caused
    merged: list = field(default_factory=list)  # groups this ticket's arrival merged into `group`
    tau_centroid: float | None = None
    tau_centroid_category: float | None = None
    tau_merge: float | None = None
    storm: dict = field(default_factory=dict)  # the group's storm test at this ticket (Decision.storm)

    def to_dict(self) -> dict:
        # shallow (the nested trail and merge list copied one level), not asdict: asdict's deep copy was 8% of the
        # worker's event loop in a calm --fast flood (py-spy)
        out = dict(vars(self))
        out["storm"], out["merged"] = dict(self.storm), list(self.merged)
        return out


@dataclass
class Deduped(Enriched):
    """Entry of {prefix}:deduped (dedup → route); dedup workers also tail it to share one window."""

    dedup: dict = field(default_factory=dict)  # Grouping.to_dict(), plus what later versions add

    @property
    def group(self) -> str:
        return self.dedup["group"]

    def data(self) -> dict:
        return {**super().data(), "dedup": self.dedup}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Deduped:
        data = orjson.loads(fields[b"data"])
        return cls(Ticket(**data["ticket"]), int(data["received_at"]), data["enrich"],
                   np.frombuffer(fields[b"emb"], dtype=np.float32), data["dedup"])

    @classmethod
    def of(cls, msg: Enriched, grouping: Grouping) -> Deduped:
        return cls(msg.ticket, msg.received_at, msg.enrich, msg.emb, grouping.to_dict())


@dataclass
class Routed:
    """Entry of {prefix}:routed, the pipeline's output (written by streams/route.lua); `summary` is its data."""

    ticket_id: str
    status: str  # assigned | queued | attached
    assignee: str  # empty when queued
    team: str
    summary: dict

    @classmethod
    def summary_of(cls, msg: Deduped) -> dict:
        return {"ticket_id": msg.ticket_id, "category": msg.category, "team": msg.team, "urgency": msg.urgency,
                "group": msg.group, "received_at": msg.received_at}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Routed:
        f = {k.decode(): v for k, v in fields.items()}
        return cls(f["ticket_id"].decode(), f["status"].decode(), f["assignee"].decode(), f["team"].decode(),
                   orjson.loads(f["data"]))
