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

Only a storm opens an incident: a group holding K tickets whose rate (on arrival times) is a burst over its
baseline, the stream as it was before the last few seconds (GroupingRule.storm_burst); the storm state closes
after a quiet period (hysteresis), and a group bursting beside an open storm at a fraction of its rate is that
storm's fringe and opens nothing. The decision, with the storm test, goes on the trail and into the shared log.

Plain numpy, no Redis: the dedup stage persists what this decides, and the bench replays it offline.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
from scipy.special import pdtrc

from ..domain.urgency import GROWTH_FROM
from .rates import READ_HALFLIVES, Decayed, StreamCounts

LN2 = math.log(2)
RATE_PARTS = ("stream", "category", "group")  # the baseline's parts (see Grouper.baseline)
MIN_COVERAGE = 0.1  # the baseline is scaled up 10x at most for a stretch of the stream not yet decided
COVERAGE_SKIP = 2  # the busiest categories of the last seconds left out of the coverage estimate
COVERAGE_TICKETS = 20.0  # ...which needs this many tickets of the rest in the last seconds (noise ~1/sqrt of it)

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
    # ...and of two such groups, the one there first only if its main category holds at least this share of its
    # members: a background group of one intent taken over by a storm of another (its main category turned by count)
    # would bring its background into the storm's incident (overload, live: 1.7% of the background -> 0.1%). Only
    # the older one: a storm's own sub-groups, started during it, mix the storm's intent with the neighbouring ones
    # the classifier gives it, and must merge (checked on both: two-storms' transfer storm 97% -> 93% in one group).
    # 0 turns it off.
    merge_purity: float = 0.67
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
    rate_halflife_s: float = 5.0  # the fast rate: exponentially decayed count of the last seconds
    # Storm detection by rate, with hysteresis. A group is a storm when its fast rate reaches storm_burst times its
    # baseline: the most of (a) the rest of the stream per cluster (non-storm tickets/s over the effective number
    # of categories), (b) the rest of its category, (c) its own slow rate (half-life baseline_halflife_s); and it
    # holds K tickets (the seed's K-in-W stays the floor). Only a storm opens an incident. The storm state closes
    # once the group's rate has stayed under storm_calm times its baseline for storm_quiet_s (the incident stays
    # open for people to resolve); a new burst starts it again. Tickets of storm groups are left out of the
    # baselines. storm_burst 0 turns the test off: K in the window opens an incident, as before.
    storm_burst: float = 4.0
    storm_calm: float = 2.0
    storm_quiet_s: float = 60.0
    baseline_halflife_s: float = 60.0
    # A storm's fringe: storm tickets the classifier puts in a neighbouring intent (or that reword it unusually) join
    # groups of their own or background groups of related intents, which then burst with the storm. A group that
    # passes the burst test while an open storm incident's group is near (centroid cosine >= tau_fringe) and it
    # grows at under fringe_ratio x that storm's rate is the storm's fringe: it opens no incident (nobody is paged
    # for it) and is not merged (its background members stay out of the storm). Once it grows at fringe_ratio x the
    # storm's rate or more (a second storm of a confusable intent), or the storm's state has ended, it is a storm
    # of its own. fringe_ratio 0 turns this off.
    tau_fringe: float = 0.5
    fringe_ratio: float = 0.1
    # A ticket's lower labels (not its predicted category) count as evidence only for groups in storm state: a storm
    # makes its intent likely whatever the classifier's first choice; without it, storm tickets whose second label
    # was a background group's category joined that group, turned its main category, and merged it (background and
    # all) into the storm. Measured out of sample (bench/results/issue13-ordering/tried): background wrongly inside
    # storm incidents 1.3% -> 0.6% in overload, 1.5% -> 0.1% in single-storm; single-storm's pair recall 0.748 ->
    # 0.718. False: every top label counts for every group.
    second_label_storm_only: bool = True
    # A burst must also be unlikely as chance: the group's tickets of the last seconds, as a Poisson count whose mean
    # is what the baseline expects there, must have a tail probability under storm_chance. Where the baseline expects
    # one ticket, four or five together pass the 4x test by luck: a thin stream (a quiet desk, or the urgent lane's
    # tenth of a flushed backlog) opened incidents on such clusters. A storm clears it with a handful more tickets
    # (at a baseline of 1.2 tickets in the window: 7 instead of 5). 0 turns it off.
    storm_chance: float = 1e-3
    # A storm shifts the prior of its intent: the classifier's probabilities assume the training mix, and a group in
    # storm state arrives at storm_burst times its baseline or more. With storm_prior W > 1 a ticket's most likely
    # label *under that shift* (each top label of a storm group's category x W, the rest as they are) also counts as
    # evidence: a storm ticket the classifier files under a neighbouring intent, the storm's intent second or third
    # at over 1/W of the first, can join the storm's group (it must still reach tau_centroid_category). Two
    # confusable storms shift both their labels alike and cancel out. W = storm_burst, the least a storm guarantees;
    # measured out of sample (bench/grouping.py, bench/results/issue13-storm-prior/): pair recall +0.003 to +0.021 on
    # every scenario but one (confusable-fx -0.001), precision within -0.007..+0.002, overload background inside
    # 0.7% -> 0.2%; in confusable-fx one ticket of a storm landed in the other's incident. Renormalising the shifted
    # labels against min_label_p instead of taking the first, or W = 10 or 20, gained under 0.01 more recall and cost
    # single-storm 0.003 of precision. 1 (or less) turns it off.
    storm_prior: float = 4.0
    # A ticket the classifier files under the category of a group in storm state joins that storm (at
    # tau_centroid_category) before any closer calm group of another category (another storm still competes by
    # cosine): a small background group's centroid sits nearer one storm template than the big storm's spread-out
    # centroid. Without it (overload, live): a background group of 15 card_payment_not_recognised tickets drew 17
    # storm tickets the classifier put in its category, then 36 compromised_card storm tickets by centroid >= 0.9,
    # turned compromised_card by count and merged into the storm with its background (41 of 2,483 background
    # tickets wrongly inside the storm's incident, 1.7%).
    storm_label_first: bool = True


