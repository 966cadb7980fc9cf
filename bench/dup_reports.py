"""Duplicate bug reports (GitBugs: Hadoop, SeaMonkey) grouped by the live grouping rule, next to the neighbour rule it
replaced: how many of the labelled duplicate pairs end in one group, and at what precision.

Each project's reports go through `models.grouping.Grouper` in creation order, every report in the window (a bug
tracker's duplicates arrive weeks apart, not within ROUTING_DEDUP_WINDOW_S), with its 8 nearest earlier reports as
neighbours. There is no classifier for bug reports, so the category evidence is shown at its two ends: each report
its own category (only the plain thresholds apply: tau for a neighbour, tau_centroid for a group; the category rules and
merges never fire) and every report in one category (the category thresholds apply to every pair: as if a
classifier put a whole project in one intent). The storm
test is off (K alone), which does not change membership.

Precision is a lower bound: co-grouped pairs that are not labelled duplicates may still be unlabelled ones (the
labels list 66 / 97 pairs among millions). Usage: python bench/dup_reports.py [--json bench/out/dup-reports.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from routing_engine.models.grouping import Grouper, GroupingRule  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "gitbugs_duplicates"
PROJECTS = {"hadoop": ("hadoop_bugs.csv", "hadoop_bugs-combined.csv"),
            "seamonkey": ("SeaMonkey_bugs.csv", "SeaMonkey_bugs-combined.csv")}
NEIGHBOURS = 8
csv.field_size_limit(1 << 24)

# the rule the issue measured against (a ticket joins its single best neighbour's group; groups never merge) and the
# rule as shipped (group-level centroid matching and merges), each with its shipped thresholds
RULES = {"neighbour (before)": GroupingRule(tau_centroid=2.0, tau_centroid_category=2.0, tau_merge=2.0,
                                            storm_burst=0.0),
         "group rule (shipped)": GroupingRule(storm_burst=0.0)}


def _created(s: str) -> float:
    try:
        return datetime.fromisoformat(s.strip()).timestamp()  # SeaMonkey: 2020-01-02 17:14:21+00:00
    except ValueError:
        pass
    for fmt in ("%d/%b/%y %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
        try:
            return datetime.strptime(s.strip(), fmt).timestamp()
        except ValueError:
            continue
    return 0.0


def load(project: str) -> tuple[list[str], list[str], list[float], set[tuple[int, int]]]:
    bugs_file, pairs_file = PROJECTS[project]
    ids, texts, created = [], [], []
    with (DATA / project / bugs_file).open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            ids.append(r["Issue id"])
            texts.append((r["Summary"] or "").strip() + ". " + (r["Description"] or "").strip()[:300])
            created.append(_created(r.get("Created") or ""))
    pos = {i: k for k, i in enumerate(ids)}
    dups = set()
    with (DATA / project / pairs_file).open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            a = r["Issue id"].strip()
            for d in r["Duplicate id"].split(","):
                d = d.strip()
                if a in pos and d in pos and a != d:
                    dups.add(tuple(sorted((pos[a], pos[d]))))
    return ids, texts, created, dups


def group_all(X: np.ndarray, order: np.ndarray, rule: GroupingRule, one_category: bool = False) -> np.ndarray:
    """Each report's final group (index of the group's first report), replaying in `order`; `one_category`: every
    report gets the same category (as if a classifier put them all in one), else each its own (no evidence)."""
    g = Grouper(rule, incident_k=10)
    seen: list[int] = []
    for step, i in enumerate(order):
        nbrs: list[tuple[str, float]] = []
        if seen:
            prev = np.array(seen)
            sims = X[prev] @ X[i]
            top = np.argsort(-sims)[:NEIGHBOURS]
            nbrs = [(str(prev[j]), float(sims[j])) for j in top]
        cat = "bug" if one_category else f"c{i}"
        g.assign(str(i), X[i].astype(np.float64), cat, [(cat, 1.0)], float(step), nbrs)
        seen.append(int(i))
    return np.array([int(g.group_of_ticket(str(i))) for i in range(len(X))])


def score(groups: np.ndarray, dups: set[tuple[int, int]]) -> dict:
    found = int(sum(groups[a] == groups[b] for a, b in dups))
    _, sizes = np.unique(groups, return_counts=True)
    co = int((sizes * (sizes - 1) // 2).sum())
    return {"dup_pairs_in_one_group": round(found / len(dups), 4), "dup_pairs_found": int(found),
            "co_grouped_pairs": co, "precision_lower_bound": round(found / co, 4) if co else None,
            "groups_of_2_plus": int((sizes >= 2).sum()), "largest_group": int(sizes.max())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=str(ROOT / "bench" / "out" / "dup-reports.json"))
    args = p.parse_args()
    from routing_engine.models.minilm import Embedder

    emb = Embedder()  # PyTorch fp32 MiniLM, as bench/measure_tau.py
    out: dict = {"embedder": "MiniLM fp32", "neighbours": NEIGHBOURS, "projects": {}}
    for project in PROJECTS:
        t0 = time.perf_counter()
        ids, texts, created, dups = load(project)
        print(f"{project}: {len(ids)} reports, {len(dups)} labelled duplicate pairs; embedding...", flush=True)
        X = emb.encode(texts)
        order = np.argsort(np.array(created), kind="stable")
        res = {"reports": len(ids), "dup_pairs": len(dups),
               "median_dup_cosine": round(float(np.median([X[a] @ X[b] for a, b in dups])), 4), "rules": {}}
        for evidence in ("no category", "one category"):
            for name, rule in RULES.items():
                key = f"{name}, {evidence}"
                res["rules"][key] = score(group_all(X, order, rule, evidence == "one category"), dups)
                print(f"  {key:36s} {res['rules'][key]}", flush=True)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        out["projects"][project] = res
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
