#!/usr/bin/env python
"""The fast path's LightGBM part: what it costs per ticket and what its trees are worth, on the trained model.

For the latest model in ROUTING_MODELS_DIR (trained on first use), on the held-out rows its training left out
(the same stratified split `train` made, embedded with the pipeline's embedder):

- the pooled fast-path accuracy (LightGBM + logistic regression + n-gram model, the pooling weights chosen on
  that holdout as `train` chooses them) when LightGBM keeps only its first N boosting rounds, for several N —
  the first N rounds of a model are exactly the model a run capped at N rounds would train (same seed, same
  bagging draws), so this is the accuracy of a smaller model;
- ms per ticket of `booster.predict` on batches of 64, by rounds and OpenMP threads (0 = LightGBM's default).

    python bench/lgbm_speed.py                  # bench/out/lgbm-speed.json
    python bench/lgbm_speed.py --cv 5 --cv-rounds 400,150,100   # ... and K-fold CV of models capped at N rounds

With --cv, the whole training file is split in K folds; on each, the fast path is trained on the other folds
exactly as `train` trains it (its own 10% holdout for early stopping, pooling weights, temperature) with
num_boost_round capped at each N, and its pooled accuracy scored on the held-out fold (paired: the same folds
and vectors for every N).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "lgbm-speed.json"
BATCH = 64


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", default="all,300,250,200,150,120,100,80,60",
                    help="boosting rounds to keep (comma-separated; 'all' = the model's best iteration)")
    ap.add_argument("--threads", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes over the holdout per setting")
    ap.add_argument("--json", default=str(OUT))
    ap.add_argument("--cv", type=int, default=0, help="K-fold CV of capped models (0: off)")
    ap.add_argument("--cv-rounds", default="400,150,100", help="num_boost_round caps to cross-validate")
    ap.add_argument("--cv-seed", type=int, default=0, help="seed of the fold assignment")
    args = ap.parse_args(argv)

    from routing_engine.config import Settings
    from routing_engine.models.calibration import pool
    from routing_engine.models.classifier import load_latest
    from routing_engine.models.data import read_labelled, stratified_split
    from routing_engine.models.embedder import pipeline_embedder
    from routing_engine.models.lexical import DEFAULT_WEIGHT as LEX_DEFAULT
    from routing_engine.models.lexical import WEIGHTS as LEX_WEIGHTS
    from routing_engine.models.training import LINEAR_WEIGHTS
    from routing_engine.service import ensure_model

    settings = Settings.from_env()
    ensure_model(settings)
    clf = load_latest(settings.models_path)
    meta = clf.meta
    texts, labels = read_labelled(meta["training_data"])
    index = {lab: i for i, lab in enumerate(clf.labels)}
    y = np.array([index[lab] for lab in labels])
    _, ho = stratified_split(y, float(meta["holdout"]), int(meta["seed"]))
    ho_texts = [texts[i] for i in ho]
    embedder = pipeline_embedder(settings.embedder, settings.models_path, min_cosine=settings.embedder_min_cosine)
    X = np.concatenate([embedder.encode(ho_texts[i:i + 256]) for i in range(0, len(ho), 256)]).astype(np.float32)
    yh = y[ho]
    lin = X @ clf.linear[0] + clf.linear[1]
    lex = clf.lexical.logits(ho_texts) if clf.lexical is not None else None
    best = int(meta.get("best_iteration") or clf.booster.current_iteration())
    n_classes = len(clf.labels)

    def pooled(raw, lw=None, xw=None) -> tuple[float, float, float]:
        """Accuracy with the weights chosen on these rows as `train` does (or the given ones)."""
        if lw is None:
            scores = {w: float((pool(raw, lin, w).argmax(1) == yh).mean()) for w in LINEAR_WEIGHTS}
            lw = max(LINEAR_WEIGHTS, key=lambda w: (scores[w], -abs(w - 0.5)))
        z = pool(raw, lin, lw)
        if lex is not None:
            if xw is None:
                scores = {a: float((pool(z, lex, a).argmax(1) == yh).mean()) for a in LEX_WEIGHTS}
                xw = max(LEX_WEIGHTS, key=lambda a: (scores[a], -abs(a - LEX_DEFAULT)))
            if xw > 0:
                z = pool(z, lex, xw)
        return float((z.argmax(1) == yh).mean()), lw, xw or 0.0

    report = {"model": clf.version, "best_iteration": best, "trees": clf.booster.num_trees(), "classes": n_classes,
              "holdout_rows": int(len(ho)), "model_weights": {"linear": meta.get("linear_weight"),
                                                               "lexical": meta.get("lexical_weight")},
              "linear_alone": round(float((lin.argmax(1) == yh).mean()), 4), "rounds": {}}
    rounds = [best if r == "all" else int(r) for r in args.rounds.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    batches = [X[i:i + BATCH] for i in range(0, len(X) - BATCH + 1, BATCH)]
    for k in rounds:
        raw = np.asarray(clf.booster.predict(X, num_iteration=k, raw_score=True)).reshape(len(X), n_classes)
        acc, lw, xw = pooled(raw)
        acc_fixed, _, _ = pooled(raw, meta.get("linear_weight"), meta.get("lexical_weight"))
        row = {"pooled_accuracy": round(acc, 4), "weights": [lw, xw],
               "pooled_accuracy_model_weights": round(acc_fixed, 4),
               "lightgbm_accuracy": round(float((raw.argmax(1) == yh).mean()), 4), "ms_per_ticket": {}}
        for nt in threads:
            clf.booster.predict(batches[0], num_iteration=k, raw_score=True, num_threads=nt)  # warm
            runs = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                for b in batches:
                    clf.booster.predict(b, num_iteration=k, raw_score=True, num_threads=nt)
                runs.append((time.perf_counter() - t) * 1000 / (len(batches) * BATCH))
            row["ms_per_ticket"][str(nt)] = round(float(np.median(runs)), 4)
        report["rounds"][str(k)] = row
        print(f"rounds {k:>4}: pooled accuracy {acc:.4f} (weights {lw}/{xw}; with the model's weights "
              f"{acc_fixed:.4f}), LightGBM alone {row['lightgbm_accuracy']:.4f}; ms/ticket by threads "
              f"{row['ms_per_ticket']}", flush=True)
    if args.cv:
        report["cv"] = cross_validate(texts, labels, embedder, args.cv, [int(r) for r in args.cv_rounds.split(",")],
                                      args.cv_seed)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def cross_validate(texts: list[str], labels: list[str], embedder, k: int, caps: list[int], seed: int = 0) -> dict:
    from routing_engine.models.training import train_on_embeddings

    X = np.concatenate([embedder.encode(texts[i:i + 256]) for i in range(0, len(texts), 256)]).astype(np.float32)
    names = sorted(set(labels))
    y = np.array([names.index(x) for x in labels])
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=int)
    for c in range(len(names)):  # stratified folds
        rows = rng.permutation(np.flatnonzero(y == c))
        fold[rows] = np.arange(len(rows)) % k
    out: dict = {"folds": k, "seed": seed, "rows": int(len(y)), "by_cap": {}}
    correct = {cap: np.zeros(len(y), dtype=bool) for cap in caps}
    for f in range(k):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        for cap in caps:
            t = time.perf_counter()
            clf = train_on_embeddings(X[tr], [labels[i] for i in tr], embedder_name=getattr(embedder, "name", ""),
                                      progress=False, texts=[texts[i] for i in tr],
                                      params={"num_boost_round": cap})
            fit_s = time.perf_counter() - t
            proba = clf.predict_proba(X[te], [texts[i] for i in te])
            pred = np.array([clf.labels[j] for j in proba.argmax(1)])
            correct[cap][te] = pred == np.array([labels[i] for i in te])
            row = out["by_cap"].setdefault(str(cap), {"fold_accuracy": [], "best_iteration": [], "fit_s": []})
            row["fold_accuracy"].append(round(float(correct[cap][te].mean()), 4))
            row["best_iteration"].append(int(clf.meta["best_iteration"]))
            row["fit_s"].append(round(fit_s, 1))
            print(f"  fold {f} cap {cap}: accuracy {row['fold_accuracy'][-1]:.4f}, best iteration "
                  f"{row['best_iteration'][-1]}, fit {fit_s:.0f} s", flush=True)
    base = caps[0]
    for cap in caps:
        row = out["by_cap"][str(cap)]
        row["accuracy"] = round(float(correct[cap].mean()), 4)
        # paired against the first cap: tickets it gets right that the first gets wrong, and the reverse
        row["gained_vs_first"] = int((correct[cap] & ~correct[base]).sum())
        row["lost_vs_first"] = int((~correct[cap] & correct[base]).sum())
        print(f"cap {cap}: {k}-fold pooled accuracy {row['accuracy']:.4f} (vs cap {base}: +{row['gained_vs_first']} "
              f"/ -{row['lost_vs_first']} tickets)", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