_TRACKED = frozenset({"total", "n", "categories", "merged_into", "storm"})  # what the centroid cache holds of a group


@dataclass
class Group:
    gid: str
    total: np.ndarray  # sum of the members' unit vectors
    n: int = 0
    categories: Counter = field(default_factory=Counter)
    first_ts: float = 0.0
    last_ts: float = 0.0
    merged_into: str | None = None
    incident_ts: float | None = None  # when its incident opened (a storm with K; mirrors the Redis group)
    # its tickets counted with the fast half-life (the rate) and the baseline one, readable at any ticket's time
    fast: Decayed = field(default_factory=lambda: Decayed(GroupingRule.rate_halflife_s))
    slow: Decayed = field(default_factory=lambda: Decayed(GroupingRule.baseline_halflife_s))
    storm: bool = False  # in storm state (see GroupingRule)
    storm_ts: float | None = None  # when the storm state began
    hot_until: float = 0.0  # the fast rate stays above storm_calm x baseline until then (absent new tickets)
    # the dirty set of the Grouper whose `groups` hold this object (not a field: copies are snapshots, unowned)
    _sink: ClassVar[set | None] = None

    def __setattr__(self, name, value) -> None:
        object.__setattr__(self, name, value)
        if name in _TRACKED and self._sink is not None:  # `g.total = ...`, `g.n += 1`, ...: the cache row is stale
            self._sink.add(self.gid)

    @classmethod
    def new(cls, gid: str, dim: int, ts: float, rule: GroupingRule) -> Group:
        return cls(gid, np.zeros(dim, dtype=np.float64), first_ts=ts, fast=Decayed(rule.rate_halflife_s),
                   slow=Decayed(rule.baseline_halflife_s))

    def copy(self) -> Group:
        return replace(self, total=self.total.copy(), categories=Counter(self.categories), fast=self.fast.copy(),
                       slow=self.slow.copy())

    def count(self, ts: float) -> None:
        """One ticket at ts. Counted in one-second buckets (models/rates.py), so the rate read at a ticket's time
        holds the tickets at or before it whatever order they were decided in: the urgent lane runs ahead of a
        backlog, a replayed backlog carries created_at."""
        self.fast.add(ts)
        self.slow.add(ts)

    def rate_at(self, ts: float) -> float:
        """Tickets/s at ts: the decayed count of the tickets at or before it, over the half-life's mean life."""
        return self.fast.at(ts) * LN2 / self.fast.h

    def slow_at(self, ts: float) -> float:
        return self.slow.at(ts)

    def storm_at(self, ts: float, quiet_s: float) -> bool:
        """In storm state at ts: it closes once the rate stayed calm for the quiet period."""
        return self.storm and ts <= self.hot_until + quiet_s

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
    rule: str  # centroid | centroid_category | centroid_storm_prior | tau | tau_category | none
    score: float  # the cosine that decided (to the centroid or the neighbour); -1 when nothing was near
    neighbor: str | None  # the nearest ticket, for the trail
    neighbor_score: float
    merged: list[str] = field(default_factory=list)  # groups merged into `group` by this ticket
    joined_group: str = ""  # the group it joined before any merge (`group` is the survivor)
    merges: list[tuple[str, str]] = field(default_factory=list)  # (merged, survivor), in the order applied
    ts: float = 0.0  # the time the decision was made at (the ticket's arrival): replays use the same
    opens: bool = False  # this ticket opens the incident of `group` (it is a storm and holds K tickets)
    storm: dict = field(default_factory=dict)  # the storm test of `group` at this ticket, for the trail
    # `group`'s storm state after this ticket [storm 0/1, storm_ts, hot_until, incident_ts]: replays set it as is
    state: list = field(default_factory=list)
    lane: bool = False  # it came through the urgent ingest lane, which runs ahead of a backlog (see Grouper.main_ts)

    def trail(self) -> dict:
        """What the ticket's trail shows: which group, which score, which rule, what merged, the storm test."""
        return {"group": self.group, "joined": self.joined, "rule": self.rule, "score": self.score,
                "neighbor": self.neighbor, "neighbor_score": self.neighbor_score, "joined_group": self.joined_group,
                "merged": list(self.merged), "storm": dict(self.storm)}


