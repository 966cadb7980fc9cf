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

import math
from collections import Counter
from dataclasses import dataclass, field, replace

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
    # Storm spill-over across categories: tickets of one storm the classifier puts in a neighbouring intent form a
    # group of that category, growing while the storm grows but at a fraction of its rate. Such a group merges into
    # the storm's group when their centroids reach tau_merge_cross, the storm grows at >= storm_rate tickets/s and
    # the other at <= spill_ratio of that, and holds <= spill_ratio of its tickets (two concurrent storms grow at
    # comparable rates to comparable sizes and stay apart).
    # Rates are exponentially decayed counts with a half-life of rate_halflife_s. tau_merge_cross > 1 turns it off:
    # measured out of sample (bench/grouping.py --rule '{"tau_merge_cross": 0.8}') it merged confusable storms
    # (confusable-transfers pair precision 0.78 -> 0.31) and pulled background into storms (two-storms 2% -> 6%).
    tau_merge_cross: float = 2.0
    storm_rate: float = 2.0
    spill_ratio: float = 0.15
    rate_halflife_s: float = 5.0


@dataclass
class Group:
    gid: str
    total: np.ndarray  # sum of the members' unit vectors
    n: int = 0
    categories: Counter = field(default_factory=Counter)
    first_ts: float = 0.0
    last_ts: float = 0.0
    merged_into: str | None = None
    incident_ts: float | None = None  # when it reached K (mirrors the incident the Redis group opens)
    rate: float = 0.0  # tickets/s, exponentially decayed, as of rate_ts
    rate_ts: float = 0.0

    def copy(self) -> Group:
        return Group(self.gid, self.total.copy(), self.n, Counter(self.categories), self.first_ts, self.last_ts,
                     self.merged_into, self.incident_ts, self.rate, self.rate_ts)

    def rate_at(self, ts: float, halflife_s: float) -> float:
        return self.rate * 0.5 ** (max(0.0, ts - self.rate_ts) / halflife_s)

    def count(self, ts: float, halflife_s: float, n: float = 1.0, rate: float = 0.0) -> None:
        """n tickets now (or another group's rate folded in)."""
        self.rate = self.rate_at(ts, halflife_s) + rate + n * math.log(2) / halflife_s
        self.rate_ts = max(self.rate_ts, ts)

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
    joined_group: str = ""  # the group it joined before any merge (`group` is the survivor)
    merges: list[tuple[str, str]] = field(default_factory=list)  # (merged, survivor), in the order applied

    def trail(self) -> dict:
        """What the ticket's trail shows: which group, which score, which rule, what merged."""
        return {"group": self.group, "joined": self.joined, "rule": self.rule, "score": self.score,
                "neighbor": self.neighbor, "neighbor_score": self.neighbor_score, "joined_group": self.joined_group,
                "merged": list(self.merged)}


def _cosines(groups: list[Group], vec: np.ndarray) -> list[float]:
    """Cosine of each group's centroid to a unit vector, in one matrix product."""
    if not groups:
        return []
    totals = np.stack([g.total for g in groups])
    norms = np.maximum(np.linalg.norm(totals, axis=1), 1e-12)
    return ((totals @ vec) / norms).tolist()


def survivor_key(g: Group) -> tuple:
    """Which of several merging groups survives: an open incident first (the earliest), else the oldest group."""
    return (g.incident_ts is None, g.incident_ts if g.incident_ts is not None else g.first_ts, g.first_ts, g.gid)


