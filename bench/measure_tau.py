"""Measures the cosine threshold tau for near-duplicate grouping with the MiniLM embedder on public data."""

from __future__ import annotations

import csv
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from routing_engine.models.minilm import Embedder  # noqa: E402
from routing_engine.resources import data_dir  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "bench" / "out" / "tau.json"
TAUS = [round(0.5 + 0.05 * i, 2) for i in range(10)]
csv.field_size_limit(1 << 24)


def pair_table(X: np.ndarray, groups: np.ndarray, taus: list[float] = TAUS) -> dict:
    """Precision/recall of 'cosine >= tau' over every unordered pair, same group = positive."""
    n = len(X)
    iu = np.triu_indices(n, k=1)
    sims = (X @ X.T)[iu]
    same = groups[iu[0]] == groups[iu[1]]
    pos, neg = sims[same], sims[~same]
    rows = []
    for tau in taus:
        tp, fp = int((pos >= tau).sum()), int((neg >= tau).sum())
        rows.append({
            "tau": tau,
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / len(pos), 4),
            "pairs_flagged": tp + fp,
        })
    return {
        "n_texts": n, "n_pos_pairs": int(len(pos)), "n_neg_pairs": int(len(neg)),
        "median_pos": round(float(np.median(pos)), 4), "median_neg": round(float(np.median(neg)), 4),
        "rows": rows,
    }


def clinc150(emb: Embedder) -> dict:
    data = json.loads((DATA / "clinc150" / "data_full.json").read_text())["val"]
    texts, intents = zip(*data)
    X = emb.encode(list(texts))
    return pair_table(X, np.array(intents))


def banking77(emb: Embedder, per_intent: int = 40, seed: int = 0) -> dict:
    # 40 per intent keeps the pair matrix and the embedding time small; same-intent density is unchanged.
    by = defaultdict(list)
    with (data_dir() / "banking77" / "train.csv").open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            by[r["category"]].append(r["text"])
    rng = random.Random(seed)
    texts, labels = [], []
    for cat in sorted(by):
        for t in rng.sample(by[cat], min(per_intent, len(by[cat]))):
            texts.append(t)
            labels.append(cat)
    X = emb.encode(texts)
    out = pair_table(X, np.array(labels))
    out["sample"] = f"{per_intent} per intent, seed {seed}"
    return out


def _read_bugs(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as f:
        return {
            r["Issue id"]: (r["Summary"] or "").strip() + ". " + (r["Description"] or "").strip()[:300]
            for r in csv.DictReader(f)
        }


def gitbugs(emb: Embedder, project: str, bugs_file: str, pairs_file: str, n_random: int = 20000, seed: int = 0) -> dict:
    base = DATA / "gitbugs_duplicates" / project
    bugs = _read_bugs(base / bugs_file)
    ids = sorted(bugs)
    pos_of = {i: k for k, i in enumerate(ids)}
    dups = set()
    with (base / pairs_file).open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            a, b = r["Issue id"].strip(), r["Duplicate id"].strip()
            for d in b.split(","):
                d = d.strip()
                if a in pos_of and d in pos_of and a != d:
                    dups.add(tuple(sorted((pos_of[a], pos_of[d]))))
    X = emb.encode([bugs[i] for i in ids])
    dup_sims = np.array([float(X[a] @ X[b]) for a, b in sorted(dups)])

    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(ids), n_random * 2)
    b = rng.integers(0, len(ids), n_random * 2)
    keep = [(x, y) for x, y in zip(a, b) if x != y and tuple(sorted((x, y))) not in dups][:n_random]
    rand_sims = np.array([float(X[x] @ X[y]) for x, y in keep])

    # Exact all-pairs counts too: 66 or 97 duplicates among millions of pairs is the real prevalence.
    n = len(ids)
    iu = np.triu_indices(n, k=1)
    all_sims = (X @ X.T)[iu]
    rows = []
    for tau in TAUS:
        tp = int((dup_sims >= tau).sum())
        flagged = int((all_sims >= tau).sum())
        fpr = float((rand_sims >= tau).mean())
        rows.append({
            "tau": tau,
            "recall": round(tp / len(dup_sims), 4),
            "fpr_random_pairs": round(fpr, 5),
            # Upper bound on wrong merges: unlabelled pairs above tau may be unlabelled duplicates.
            "precision_all_pairs": round(tp / flagged, 4) if flagged else None,
            # What precision would be if 1 pair in 2 were a duplicate (tickets in a real flood).
            "precision_balanced": round((tp / len(dup_sims)) / ((tp / len(dup_sims)) + fpr), 4) if tp or fpr else None,
            "pairs_flagged": flagged,
        })
    return {
        "n_reports": n, "n_dup_pairs": len(dup_sims), "n_random_pairs": len(rand_sims),
        "n_all_pairs": int(len(all_sims)),
        "median_dup": round(float(np.median(dup_sims)), 4), "median_random": round(float(np.median(rand_sims)), 4),
        "rows": rows,
    }


def print_table(name: str, res: dict, cols: list[str]) -> None:
    meta = {k: v for k, v in res.items() if k != "rows"}
    print(f"\n== {name}  {meta}")
    print("  tau  " + "  ".join(f"{c:>20s}" for c in cols))
    for r in res["rows"]:
        print(f"  {r['tau']:.2f} " + "  ".join(f"{'' if r[c] is None else r[c]:>20}" for c in cols))


def main() -> None:
    t0 = time.perf_counter()
    emb = Embedder()
    results = {"embedder": emb.name, "taus": TAUS}
    results["clinc150_val"] = clinc150(emb)
    print_table("CLINC150 val, same intent = positive", results["clinc150_val"],
                ["precision", "recall", "pairs_flagged"])
    results["banking77_train"] = banking77(emb)
    print_table("BANKING77 train sample, same intent = positive", results["banking77_train"],
                ["precision", "recall", "pairs_flagged"])
    cols = ["recall", "fpr_random_pairs", "precision_all_pairs", "precision_balanced"]
    results["gitbugs_hadoop"] = gitbugs(emb, "hadoop", "hadoop_bugs.csv", "hadoop_bugs-combined.csv")
    print_table("GitBugs hadoop duplicates", results["gitbugs_hadoop"], cols)
    results["gitbugs_seamonkey"] = gitbugs(emb, "seamonkey", "SeaMonkey_bugs.csv", "SeaMonkey_bugs-combined.csv")
    print_table("GitBugs seamonkey duplicates", results["gitbugs_seamonkey"], cols)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {OUT} in {results['seconds']} s")


if __name__ == "__main__":
    main()