def _span(elapsed: float, h_slow: float, h_fast: float) -> float:
    """Seconds of stream a lagged count covers (slow minus fast decayed count of a steady rate of 1/s), after
    `elapsed` seconds of stream: a stream seen for 10 s has not had a minute of baseline yet."""
    ln2 = math.log(2)
    return h_slow / ln2 * (1.0 - 0.5 ** (elapsed / h_slow)) - h_fast / ln2 * (1.0 - 0.5 ** (elapsed / h_fast))


def poisson_tail(mean: float, k: float) -> float:
    """P(X >= k) for X ~ Poisson(mean), k rounded down: how likely k or more tickets are by chance."""
    k = math.floor(k)
    return 1.0 if k <= 0 else float(pdtrc(k - 1, mean))  # pdtrc(j, m) = P(X > j)


def _clusters(counts) -> float:
    """The effective number of categories (perplexity of their shares): an ordinary cluster's share is 1/that."""
    p = np.array([v for v in counts if v > 0], dtype=np.float64)
    if not len(p):
        return 1.0
    p = p / p.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _cosines(groups: list[Group], vec: np.ndarray) -> list[float]:
    """Cosine of each group's centroid to a unit vector, in one matrix product."""
    if not groups:
        return []
    totals = np.stack([g.total for g in groups])
    norms = np.maximum(np.linalg.norm(totals, axis=1), 1e-12)
    return ((totals @ vec) / norms).tolist()


class _GroupDict(dict):
    """The Grouper's groups: a group put in is owned (its tracked fields report to `dirty`); every key set or
    removed is reported too, so the centroid cache follows whatever changed the groups."""

    def __init__(self, dirty: set, items=()):
        super().__init__()
        self._dirty = dirty
        for k, v in dict(items).items():
            self[k] = v

    def __setitem__(self, gid, g) -> None:
        super().__setitem__(gid, g)
        object.__setattr__(g, "_sink", self._dirty)
        self._dirty.add(gid)

    def __delitem__(self, gid) -> None:
        super().__delitem__(gid)
        self._dirty.add(gid)

    def pop(self, gid, *default):
        self._dirty.add(gid)
        return super().pop(gid, *default)

    def popitem(self):
        gid, g = super().popitem()
        self._dirty.add(gid)
        return gid, g

    def setdefault(self, gid, default=None):
        if gid not in self:
            self[gid] = default
        return self[gid]

    def update(self, *args, **kw) -> None:
        for k, v in dict(*args, **kw).items():
            self[k] = v

    def clear(self) -> None:
        self._dirty.update(self)
        super().clear()


