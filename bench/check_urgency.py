"""Checks urgency v1 against human urgency labels: AUROC of S for urgent-vs-rest on Endava and Hadoop."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from routing_engine.domain.urgency import score  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
csv.field_size_limit(1 << 24)


def _scores(rows, subject_col, body_col):
    # No classifier here: these tickets are not banking, so the team prior is switched off.
    return np.array([score(r[subject_col], r[body_col], "general", 0.0)[0] for r in rows])


def endava():
    with (DATA / "support_tickets_endava" / "all_tickets.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    s = _scores(rows, "title", "body")
    u = np.array([int(r["urgency"]) for r in rows])
    # Codes are anonymised; 3 is 89% of this slice, so we read low codes as more urgent (P0/P1 style).
    y = (u <= 1).astype(int)
    print(f"endava  n={len(rows)}  "
          f"urgency counts={ {int(k): int(v) for k, v in zip(*np.unique(u, return_counts=True))} }")
    print(f"  AUROC S, urgency<=1 vs rest: {roc_auc_score(y, s):.3f}  (positives {y.sum()})")
    print(f"  AUROC S, urgency<=2 vs 3:    {roc_auc_score((u <= 2).astype(int), s):.3f}")
    for k in sorted(set(u)):
        print(f"  mean S at urgency {k}: {s[u == k].mean():.3f}")
    return roc_auc_score(y, s)


def hadoop():
    with (DATA / "gitbugs_duplicates" / "hadoop" / "hadoop_bugs.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    s = _scores(rows, "Summary", "Description")
    y = np.array([r["Priority"] in ("Blocker", "Critical") for r in rows]).astype(int)
    print(f"hadoop  n={len(rows)}  Blocker/Critical={y.sum()}")
    print(f"  AUROC S, Blocker/Critical vs rest: {roc_auc_score(y, s):.3f}")
    for p in ("Blocker", "Critical", "Major", "Minor", "Trivial"):
        m = np.array([r["Priority"] == p for r in rows])
        print(f"  mean S {p:8s}: {s[m].mean():.3f}  (n={m.sum()})")
    return roc_auc_score(y, s)


if __name__ == "__main__":
    endava()
    hadoop()
