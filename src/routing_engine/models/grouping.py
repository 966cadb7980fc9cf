"""Group-level storm grouping: a ticket joins the near-duplicate group it is most like as a whole.

Reworded reports of one outage are often only moderately alike as sentence pairs (median same-intent cosine
0.60 on BANKING77), but each is close to what the group says on average: the group's centroid (the normalised
mean of its members' unit embeddings) averages the wording away. So a ticket is compared with the centroids
of the groups its nearest neighbours belong to and of every group with several members in the window, and
joins the best one whose centroid cosine clears a threshold. The classifier's answer is evidence, not a gate:
a lower threshold applies when the group's main category is among the ticket's top predicted labels (storm
tickets the classifier puts in a neighbouring category still join), a higher one when it is not. When no group
qualifies the single-neighbour rule of the earlier engine still applies (τ, or τ_category with the same
category), and otherwise the ticket starts a group of its own.

Groups whose centroids converge (the same storm, started twice before either was big enough to attract the
other) merge: the older one survives and the other points to it. Every decision says which group, which
score and which rule, for the ticket's trail.

Plain numpy, no Redis: the dedup stage persists what this decides, and the bench replays it offline.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class GroupingRule:
    tau: float = 0.85  # neighbour cosine that joins whatever the categories
    tau_category: float = 0.5  # neighbour cosine that joins when both got the same category
    # centroid cosine that joins whatever the categories: at 0.75 big storm groups drew in 4-9% of unrelated
    # background tickets (bench/grouping.py), at 0.9 about 1-2%
    tau_centroid: float = 0.9
    tau_centroid_category: float = 0.55  # centroid cosine that joins when the group's category is among the top labels
    top_labels: int = 2  # how many of the ticket's top labels count as evidence
    min_label_p: float = 0.3  # ...each with at least this probability
    # centroid-to-centroid cosine that merges two groups of the same main category: sub-clusters of one storm
    # (one intent, reworded) sat at 0.70-0.77 to each other in bench/grouping.py; 0.65 recovered most of them
    tau_merge: float = 0.65
    min_merge_size: int = 3  # groups merge only once both have this many members (a pair is not a storm yet)


@dataclass
class Group:
    gid: str
    total: np.ndarray  # sum of the members' unit vectors
    n: int = 0
    categories: Counter = field(default_factory=Counter)
    first_ts: float = 0.0
    last_ts: float = 0.0
    merged_into: str | None = None

    @property
    def centroid(self) -> np.ndarray:
        norm = float(np.linalg.norm(self.total))
        return self.total / norm if norm > 0 else self.total

    @property
    def category(self) -> str | None:
        return self.categories.most_common(1)[0][0] if self.categories else None


@dataclass
class Decision:
    group: str
    joined: bool
    rule: str  # centroid | centroid_category | tau | tau_category | none
    score: float  # the cosine that decided (to the centroid or the neighbour); -1 when nothing was near
    neighbor: str | None  # the nearest ticket, for the trail
    neighbor_score: float
    merged: list[str] = field(default_factory=list)  # groups merged into `group` by this ticket


class Grouper:
    """Groups in the window, their centroids, and the rule. `assign` decides and records one ticket."""

    def __init__(self, rule: GroupingRule | None = None):
        self.rule = rule or GroupingRule()
        self.groups: dict[str, Group] = {}
        self.group_of: dict[str, str] = {}  # ticket id -> group id (as decided; follow `resolve` for merges)
        self.category_of: dict[str, str] = {}

    def resolve(self, gid: str) -> str:
        """The surviving group of `gid` after merges."""
        seen = 0
        while (g := self.groups.get(gid)) is not None and g.merged_into is not None and seen < 100:
            gid, seen = g.merged_into, seen + 1
        return gid

    def group_of_ticket(self, tid: str) -> str | None:
        gid = self.group_of.get(tid)
        return self.resolve(gid) if gid is not None else None

    def _multi(self) -> list[Group]:
        return [g for g in self.groups.values() if g.n >= 2 and g.merged_into is None]

    def assign(self, tid: str, vec: np.ndarray, category: str, top: list[tuple[str, float]], ts: float,
               neighbours: list[tuple[str, float]]) -> Decision:
        """Decide the group of ticket `tid` (unit vector `vec`, predicted `category` and top labels) given its
        nearest tickets in the window, and record it."""
        r = self.rule
        if tid in self.group_of:  # a redelivered ticket keeps its group
            gid = self.group_of_ticket(tid)
            return Decision(gid, gid != tid, "redelivered", 1.0, None, -1.0)
        nearest = neighbours[0] if neighbours else (None, -1.0)
        evidence = {lab for lab, p in top[: r.top_labels] if p >= r.min_label_p} | {category}
        candidates: dict[str, Group] = {g.gid: g for g in self._multi()}
        for nbr, _ in neighbours:
            gid = self.group_of_ticket(nbr)
            if gid is not None and gid in self.groups:
                candidates.setdefault(gid, self.groups[gid])
        best: tuple[float, int, str, str] | None = None  # (score, size, gid, rule)
        for g in candidates.values():
            s = float(g.centroid @ vec)
            if s >= r.tau_centroid:
                rule = "centroid"
            elif s >= r.tau_centroid_category and g.category in evidence:
                rule = "centroid_category"
            else:
                continue
            key = (s, g.n, g.gid, rule)
            if best is None or key[:2] > best[:2]:
                best = key
        if best is not None:
            decision = Decision(best[2], True, best[3], round(best[0], 4), nearest[0], round(nearest[1], 4))
        else:
            decision = Decision(tid, False, "none", round(nearest[1], 4), nearest[0], round(nearest[1], 4))
            for nbr, s in neighbours:
                gid = self.group_of_ticket(nbr)
                if gid is None:
                    continue
                if s >= r.tau:
                    decision = Decision(gid, True, "tau", round(s, 4), nbr, round(s, 4))
                    break
                if s >= r.tau_category and self.category_of.get(nbr) == category:
                    decision = Decision(gid, True, "tau_category", round(s, 4), nbr, round(s, 4))
                    break
        self._record(tid, vec, category, ts, decision.group)
        survivor, merged = self._merge(decision.group)
        if survivor != decision.group:
            decision.group, decision.joined = survivor, True
        decision.merged = merged
        return decision

    def _record(self, tid: str, vec: np.ndarray, category: str, ts: float, gid: str) -> None:
        g = self.groups.get(gid)
        if g is None:
            g = self.groups[gid] = Group(gid, np.zeros_like(vec, dtype=np.float64), first_ts=ts)
        g.total = g.total + vec
        g.n += 1
        g.categories[category] += 1
        g.last_ts = max(g.last_ts, ts)
        self.group_of[tid] = gid
        self.category_of[tid] = category

    def _merge(self, gid: str) -> tuple[str, list[str]]:
        """Merge `gid` with every other group of the same main category whose centroid is this close. The group
        that started first survives (its incident, if any, is the one people already see); the others point to
        it. Returns (survivor, merged ids)."""
        r = self.rule
        g = self.groups[gid]
        if g.n < r.min_merge_size:
            return gid, []
        c = g.centroid
        close = [o for o in self._multi() if o.gid != gid and o.n >= r.min_merge_size and o.category == g.category
                 and float(o.centroid @ c) >= r.tau_merge]
        if not close:
            return gid, []
        survivor = min([g, *close], key=lambda x: (x.first_ts, x.gid))
        for other in [g, *close]:
            if other is survivor:
                continue
            survivor.total = survivor.total + other.total
            survivor.n += other.n
            survivor.categories.update(other.categories)
            survivor.last_ts = max(survivor.last_ts, other.last_ts)
            other.merged_into = survivor.gid
        return survivor.gid, [o.gid for o in [g, *close] if o is not survivor]

    def forget(self, tids: set[str]) -> None:
        """Drop tickets that left the window; a group with no member left in the window goes too."""
        for t in tids:
            self.group_of.pop(t, None)
            self.category_of.pop(t, None)
        live = {self.resolve(g) for g in self.group_of.values()} | set(self.group_of.values())
        for gid in [g for g in self.groups if g not in live]:
            del self.groups[gid]