class _Centroids:
    """The live groups of two or more members (n >= 2, not merged away: the candidates of every ticket) as rows of
    one matrix of their totals, with the norms, sizes and main categories, so a ticket is compared with all of
    them in one matrix-vector product instead of stacking every group's total for each ticket. Rows follow the
    groups lazily: a group whose total, size, categories or merge changed (or that was added or removed) is in
    `dirty` (Group.__setattr__, _GroupDict) and its row is rewritten at the next `sync`: assigning a group's
    `total`, `n`, `categories` or `merged_into` (`g.total = g.total - v`, `g.n -= 1`) is seen; a change made in place
    only (`g.total[:] = ...`, `g.categories[c] -= 1` with no such assignment) must add the group id to
    `Grouper._cache.dirty` itself. The cosines are the
    same arithmetic as `_cosines` (total . v / max(|total|, 1e-12))."""

    def __init__(self):
        self.dirty: set[str] = set()
        self.row_of: dict[str, int] = {}
        self.gid_of: list[str | None] = []
        self.free: list[int] = []
        self.hi = 0  # rows [0, hi) are in use or free holes
        self.tot = np.zeros((0, 0))
        self.norm = np.ones(0)
        self.n = np.zeros(0, dtype=np.int64)
        self.cat = np.full(0, -1, dtype=np.int64)  # category code; -1: none
        self.live = np.zeros(0, dtype=bool)
        self.storm = np.zeros(0, dtype=bool)  # in storm state
        self.codes: dict[str | None, int] = {None: -1}

    def code(self, category: str | None) -> int:
        c = self.codes.get(category)
        if c is None:
            c = self.codes[category] = len(self.codes) - 1
        return c

    def _grow(self, dim: int) -> None:
        cap = max(64, 2 * len(self.gid_of))
        tot = np.zeros((cap, dim))
        if self.hi:
            tot[: self.tot.shape[0]] = self.tot
        self.tot = tot
        self.norm = np.concatenate([self.norm, np.ones(cap - len(self.norm))])
        self.n = np.concatenate([self.n, np.zeros(cap - len(self.n), dtype=np.int64)])
        self.cat = np.concatenate([self.cat, np.full(cap - len(self.cat), -1, dtype=np.int64)])
        self.live = np.concatenate([self.live, np.zeros(cap - len(self.live), dtype=bool)])
        self.storm = np.concatenate([self.storm, np.zeros(cap - len(self.storm), dtype=bool)])
        self.gid_of += [None] * (cap - len(self.gid_of))

    def sync(self, groups: dict[str, Group]) -> None:
        while self.dirty:
            gid = self.dirty.pop()
            g = groups.get(gid)
            row = self.row_of.get(gid)
            if g is None or g.n < 2 or g.merged_into is not None:
                if row is not None:
                    del self.row_of[gid]
                    self.gid_of[row], self.live[row], self.n[row], self.cat[row] = None, False, 0, -1
                    self.storm[row] = False
                    self.tot[row] = 0.0
                    self.norm[row] = 1.0
                    self.free.append(row)
                continue
            if row is None:
                if self.free:
                    row = self.free.pop()
                else:
                    if self.hi >= len(self.gid_of) or not self.hi:
                        self._grow(len(g.total))
                    row, self.hi = self.hi, self.hi + 1
                self.row_of[gid], self.gid_of[row], self.live[row] = row, gid, True
            self.tot[row] = g.total
            t = self.tot[row]
            self.norm[row] = max(float(np.sqrt(np.add.reduce(t * t))), 1e-12)  # = np.linalg.norm(axis=1)
            self.n[row] = g.n
            self.cat[row] = self.code(g.category)
            self.storm[row] = g.storm

    def rebuild(self, groups: dict[str, Group]) -> None:
        self.dirty.update(groups)
        self.dirty.update(self.row_of)

    def cosines(self, vec: np.ndarray) -> np.ndarray:
        """Cosine of every row (0 for free rows: mask with `live`)."""
        if not self.hi:
            return np.zeros(0)
        return (self.tot[: self.hi] @ vec) / self.norm[: self.hi]


def _started(g: Group) -> tuple:
    return g.first_ts, g.gid


def _purity(g: Group) -> float:
    """The share of a group's members in its main category."""
    total = sum(g.categories.values())
    return g.categories.most_common(1)[0][1] / total if total else 1.0


def survivor_key(g: Group) -> tuple:
    """Which of several merging groups survives: an open incident first (the earliest), else the oldest group."""
    return (g.incident_ts is None, g.incident_ts if g.incident_ts is not None else g.first_ts, g.first_ts, g.gid)


