"""An operator's regroup applied to the Grouper: the window's groups follow at once, so later tickets land on the
right side.

streams/regroup.lua moves the tickets in Redis and appends the operation to the dedup decision log; every dedup
worker applies it here, in log order, before deciding its next batch. Split, out and move take the tickets'
vectors out of the source group's sum and into the target's (a ticket that already left the window keeps its
share in the source: its vector is gone with it) and pin the two groups apart, so the automatic merge rule
never joins what an operator separated; merge absorbs the source into the target and lifts the pin.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .grouping import Group, Grouper


def _live(g: Grouper, grp: Group) -> None:
    if grp.n >= 2 and grp.merged_into is None:
        g._live_multi.add(grp.gid)
    else:
        g._live_multi.discard(grp.gid)


def regroup(g: Grouper, kind: str, src: str, dst: str, tids: list[str], vecs: dict[str, np.ndarray],
            ts: float) -> None:
    """Apply one regroup (kind split | out | move | merge) of tickets `tids` from group `src` to group `dst`;
    `vecs` holds the vectors of the tickets still in the window."""
    src_now, dst_now = g.resolve(src), g.resolve(dst)
    if kind == "merge":
        g.apart.discard(frozenset((src_now, dst_now)))
        s, d = g.groups.get(src_now), g.groups.get(dst_now)
        if s is not None and d is not None and s is not d:
            g._absorb(d, s, ts)
        for t in tids:  # members that were never in a group of this worker's window still point to the target
            if t in g.group_of and g.group_of_ticket(t) != dst_now:
                g.group_of[t] = dst_now
        return
    target = g.groups.get(dst_now)
    for t in tids:
        old = g.group_of_ticket(t)
        if old is None or old == dst_now:
            continue  # left the window (only Redis moved it), or already there
        og = g.groups.get(old)
        if target is None:
            dim = next(iter(vecs.values())).shape[0] if vecs else (len(og.total) if og is not None else 0)
            target = g.groups[dst_now] = Group.new(dst_now, dim, ts, g.rule)
        v = vecs.get(t)
        cat = g.category_of.get(t)
        if og is not None:
            if v is not None:
                og.total = og.total - v
            og.n = max(0, og.n - 1)
            if cat is not None:
                og.categories = og.categories - Counter({cat: 1})
            _live(g, og)
        if v is not None:
            target.total = target.total + v
        target.n = target.n + 1
        if cat is not None:
            target.categories = target.categories + Counter({cat: 1})
        target.last_ts = max(target.last_ts, ts)
        g.group_of[t] = dst_now
    if target is None:
        return
    if kind == "split" and target.incident_ts is None:
        target.incident_ts = ts  # an incident from now on: the storm rule will not open it again
    _live(g, target)
    g.apart.add(frozenset((src_now, dst_now)))
