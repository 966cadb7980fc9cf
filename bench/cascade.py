"""Cascade benchmark on real data: fast path alone, fallback alone, the cascade at several escalation rates,
tickets/s of each path in the same run, calibration, and abstain on CLINC150 / BANKING77-OOS.

    python bench/cascade.py            # 5-fold CV fast path, fallback on fold 0 (2 epochs), OOS sets
    python bench/cascade.py --quick    # 2 folds, fallback on 2,000 rows for 1 epoch, OOS subsampled

Writes bench/out/cascade.json and prints tables. Embeddings are cached outside the repo
(~/.cache/routing-engine/embeddings, or $ROUTING_EMB_CACHE) so reruns skip MiniLM.
Only BANKING77 *train* is used (the official test split is withheld); the fallback and the cascade are
measured on fold 0 of the same CV (held-out rows neither model saw).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from routing_engine.models.calibration import ece  # noqa: E402
from routing_engine.models.cascade import policy_for_precision  # noqa: E402
from routing_engine.models.data import read_labelled  # noqa: E402
from routing_engine.models.data import stratified_split as _split  # noqa: E402
from routing_engine.models.embedder import shared_embedder  # noqa: E402
from routing_engine.models.training import train_on_embeddings  # noqa: E402
from routing_engine.resources import data_dir  # noqa: E402

DATA = REPO.parent / "shared" / "datasets"  # CLINC150 and BANKING77-OOS (evaluation only)
BANKING77 = data_dir() / "banking77" / "train.csv"  # shipped with the package
OUT = REPO / "bench" / "out" / "cascade.json"
CACHE = Path(os.environ.get("ROUTING_EMB_CACHE", Path.home() / ".cache" / "routing-engine" / "embeddings"))
RATES = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.50, 1.0)


def embed(texts: list[str], embedder) -> np.ndarray:
    """MiniLM embeddings, cached by content hash (derived data; stays outside the repo)."""
    h = hashlib.sha256(embedder.name.encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    path = CACHE / f"{embedder.name}-{h.hexdigest()[:24]}.npy"
    if path.exists():
        return np.load(path)
    from routing_engine.models.embedder import embed_texts

    X = embed_texts(texts, embedder, progress=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, X)
    return X


def rate(n: int, seconds: float) -> float:
    return round(n / max(seconds, 1e-9), 1)


def fast_cv(X, y, labels, texts, folds: int, seed: int = 0):
    from sklearn.model_selection import StratifiedKFold

    rows, fold0 = [], None
    for k, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y)):
        t0 = time.perf_counter()
        clf = train_on_embeddings(X[tr], [labels[i] for i in tr], embedder_name="all-MiniLM-L6-v2", progress=False,
                                  seed=seed, texts=[texts[i] for i in tr])
        te_texts = [texts[i] for i in te]
        fit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        p_cal = clf.predict_proba(X[te], te_texts)
        clf_s = time.perf_counter() - t1
        p_raw = clf.predict_proba(X[te], te_texts, calibrated=False)
        lex = clf.lexical.logits(te_texts) if clf.lexical is not None else None
        names = clf.labels
        yt = np.array([names.index(labels[i]) for i in te])
        ok = p_cal.argmax(1) == yt
        lin = X[te] @ clf.linear[0] + clf.linear[1]
        gbm = clf.booster.predict(X[te], num_iteration=clf.meta["best_iteration"], raw_score=True)
        row = {"fold": k, "accuracy": round(float(ok.mean()), 4),
               "lightgbm_alone_accuracy": round(float((np.asarray(gbm).reshape(len(te), -1).argmax(1) == yt).mean()),
                                                4),
               "linear_alone_accuracy": round(float((lin.argmax(1) == yt).mean()), 4),
               "lexical_alone_accuracy": None if lex is None else round(float((lex.argmax(1) == yt).mean()), 4),
               "linear_weight": clf.meta["linear_weight"], "lexical_weight": clf.meta["lexical_weight"],
               "ece_uncalibrated": round(ece(p_raw.max(1), ok), 4), "ece_calibrated": round(ece(p_cal.max(1), ok), 4),
               "temperature": round(clf.temperature, 3), "train_seconds": round(fit_s, 1),
               "classify_texts_per_s": rate(len(te), clf_s), "best_iteration": clf.meta["best_iteration"]}
        print(f"  fold {k}: acc {row['accuracy']:.4f} (LightGBM alone {row['lightgbm_alone_accuracy']:.4f}, LR alone "
              f"{row['linear_alone_accuracy']:.4f}, w={row['linear_weight']}, "
              f"TF-IDF alone {row['lexical_alone_accuracy']}, "
              f"w={row['lexical_weight']})  "
              f"ECE {row['ece_uncalibrated']:.3f} -> {row['ece_calibrated']:.3f}  train {fit_s:.0f}s", flush=True)
        rows.append(row)
        if k == 0:
            fold0 = (tr, te, clf, p_cal, yt)
    return rows, fold0


def cascade_table(p_fast, p_slow, yt, fast_tps, slow_tps, blend):
    conf = p_fast.max(1)
    fast_ok = p_fast.argmax(1) == yt
    mix = blend * p_fast + (1 - blend) * p_slow
    out = []
    for r in RATES:
        n_esc = int(round(r * len(conf)))
        esc = np.zeros(len(conf), dtype=bool)
        esc[np.argsort(conf, kind="stable")[:n_esc]] = True
        pure = np.where(esc, p_slow.argmax(1) == yt, fast_ok)
        mixed = np.where(esc, mix.argmax(1) == yt, fast_ok)
        tps = 1.0 / (1.0 / fast_tps + r / slow_tps)  # every ticket pays the fast path, escalated ones also the slow
        out.append({"escalation_rate": r, "accuracy": round(float(pure.mean()), 4),
                    "accuracy_blend": round(float(mixed.mean()), 4), "tickets_per_s": round(tps, 1)})
    return out


def oos_eval(name, train, tune, tests, embedder, target, quick, seed=0):
    """Train the fast path on `train`, choose abstain thresholds on `tune` (in-scope rows), report on `tests`."""
    tx, ty = train
    if quick and len(tx) > 4000:
        rng = np.random.default_rng(seed)
        keep = rng.choice(len(tx), 4000, replace=False)
        tx, ty = [tx[i] for i in keep], [ty[i] for i in keep]
    t0 = time.perf_counter()
    clf = train_on_embeddings(embed(tx, embedder), ty, embedder_name=embedder.name, progress=False, seed=seed,
                              texts=tx)
    fit_s = time.perf_counter() - t0
    vx, vy = tune
    pv = clf.predict_proba(embed(vx, embedder), vx)
    sims_v = clf.ood_similarity(embed(vx, embedder))
    lab = np.array(clf.labels)
    pol = policy_for_precision(pv.max(1), lab[pv.argmax(1)] == np.array(vy), target,
                               ood_similarities=sims_v, escalation_budget=0.0)
    res = {"train_rows": len(tx), "train_seconds": round(fit_s, 1), "abstain_below": round(pol.abstain_below, 4),
           "ood_below": round(pol.ood_below, 4), "target_precision": target, "sets": {}, "sweep": []}
    scored = {}
    for part, (x, yl, in_scope) in tests.items():
        e = embed(x, embedder)
        p, s = clf.predict_proba(e, x), clf.ood_similarity(e)
        scored[part] = (p, s, np.array(yl), in_scope)
    def metrics(abstain_below, ood_below):
        row = {}
        for part, (p, s, yl, in_scope) in scored.items():
            rejected = (p.max(1) < abstain_below) | (s < ood_below)
            if in_scope:
                row[f"{part}_in_scope_accuracy"] = round(float(((lab[p.argmax(1)] == yl) & ~rejected).mean()), 4)
            else:
                row[f"{part}_oos_recall"] = round(float(rejected.mean()), 4)
        return row
    res["sets"] = {**metrics(pol.abstain_below, pol.ood_below),
                   **{f"conf_only_{k}": v for k, v in metrics(pol.abstain_below, 0.0).items()}}
    for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        res["sweep"].append({"abstain_below": t, **metrics(t, pol.ood_below)})
    print(f"  {name}: thresholds conf < {pol.abstain_below:.3f}, sim < {pol.ood_below:.3f} -> {res['sets']}",
          flush=True)
    return res


def load_clinc():
    d = json.loads((DATA / "clinc150" / "data_full.json").read_text())
    split = lambda k: ([t for t, _ in d[k]], [lab for _, lab in d[k]])  # noqa: E731
    tr, va, te, oos = split("train"), split("val"), split("test"), split("oos_test")
    return tr, va, {"test": (*te, True), "oos_test": (*oos, False)}


def load_b77oos():
    root = DATA / "banking77_oos"
    part = lambda p: ((root / p / "seq.in").read_text().splitlines(), (root / p / "label").read_text().splitlines())  # noqa: E731
    tr, va = part("train"), part("valid")
    return tr, va, {"valid": (*va, True), "id_oos_valid": (*part("id-oos/valid"), False),
                    "ood_oos_valid": (*part("ood-oos/valid"), False)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 folds, fallback on 2,000 rows x 1 epoch, OOS subsampled")
    ap.add_argument("--folds", type=int, default=0, help="CV folds for the fast path (default 5; 2 with --quick)")
    ap.add_argument("--epochs", type=float, default=0, help="fallback epochs (default 2; 1 with --quick)")
    ap.add_argument("--fallback-rows", type=int, default=0, help="cap fallback training rows (default all; 2000 quick)")
    ap.add_argument("--target-precision", type=float, default=0.9)
    ap.add_argument("--skip-oos", action="store_true")
    ap.add_argument("--skip-fallback", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    folds = a.folds or (2 if a.quick else 5)
    epochs = a.epochs or (1.0 if a.quick else 2.0)
    fb_rows = a.fallback_rows or (2000 if a.quick else 0)
    load = os.getloadavg()[0]
    report: dict = {"quick": a.quick, "cores": os.cpu_count(), "loadavg_at_start": round(load, 2),
                    "note": "timings on a shared machine; compare within one run only"}

    import torch

    torch.set_num_threads(1)  # on 2 shared cores, spinning torch threads made everything ~20x slower
    embedder = shared_embedder()
    texts, labels = read_labelled(BANKING77)
    names = sorted(set(labels))
    y = np.array([names.index(lab) for lab in labels])
    t0 = time.perf_counter()
    X = embed(texts, embedder)
    # Throughput of the embedder itself, measured fresh (the cache above may have skipped it).
    probe = texts[:512]
    t0 = time.perf_counter()
    embedder.encode(probe)
    embed_tps = rate(len(probe), time.perf_counter() - t0)
    print(f"BANKING77 train: {len(texts)} rows, {len(names)} classes; MiniLM embeds {embed_tps}/s "
          f"(load avg {load:.1f} on {os.cpu_count()} cores)", flush=True)

    print(f"fast path, {folds}-fold CV (LightGBM pooled with LR on the embedding and a TF-IDF LR on the text, "
          "temperature-calibrated):", flush=True)
    rows, (tr, te, clf, p_fast, yt) = fast_cv(X, y, labels, texts, folds)
    accs = [r["accuracy"] for r in rows]
    clf_tps = float(np.median([r["classify_texts_per_s"] for r in rows]))
    fast_tps = 1.0 / (1.0 / embed_tps + 1.0 / clf_tps)
    report["fast"] = {"folds": rows, "accuracy_mean": round(float(np.mean(accs)), 4),
                      "accuracy_std": round(float(np.std(accs)), 4),
                      "train_seconds_mean": round(float(np.mean([r["train_seconds"] for r in rows])), 1),
                      "ece_uncalibrated_mean": round(float(np.mean([r["ece_uncalibrated"] for r in rows])), 4),
                      "ece_calibrated_mean": round(float(np.mean([r["ece_calibrated"] for r in rows])), 4),
                      "embed_texts_per_s": embed_tps, "classify_texts_per_s": clf_tps,
                      "tickets_per_s": round(fast_tps, 1)}
    print(f"  mean accuracy {np.mean(accs):.4f} ± {np.std(accs):.4f}; fast path {fast_tps:.0f} tickets/s "
          f"(embed {embed_tps}/s, LightGBM {clf_tps}/s)", flush=True)

    if not a.skip_fallback:
        from routing_engine.models.finetune import train_fallback

        ftr = tr
        if fb_rows and len(tr) > fb_rows:
            ftr = np.sort(np.random.default_rng(0).choice(tr, fb_rows, replace=False))
        print(f"fallback: fine-tuning MiniLM on {len(ftr)} rows (fold 0 train), {epochs} epoch(s):", flush=True)
        t0 = time.perf_counter()
        fb = train_fallback([texts[i] for i in ftr], [labels[i] for i in ftr], epochs=epochs, progress=True,
                            label_names=names, seed=0)
        fb_fit = time.perf_counter() - t0
        te_texts = [texts[i] for i in te]
        t0 = time.perf_counter()
        p_slow = fb.predict_proba(te_texts)
        fb_tps = rate(len(te), time.perf_counter() - t0)
        slow_ok = p_slow.argmax(1) == yt
        # Blend weight chosen on the fallback's own holdout inside fold-0 train, never on the test fold.
        blend = 0.0
        if len(ftr) == len(tr):
            ho = tr[_split(y[tr], 0.1, 0)[1]]
            pf_h = clf.predict_proba(X[ho], [texts[i] for i in ho])
            ps_h = fb.predict_proba([texts[i] for i in ho])
            conf_h = pf_h.max(1)
            cut = np.quantile(conf_h, 0.25)
            best = -1.0
            for w in (0.0, 0.25, 0.5, 0.75):
                mix = w * pf_h + (1 - w) * ps_h
                acc = float(np.where(conf_h < cut, mix.argmax(1) == y[ho], pf_h.argmax(1) == y[ho]).mean())
                if acc > best + 1e-9:
                    best, blend = acc, w
        else:
            blend = 0.5  # quick mode: the fallback saw a subsample, no shared holdout to choose on
        table = cascade_table(p_fast, p_slow, yt, fast_tps, fb_tps, blend)
        report["fallback"] = {"train_rows": int(len(ftr)), "epochs": epochs, "train_seconds": round(fb_fit, 1),
                              "accuracy_fold0": round(float(slow_ok.mean()), 4), "texts_per_s": fb_tps,
                              "ece_calibrated": round(ece(p_slow.max(1), slow_ok), 4),
                              "holdout_metrics": fb.metrics, "blend_weight": blend,
                              # rows both models get wrong: no cascade or blend of these two can fix them
                              "both_wrong_fold0": int(((p_fast.argmax(1) != yt) & ~slow_ok).sum()),
                              "oracle_accuracy_fold0": round(float(1 - ((p_fast.argmax(1) != yt) & ~slow_ok).mean()),
                                                             4)}
        report["cascade"] = table
        print(f"  fallback alone {slow_ok.mean():.4f} on fold 0 ({len(te)} rows), {fb_tps} texts/s, "
              f"trained in {fb_fit:.0f}s; fast path on fold 0 {(p_fast.argmax(1) == yt).mean():.4f}", flush=True)
        print(f"  both wrong on {report['fallback']['both_wrong_fold0']} rows: no cascade of the two can pass "
              f"{report['fallback']['oracle_accuracy_fold0']:.4f}", flush=True)
        print(f"\n  escalation  cascade acc  cascade+blend(w={blend})  tickets/s", flush=True)
        for r in table:
            print(f"  {r['escalation_rate']:>9.0%}   {r['accuracy']:.4f}       {r['accuracy_blend']:.4f}"
                  f"                 {r['tickets_per_s']:.0f}", flush=True)

    if not a.skip_oos:
        print("\nabstain / out-of-scope (thresholds from the target precision on the tuning split):", flush=True)
        tr_, va_, tests = load_clinc()
        report["clinc150"] = oos_eval("CLINC150 (train; tune val; report test/oos_test)", tr_, va_, tests,
                                      embedder, a.target_precision, a.quick)
        tr_, va_, tests = load_b77oos()
        report["banking77_oos"] = oos_eval("BANKING77-OOS (train; tune valid; report valid parts)", tr_, va_, tests,
                                           embedder, a.target_precision, a.quick)

    report["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