class Grouper:
    """Groups in the window, their centroids, and the rule. `assign` decides and records one ticket."""

    def __init__(self, rule: GroupingRule | None = None, incident_k: int = 10):
        self.rule = rule or GroupingRule()
        self.incident_k = incident_k
        self._cache = _Centroids()
        self.groups = {}
        self.group_of: dict[str, str] = {}  # ticket id -> group id (as decided; follow `resolve` for merges)
        self.category_of: dict[str, str] = {}
        self.decisions: dict[str, Decision] = {}  # ticket id -> its decision, while in the window
        self._journal: dict[str, Group | None] | None = None  # groups as they were before the open batch
        # groups of 2+ members not merged away: the candidates of every ticket (as rows of _cache: the same set,
        # which the cache derives from the groups themselves)
        self._live_multi: set[str] = set()
        self.apart: set[frozenset] = set()  # pairs of groups an operator separated: never merged automatically
        self._added: list[str] = []
        self.base = StreamCounts(self.rule.baseline_halflife_s, self.rule.rate_halflife_s)
        # The main stream's position in event time: the latest ticket decided that did not come through the urgent
        # lane. Past it the stream has only been seen through the lane (a tenth of it, say), so a lane ticket ahead
        # of it is judged against the baseline as of that position (see _storm).
        self.main_ts: float | None = None
        # ...and where it began: the baseline's history starts there, not at the earliest lane ticket. Flushed
        # behind two enrich workers, the lane's tickets of the whole backlog come first and the main stream's second
        # batch (10 s of a 50/s stream) can be decided before its first: counted from the lane's start, that gap
        # read as a quiet stream and a category's ordinary rate as a 4.7x burst (calm 20,000 --workers 2 opened an
        # incident of no storm in 3 of 6 runs; bench/results/issue13-workers2/).
        self.main_t0: float | None = None
        self._main_saved: tuple[float | None, float | None] = (None, None)

    @property
    def groups(self) -> dict[str, Group]:
        return self._groups

    @groups.setter
    def groups(self, groups: dict[str, Group]) -> None:
        self._groups = _GroupDict(self._cache.dirty, groups)
        self._cache.rebuild(self._groups)

    # ---- speculative batches: decide, then keep or roll back (another worker decided first)

    def begin(self) -> None:
        """Start a batch whose decisions may be rolled back: groups are copied before their first change."""
        self._journal, self._added = {}, []
        self._main_saved = (self.main_ts, self.main_t0)
        self.base.begin()

    def keep(self) -> None:
        self._journal, self._added = None, []
        self.base.keep()

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
        self.base.rollback()
        self.main_ts, self.main_t0 = self._main_saved
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
               neighbours: list[tuple[str, float]], lane: bool = False) -> Decision:
        """Decide the group of ticket `tid` (unit vector `vec`, predicted `category` and top labels, event time `ts`)
        given its nearest tickets in the window, and record it. `lane`: it came through the urgent ingest lane."""
        r = self.rule
        if tid in self.group_of:  # a redelivered ticket keeps its group (and the decision that put it there)
            gid = self.group_of_ticket(tid)
            old = self.decisions.get(tid)
            if old is not None:
                return replace(old, group=gid, joined=gid != tid, rule=old.rule)
            return Decision(gid, gid != tid, "redelivered", 1.0, None, -1.0, joined_group=gid)
        nearest = neighbours[0] if neighbours else (None, -1.0)
        evidence, plain = self._evidence(category, top)
        best = self._best_group(vec, evidence, neighbours, category)  # (score, size, gid, rule)
        if best is not None and best[3] == "centroid_category" and self.groups[best[2]].category not in plain:
            best = (*best[:3], "centroid_storm_prior")  # its label counted only through the storm's prior
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
        decision.ts = ts
        decision.lane = lane
        self._record(tid, vec, category, ts, decision.group, lane)
        survivor, pairs = self._merge(decision.group, ts)
        g = self.groups[survivor]
        decision.storm = self._storm(g, ts, lane)
        if g.incident_ts is None and g.storm:
            g.incident_ts = ts
            decision.opens = True
        decision.storm["opened"] = decision.opens
        decision.storm["incident"] = g.incident_ts is not None
        if g.gid != decision.group:
            decision.group, decision.joined = g.gid, True
        decision.merged = [m for m, _ in pairs]
        decision.merges = pairs
        decision.state = [int(g.storm), g.storm_ts, g.hot_until, g.incident_ts]
        self.decisions[tid] = decision
        return decision

    def _evidence(self, category: str, top: list[tuple[str, float]]) -> tuple[set[str], set[str]]:
        """The categories a ticket's labels support: its predicted one, each top label with min_label_p, and its
        most likely label once a storm group's category is weighted by the storm prior (see storm_prior).
        (evidence, the part of it that needs no prior)."""
        r = self.rule
        plain = {lab for lab, p in top[: r.top_labels] if p >= r.min_label_p} | {category}
        if r.storm_prior <= 1.0 or not top:
            return plain, plain
        cache = self._cache
        cache.sync(self.groups)
        rows = np.flatnonzero(cache.storm[: cache.hi] & cache.live[: cache.hi])
        if not len(rows):
            return plain, plain
        storming = set(cache.cat[rows].tolist()) - {-1}  # category codes of groups in storm state
        mass = [p * (r.storm_prior if cache.codes.get(lab, -1) in storming else 1.0) for lab, p in top]
        return plain | {top[int(np.argmax(mass))][0]}, plain

    def _best_group(self, vec: np.ndarray, evidence: set[str], neighbours: list[tuple[str, float]],
                    category: str | None = None) -> tuple[float, int, str, str] | None:
        """The group a ticket joins by its centroid, of every live group of 2+ and its neighbours' groups: the
        highest cosine (then the bigger group, then the smaller id) among those at tau_centroid, or at
        tau_centroid_category with their main category in the evidence (a lower label only for a group in storm
        state: second_label_storm_only); no calm group of another category when a group in storm state of the
        ticket's category is a candidate (storm_label_first). (score, size, gid, rule) or None."""
        r = self.rule
        cache = self._cache
        cache.sync(self.groups)
        found: list[tuple[float, int, str]] = []
        storm_own = False  # a storm group of the ticket's own category is a candidate: calm groups of others are not
        if cache.hi:
            sims = cache.cosines(vec)
            ok = cache.live[: cache.hi] & (sims >= r.tau_centroid_category)
            if not ok.any():
                rows = ()
            else:
                in_evidence = np.zeros(len(cache.codes) + 1, dtype=bool)  # by code + 1 (-1: no category)
                in_evidence[[cache.codes[c] + 1 for c in evidence if c in cache.codes]] = True
                by_label = in_evidence[cache.cat[: cache.hi] + 1]
                if r.second_label_storm_only and category is not None:
                    by_label &= (cache.cat[: cache.hi] == cache.codes.get(category, -2)) | cache.storm[: cache.hi]
                ok &= (sims >= r.tau_centroid) | by_label
                rows = np.flatnonzero(ok)
                if len(rows) and r.storm_label_first and category is not None:
                    mine = cache.cat[rows] == cache.codes.get(category, -2)
                    if (cache.storm[rows] & mine).any():  # then no calm group of another category
                        rows, storm_own = rows[cache.storm[rows] | mine], True
            if len(rows):
                top = rows[sims[rows] == sims[rows].max()]
                found += [(float(sims[i]), int(cache.n[i]), cache.gid_of[i]) for i in top]
        extra: dict[str, Group] = {}  # neighbours' groups that are not rows (a single ticket's)
        for nbr, _ in neighbours:
            gid = self.group_of_ticket(nbr)
            if gid is not None and gid not in cache.row_of and gid in self.groups:
                extra.setdefault(gid, self.groups[gid])
        if storm_own:
            extra = {gid: g for gid, g in extra.items() if g.storm or g.category == category}
        cands = list(extra.values())
        for g, s in zip(cands, _cosines(cands, vec)):
            if r.second_label_storm_only and g.category != category and not g.storm:
                label_ok = False
            else:
                label_ok = g.category in evidence
            if s >= r.tau_centroid or (s >= r.tau_centroid_category and label_ok):
                found.append((s, g.n, g.gid))
        if not found:
            return None
        s, n, gid = min(found, key=lambda x: (-x[0], -x[1], x[2]))
        return s, n, gid, "centroid" if s >= r.tau_centroid else "centroid_category"

    def apply(self, tid: str, vec: np.ndarray, category: str, ts: float, decision: Decision) -> None:
        """Replay a decision another worker made (read from the shared log): the same state as deciding it here."""
        if tid in self.group_of:
            return
        ts = decision.ts or ts
        self._record(tid, vec, category, ts, decision.joined_group or decision.group, decision.lane)
        for merged, survivor in decision.merges:
            if merged in self.groups and survivor in self.groups:
                self._absorb(self.groups[survivor], self.groups[merged], ts)
        g = self.groups.get(self.resolve(decision.joined_group or decision.group))
        if g is not None and decision.state:
            self._touch(g.gid)
            storm, storm_ts, hot_until, incident_ts = decision.state
            g.storm, g.storm_ts, g.hot_until, g.incident_ts = bool(storm), storm_ts, float(hot_until), incident_ts
        if self.rule.storm_burst > 0:  # as the storm test did when it was decided
            self.base.decay(ts)
        self.decisions[tid] = decision

    def _record(self, tid: str, vec: np.ndarray, category: str, ts: float, gid: str, lane: bool = False) -> None:
        r = self.rule
        if not lane:
            if self.main_ts is None or ts > self.main_ts:
                self.main_ts = ts
            if self.main_t0 is None or ts < self.main_t0:
                self.main_t0 = ts
        self._touch(gid)
        g = self.groups.get(gid)
        if g is None:
            g = self.groups[gid] = Group.new(gid, len(vec), ts, r)
        g.total = g.total + vec
        g.n += 1
        g.categories[category] += 1
        g.last_ts = max(g.last_ts, ts)
        g.count(ts)
        if not g.storm_at(ts, r.storm_quiet_s):  # a storm's own tickets are not the stream's normal
            self.base.add(ts, category)
        if g.n >= 2 and g.merged_into is None:
            self._live_multi.add(gid)
        self.group_of[tid] = gid
        self.category_of[tid] = category
        if self._journal is not None:
            self._added.append(tid)

    def baseline(self, g: Group, ts: float, rate: float | None = None) -> tuple[float, dict]:
        """The rate group g would have if nothing unusual were happening (tickets/s), and its parts, each as it was
        before the last few seconds and as of ts (see StreamCounts.lagged_at): the rest of the stream per cluster
        (non-storm tickets/s over the effective number of categories), g's category, g's own rate."""
        r = self.rule
        hs, hf = r.baseline_halflife_s, r.rate_halflife_s
        b = self.base
        start, since = b.t0, None
        m0 = self.main_t0
        if m0 is not None and start is not None and m0 - start >= 1.0 and m0 <= ts < m0 + READ_HALFLIVES * hs:
            # lane tickets came before the main stream began: the history starts with the main stream (its span
            # and its counts; before it the stream was seen only through the lane, a thinned sample)
            start = since = m0
        elapsed = ts - start if start is not None else 0.0
        span = max(_span(elapsed, hs, hf), 0.25)
        lag, fast = b.read(ts, since)
        total = sum(lag.values())
        own = max(0.0, g.slow_at(ts) - g.fast.at(ts))
        parts = {"stream": total / span / max(1.0, _clusters(lag.values())),
                 "category": lag.get(g.category, 0.0) / span,
                 "group": own / max(_span(1e9, hs, hf), 1e-9)}
        base = max(max(parts.values()), 1e-6)
        # Coverage can only raise the baseline; under the calm bar and where the urgency's growth term starts (2x
        # both) nothing reads the ratio, so its cost (~0.02 ms a ticket on calm 5,000, bench/grouping_speed.py) is
        # paid only for groups above them.
        if rate is not None and rate <= min(r.storm_calm, GROWTH_FROM) * base:
            return base, parts
        cover = self._coverage(lag, fast, g.category, elapsed, span)
        if cover < 1.0:
            parts = {k: v / cover for k, v in parts.items()}
            base = max(max(parts.values()), 1e-6)
            parts["coverage"] = cover
        return base, parts

    def _coverage(self, lag: dict, fast: dict, category: str | None, elapsed: float, span: float) -> float:
        """The share of the stream before the last few seconds that has been decided (1.0: all of it, or no way to
        tell). The counts hold only what has been decided: behind two enrich workers a flushed backlog reaches dedup
        a batch at a time in whichever order they finish, and 10 s of a 50/s stream missing before a ticket read as a
        quiet stream (calm 20,000 --workers 2: an ordinary category as a 4.4x burst). A gap takes every category
        alike, so it shows as the categories' counts before the last seconds running below their counts in them.
        Read over the categories that say nothing about a storm: not the group's own, nor the two busiest of the last
        seconds (storms beside it, its spill), and only with COVERAGE_TICKETS of them in those seconds (a quiet desk,
        or a stream just begun, is never corrected). A stream that really was quieter before (a ramp-up) reads as
        partly uncovered too, which only raises the bar a little while it ramps."""
        hf = self.rule.rate_halflife_s
        wf = hf / LN2 * (1.0 - 0.5 ** (elapsed / hf)) if elapsed > 0 else 0.0
        if wf <= 0:
            return 1.0
        rest = {c: v for c, v in fast.items() if c != category}
        for c in heapq.nlargest(COVERAGE_SKIP, rest, key=rest.get):
            del rest[c]
        now = sum(rest.values())
        if now < COVERAGE_TICKETS:
            return 1.0
        before = sum(lag.get(c, 0.0) for c in rest)
        expect = now / wf * span
        return 1.0 if before >= expect else max(before / expect, MIN_COVERAGE)

    def _storm(self, g: Group, ts: float, lane: bool = False) -> dict:
        """The storm test of g at ts (hysteresis: burst to start, a quiet period to end); returns the trail's part.

        Everything is read as of the ticket's own time, whatever order tickets were decided in: its group's rate and
        size count the tickets at or before ts (the urgent lane decides tickets ahead of a backlog; a flushed backlog
        carries created_at), the baseline the stream before ts's last few seconds. A ticket of the urgent lane more
        than a few seconds ahead of the main stream (main_ts) is judged against the baseline as of the main stream's
        position: beyond it the stream has only been seen through the lane, and a thinned stream's counts are too
        small to say what is unusual (flushed at once, a calm stream's lane tickets opened incidents on chance
        clusters of four or five). Its own group's rate still counts, so a storm that reads urgent and rides the
        lane is seen from the lane alone; a storm in the backlog is seen when the backlog reaches it."""
        r = self.rule
        ended = g.storm and not g.storm_at(ts, r.storm_quiet_s)
        if ended:
            self._touch(g.gid)
            g.storm = False
        rate = g.rate_at(ts)
        due = g.n - int(g.fast.after(ts))  # members at or before ts: those decided ahead of it are not due yet
        if r.storm_burst <= 0:  # the test is off: K in the window is a storm, and it stays one
            started = not g.storm and due >= self.incident_k
            if started:
                self._touch(g.gid)
                g.storm, g.storm_ts, g.hot_until = True, ts, 1e18
            return {"state": "on" if g.storm else "off", "started": started, "rule": "k", "rate": round(rate, 3)}
        read = ts
        if lane and self.main_ts is not None:
            read = min(ts, self.main_ts + r.rate_halflife_s)  # the baseline leaves out the last seconds anyway
        base, parts = self.baseline(g, read, rate)
        ratio = rate / base
        started = not g.storm and due >= self.incident_k and ratio >= r.storm_burst
        chance = None
        if started and r.storm_chance > 0:
            chance = poisson_tail(base * r.rate_halflife_s / LN2, g.fast.at(ts))
            started = chance < r.storm_chance
        fringe = self._fringe_of(g, rate, ts) if started and g.incident_ts is None else None
        if fringe is not None:
            started = False
        self._touch(g.gid)
        if started:
            g.storm, g.storm_ts = True, ts
        if g.storm and ratio >= r.storm_calm:
            g.hot_until = max(g.hot_until, ts + r.rate_halflife_s * math.log2(ratio / r.storm_calm))
        out = {"state": "on" if g.storm else "off", "started": started, "rule": "burst", "rate": round(rate, 3),
               "baseline": round(base, 4), "ratio": round(ratio, 2), "by": max(RATE_PARTS, key=parts.get),
               "burst": r.storm_burst, "size": g.n, "k": self.incident_k}
        if due != g.n:
            out["due"] = due
        if g.storm:  # when the state ends if no new ticket keeps it on (streams/storm_end.lua says so on the feed)
            out["until"] = round(g.hot_until + r.storm_quiet_s, 3)
        if chance is not None:
            out["chance"] = float(f"{chance:.3g}")
        if "coverage" in parts:
            out["coverage"] = round(parts["coverage"], 3)
        if read < ts:
            out["baseline_behind_s"] = round(ts - read, 2)
        if ended:
            out["ended"] = True
        if fringe is not None:  # bursting with a storm near it, at a fraction of its rate: that storm's fringe
            out.update(fringe_of=fringe[0].gid, fringe_cos=round(fringe[1], 4), fringe_share=round(fringe[2], 4))
        return out

    def _fringe_of(self, g: Group, rate: float, ts: float) -> tuple[Group, float, float] | None:
        """The open storm incident whose fringe group g is (see GroupingRule): (storm group, cosine, rate share)."""
        r = self.rule
        if r.fringe_ratio <= 0:
            return None
        cands = [o for o in self._multi() if o.gid != g.gid and o.incident_ts is not None
                 and o.storm_at(ts, r.storm_quiet_s)]
        best = None
        for o, sim in zip(cands, _cosines(cands, g.centroid)):
            share = rate / max(o.rate_at(ts), 1e-9)
            if sim >= r.tau_fringe and share < r.fringe_ratio and (best is None or sim > best[1]):
                best = (o, sim, share)
        return best

    def _absorb(self, survivor: Group, other: Group, ts: float) -> None:
        """`other` merges into `survivor` (streams/group.lua does the same to the Redis groups)."""
        r = self.rule
        self._touch(survivor.gid)
        self._touch(other.gid)
        survivor.total = survivor.total + other.total
        survivor.n += other.n
        survivor.categories.update(other.categories)
        survivor.last_ts = max(survivor.last_ts, other.last_ts)
        survivor.fast.merge(other.fast)
        survivor.slow.merge(other.slow)
        if other.storm_at(ts, r.storm_quiet_s):
            if not survivor.storm_at(ts, r.storm_quiet_s):
                survivor.storm, survivor.storm_ts = True, other.storm_ts
            survivor.hot_until = max(survivor.hot_until, other.hot_until)
        if survivor.incident_ts is None:
            survivor.incident_ts = other.incident_ts
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
        cache = self._cache
        cache.sync(self.groups)
        close: list[Group] = []
        if cache.hi:  # the other live groups of the same main category with min_merge_size members
            same = cache.live[: cache.hi] & (cache.n[: cache.hi] >= r.min_merge_size)
            same &= cache.cat[: cache.hi] == cache.code(g.category)
            if gid in cache.row_of:
                same[cache.row_of[gid]] = False
            rows = np.flatnonzero(same)
            if len(rows):
                sims = (cache.tot[rows] @ c) / cache.norm[rows]
                close = [self.groups[cache.gid_of[i]] for i in rows[sims >= r.tau_merge]]
        close = [o for o in close if frozenset((g.gid, o.gid)) not in self.apart]  # an operator split them
        if r.merge_purity > 0:  # of each pair, the group there first: taken over if its categories are mixed
            close = [o for o in close if _purity(min(g, o, key=_started)) >= r.merge_purity]
        if close:
            close.sort(key=survivor_key)  # merged in a fixed order: the oldest first
            survivor = min([g, *close], key=survivor_key)
            for other in [g, *close]:
                if other is not survivor:
                    self._absorb(survivor, other, ts)
                    pairs.append((other.gid, survivor.gid))
            g = survivor
        if r.tau_merge_cross <= 1.0:
            c = g.centroid
            others = [o for o in self._multi() if o.gid != g.gid and o.n >= r.min_merge_size]
            for o, sim in zip(others, _cosines(others, c)):
                if sim < r.tau_merge_cross or o.merged_into is not None or o.category == g.category:
                    continue
                fast, slow = (g, o) if g.rate_at(ts) >= o.rate_at(ts) else (o, g)
                rf, rs = fast.rate_at(ts), slow.rate_at(ts)
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