class Grouper:
    """Groups in the window, their centroids, and the rule. `assign` decides and records one ticket."""

    def __init__(self, rule: GroupingRule | None = None, incident_k: int = 10):
        self.rule = rule or GroupingRule()
        self.incident_k = incident_k
        self.groups: dict[str, Group] = {}
        self.group_of: dict[str, str] = {}  # ticket id -> group id (as decided; follow `resolve` for merges)
        self.category_of: dict[str, str] = {}
        self.decisions: dict[str, Decision] = {}  # ticket id -> its decision, while in the window
        self._journal: dict[str, Group | None] | None = None  # groups as they were before the open batch
        self._live_multi: set[str] = set()  # groups of 2+ members not merged away: the candidates of every ticket
        self._added: list[str] = []

    # ---- speculative batches: decide, then keep or roll back (another worker decided first)

    def begin(self) -> None:
        """Start a batch whose decisions may be rolled back: groups are copied before their first change."""
        self._journal, self._added = {}, []

    def keep(self) -> None:
        self._journal, self._added = None, []

    @property
    def added(self) -> list[str]:
        """Tickets recorded since `begin` (decided in this batch, not redelivered)."""
        return list(self._added)

    def rollback(self) -> None:
        """Undo every change since `begin`."""
        if self._journal is None:
            return
        for gid, old in self._journal.items():
            if old is None:
                self.groups.pop(gid, None)
            else:
                self.groups[gid] = old
        for t in self._added:
            self.group_of.pop(t, None)
            self.category_of.pop(t, None)
            self.decisions.pop(t, None)
        self._journal, self._added = None, []
        self._live_multi = {gid for gid, g in self.groups.items() if g.n >= 2 and g.merged_into is None}

    def _touch(self, gid: str) -> None:
        if self._journal is not None and gid not in self._journal:
            g = self.groups.get(gid)
            self._journal[gid] = g.copy() if g is not None else None

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
        return [self.groups[g] for g in self._live_multi]

    def assign(self, tid: str, vec: np.ndarray, category: str, top: list[tuple[str, float]], ts: float,
               neighbours: list[tuple[str, float]]) -> Decision:
        """Decide the group of ticket `tid` (unit vector `vec`, predicted `category` and top labels) given its
        nearest tickets in the window, and record it."""
        r = self.rule
        if tid in self.group_of:  # a redelivered ticket keeps its group (and the decision that put it there)
            gid = self.group_of_ticket(tid)
            old = self.decisions.get(tid)
            if old is not None:
                return replace(old, group=gid, joined=gid != tid, rule=old.rule)
            return Decision(gid, gid != tid, "redelivered", 1.0, None, -1.0, joined_group=gid)
        nearest = neighbours[0] if neighbours else (None, -1.0)
        evidence = {lab for lab, p in top[: r.top_labels] if p >= r.min_label_p} | {category}
        candidates: dict[str, Group] = {g.gid: g for g in self._multi()}
        for nbr, _ in neighbours:
            gid = self.group_of_ticket(nbr)
            if gid is not None and gid in self.groups:
                candidates.setdefault(gid, self.groups[gid])
        best: tuple[float, int, str, str] | None = None  # (score, size, gid, rule)
        cands = list(candidates.values())
        for g, s in zip(cands, _cosines(cands, vec)):
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
        decision.joined_group = decision.group
        self._record(tid, vec, category, ts, decision.group)
        survivor, pairs = self._merge(decision.group, ts)
        if survivor != decision.group:
            decision.group, decision.joined = survivor, True
        decision.merged = [m for m, _ in pairs]
        decision.merges = pairs
        self.decisions[tid] = decision
        return decision

    def apply(self, tid: str, vec: np.ndarray, category: str, ts: float, decision: Decision) -> None:
        """Replay a decision another worker made (read from the shared log): the same state as deciding it here."""
        if tid in self.group_of:
            return
        self._record(tid, vec, category, ts, decision.joined_group or decision.group)
        for merged, survivor in decision.merges:
            if merged in self.groups and survivor in self.groups:
                self._absorb(self.groups[survivor], self.groups[merged], ts)
        self.decisions[tid] = decision

    def _record(self, tid: str, vec: np.ndarray, category: str, ts: float, gid: str) -> None:
        self._touch(gid)
        g = self.groups.get(gid)
        if g is None:
            g = self.groups[gid] = Group(gid, np.zeros_like(vec, dtype=np.float64), first_ts=ts)
        g.total = g.total + vec
        g.n += 1
        g.categories[category] += 1
        g.last_ts = max(g.last_ts, ts)
        g.count(ts, self.rule.rate_halflife_s)
        if g.n >= 2 and g.merged_into is None:
            self._live_multi.add(gid)
        if g.incident_ts is None and g.n >= self.incident_k:
            g.incident_ts = ts
        self.group_of[tid] = gid
        self.category_of[tid] = category
        if self._journal is not None:
            self._added.append(tid)

    def _absorb(self, survivor: Group, other: Group, ts: float) -> None:
        """`other` merges into `survivor` (streams/group.lua does the same to the Redis groups)."""
        self._touch(survivor.gid)
        self._touch(other.gid)
        survivor.total = survivor.total + other.total
        survivor.n += other.n
        survivor.categories.update(other.categories)
        survivor.last_ts = max(survivor.last_ts, other.last_ts)
        survivor.count(ts, self.rule.rate_halflife_s, n=0, rate=other.rate_at(ts, self.rule.rate_halflife_s))
        if survivor.incident_ts is None:
            survivor.incident_ts = other.incident_ts
        if survivor.incident_ts is None and survivor.n >= self.incident_k:
            survivor.incident_ts = ts
        other.merged_into = survivor.gid
        self._live_multi.discard(other.gid)
        if survivor.n >= 2 and survivor.merged_into is None:
            self._live_multi.add(survivor.gid)

    def _merge(self, gid: str, ts: float) -> tuple[str, list[tuple[str, str]]]:
        """Merge `gid` with every other group of the same main category whose centroid is this close. The group
        whose incident opened first survives (the incident people already see), else the one that started first;
        the others point to it. Then the spill-over rule (see GroupingRule) across categories: the faster group
        survives. Returns (survivor, [(merged, into)] in the order applied)."""
        r = self.rule
        g = self.groups[gid]
        if g.n < r.min_merge_size:
            return gid, []
        c = g.centroid
        pairs: list[tuple[str, str]] = []
        same = [o for o in self._multi() if o.gid != gid and o.n >= r.min_merge_size and o.category == g.category]
        close = [o for o, sim in zip(same, _cosines(same, c)) if sim >= r.tau_merge]
        if close:
            survivor = min([g, *close], key=survivor_key)
            for other in [g, *close]:
                if other is not survivor:
                    self._absorb(survivor, other, ts)
                    pairs.append((other.gid, survivor.gid))
            g = survivor
        if r.tau_merge_cross <= 1.0:
            h = r.rate_halflife_s
            c = g.centroid
            others = [o for o in self._multi() if o.gid != g.gid and o.n >= r.min_merge_size]
            for o, sim in zip(others, _cosines(others, c)):
                if sim < r.tau_merge_cross or o.merged_into is not None or o.category == g.category:
                    continue
                fast, slow = (g, o) if g.rate_at(ts, h) >= o.rate_at(ts, h) else (o, g)
                rf, rs = fast.rate_at(ts, h), slow.rate_at(ts, h)
                if rf >= r.storm_rate and rs <= r.spill_ratio * rf and slow.n <= r.spill_ratio * fast.n:
                    self._absorb(fast, slow, ts)
                    pairs.append((slow.gid, fast.gid))
                    g, c = fast, fast.centroid
        return g.gid, pairs

    def forget(self, tids) -> None:
        """Drop tickets that left the window; a group with no member left in the window goes too."""
        for t in tids:
            self.group_of.pop(t, None)
            self.category_of.pop(t, None)
            self.decisions.pop(t, None)
        live = {self.resolve(g) for g in self.group_of.values()} | set(self.group_of.values())
        for gid in [g for g in self.groups if g not in live]:
            del self.groups[gid]
            self._live_multi.discard(gid)
