"""Cascade benchmark on real data: 5-fold CV of the whole decision path (fast path, fine-tuned fallback, the
cascade decision chosen on each fold's own holdout, abstain), tickets/s of each path in the same run,
calibration, the "both wrong" ceiling, and abstain on CLINC150 / BANKING77-OOS.

    python bench/cascade.py                   # 5 folds x (fast path + 5-epoch fallback): ~2 h on 2 CPU cores
    python bench/cascade.py --device cuda     # the same on a GPU (minutes)
    python bench/cascade.py --quick           # 2 folds, fallback on 2,000 rows for 1 epoch, OOS subsampled
    python bench/cascade.py --resume          # continue a run that stopped: folds already in --out are kept

In each fold both models train on the other 4/5 exactly as `routing-engine train` does (10% holdout inside it
for early stopping, temperatures and the cascade decision), and the held-out fifth is scored with
`evaluate`, the same code as `routing-engine eval`. Writes bench/out/cascade.json after every fold.
Embeddings are cached outside the repo (~/.cache/routing-engine/embeddings, or $ROUTING_EMB_CACHE).
Only BANKING77 *train* is used (the official test split is withheld).
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
from routing_engine.models.evaluation import evaluate  # noqa: E402
from routing_engine.models.minilm import Embedder  # noqa: E402
from routing_engine.models.training import train_on_embeddings, tune_policy  # noqa: E402
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


def fast_fold(k, tr, te, X, y, labels, texts, seed: int = 0):
    """Train the fast path on `tr` as `routing-engine train` does and score fold `te`."""
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
           "lightgbm_alone_accuracy": round(float((np.asarray(gbm).reshape(len(te), -1).argmax(1) == yt).mean()), 4),
           "linear_alone_accuracy": round(float((lin.argmax(1) == yt).mean()), 4),
           "lexical_alone_accuracy": None if lex is None else round(float((lex.argmax(1) == yt).mean()), 4),
           "linear_weight": clf.meta["linear_weight"], "lexical_weight": clf.meta["lexical_weight"],
           "ece_uncalibrated": round(ece(p_raw.max(1), ok), 4), "ece_calibrated": round(ece(p_cal.max(1), ok), 4),
           "temperature": round(clf.temperature, 3), "train_seconds": round(fit_s, 1),
           "classify_texts_per_s": rate(len(te), clf_s), "best_iteration": clf.meta["best_iteration"]}
    print(f"  fold {k} fast path: acc {row['accuracy']:.4f} (LightGBM alone {row['lightgbm_alone_accuracy']:.4f}, "
          f"LR alone {row['linear_alone_accuracy']:.4f}, w={row['linear_weight']}, "
          f"TF-IDF alone {row['lexical_alone_accuracy']}, w={row['lexical_weight']})  "
          f"ECE {row['ece_uncalibrated']:.3f} -> {row['ece_calibrated']:.3f}  train {fit_s:.0f}s", flush=True)
    return row, clf, p_cal, yt


def cascade_fold(k, tr, te, labels, texts, clf, p_fast, yt, embedder, a, epochs, fb_rows):
    """Fine-tune the fallback on fold `tr`, choose the cascade decision on its holdout (training.tune_policy),
    then score fold `te` through `evaluate`, the code behind `routing-engine eval`."""
    from routing_engine.models.finetune import train_fallback

    ftr = tr
    if fb_rows and len(tr) > fb_rows:
        ftr = np.sort(np.random.default_rng(0).choice(tr, fb_rows, replace=False))
    print(f"  fold {k} fallback: fine-tuning MiniLM on {len(ftr)} rows, {epochs:g} epoch(s), device "
          f"{a.device}:", flush=True)
    t0 = time.perf_counter()
    fb = train_fallback([texts[i] for i in ftr], [labels[i] for i in ftr], epochs=epochs, progress=not a.no_progress,
                        label_names=clf.labels, seed=0, device=a.device, say=lambda m: print("   ", m, flush=True))
    fb_fit = time.perf_counter() - t0
    tuned = None
    if len(ftr) == len(tr):
        tuned = tune_policy(clf, fb, [texts[i] for i in tr], [labels[i] for i in tr], embedder,
                            target_precision=a.target_precision, escalation_budget=a.escalation_budget)
    if tuned is None:  # quick mode: the fallback saw a subsample, so the two holdouts differ
        policy, search = clf.policy, []
        policy.blend = 0.5
    else:
        policy, search = tuned
    te_texts, te_labels = [texts[i] for i in te], [labels[i] for i in te]
    rep = evaluate(te_texts, te_labels, clf, embedder, fb, policy=policy, fallback_on_all=True)
    t1 = time.perf_counter()
    p_slow = fb.predict_proba(te_texts)
    fb_tps = rate(len(te), time.perf_counter() - t1)
    row = {"fold": k, "train_rows": int(len(ftr)), "epochs": epochs, "train_seconds": round(fb_fit, 1),
           "fallback_metrics": {key: fb.metrics.get(key) for key in (
               "best_epoch", "stopped_early", "history", "device", "precision", "threads", "train_texts_per_s",
               "holdout_accuracy", "holdout_ece")},
           "policy": policy.to_dict(), "policy_search": search,
           "cascade_accuracy": rep["accuracy"], "escalation_rate": rep["escalation_rate"],
           "abstain_rate": rep["abstain_rate"], "kept_accuracy": rep["kept_accuracy"],
           "team_accuracy": rep["team_accuracy"], "macro_f1": rep["macro_f1"],
           "fast_accuracy": rep["fast_accuracy"], "fallback_accuracy": rep["fallback_accuracy"],
           "both_wrong_rate": rep.get("both_wrong_rate"), "ceiling_accuracy": rep.get("ceiling_accuracy"),
           "fallback_texts_per_s": fb_tps,
           "sweep": cascade_table(p_fast, p_slow, yt, policy.blend)}
    print(f"  fold {k} cascade: {row['cascade_accuracy']:.4f} escalating {row['escalation_rate']:.1%} "
          f"(budget {policy.escalation_budget:.2f}, blend {policy.blend:.2f}); fast alone {row['fast_accuracy']:.4f}, "
          f"fallback alone {row['fallback_accuracy']:.4f} (best epoch {fb.metrics.get('best_epoch')}), both wrong "
          f"{row['both_wrong_rate']}; fallback {fb_tps} texts/s; fine-tune {fb_fit:.0f}s", flush=True)
    return row


def cascade_table(p_fast, p_slow, yt, blend):
    """Accuracy when the least confident share r of tickets is escalated: replaced by the fallback's answer, or
    answered by the blend of both models' probabilities."""
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
        out.append({"escalation_rate": r, "accuracy": round(float(pure.mean()), 4),
                    "accuracy_blend": round(float(mixed.mean()), 4)})
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


def mean(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 folds, fallback on 2,000 rows x 1 epoch, OOS subsampled")
    ap.add_argument("--folds", type=int, default=0, help="CV folds (default 5; 2 with --quick)")
    ap.add_argument("--fallback-folds", default="all",
                    help="folds that also fine-tune the fallback and score the cascade: 'all', 'none' or a comma "
                         "list like 0,1 (default all)")
    ap.add_argument("--epochs", type=float, default=0, help="fallback epochs (default 5, as `train`; 1 with --quick)")
    ap.add_argument("--fallback-rows", type=int, default=0, help="cap fallback training rows (default all; 2000 quick)")
    ap.add_argument("--rows", type=int, default=0, help="use a random N rows of the train file (smoke runs only)")
    ap.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"), help="where MiniLM runs and trains")
    ap.add_argument("--target-precision", type=float, default=0.9)
    ap.add_argument("--escalation-budget", type=float, default=0.25, help="ceiling of the escalation budget search")
    ap.add_argument("--skip-oos", action="store_true")
    ap.add_argument("--skip-fallback", action="store_true", help="same as --fallback-folds none")
    ap.add_argument("--resume", action="store_true", help="keep the folds already in --out and run the rest")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars (logs stay readable)")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    folds = a.folds or (2 if a.quick else 5)
    epochs = a.epochs or (1.0 if a.quick else 5.0)
    fb_rows = a.fallback_rows or (2000 if a.quick else 0)
    fb_folds = (set() if a.skip_fallback or a.fallback_folds == "none" else set(range(folds))
                if a.fallback_folds == "all" else {int(x) for x in a.fallback_folds.split(",")})
    out = Path(a.out)
    load = os.getloadavg()[0]
    previous = json.loads(out.read_text()) if a.resume and out.exists() else {}

    import torch

    from routing_engine.models.device import resolve_device

    a.device = resolve_device(a.device)
    if a.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    report: dict = {"quick": a.quick, "cores": os.cpu_count(), "loadavg_at_start": round(load, 2),
                    "device": a.device, "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
                    "torch": torch.__version__, "epochs": epochs, "folds": folds,
                    "note": "timings on a shared machine; compare within one run only"}
    embedder = Embedder(device=a.device)
    texts, labels = read_labelled(BANKING77)
    if a.rows and a.rows < len(texts):
        keep = np.sort(np.random.default_rng(0).choice(len(texts), a.rows, replace=False))
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
        report["rows"] = a.rows
    names = sorted(set(labels))
    y = np.array([names.index(lab) for lab in labels])
    X = embed(texts, embedder)
    # Throughput of the embedder itself, measured fresh (the cache above may have skipped it).
    probe = texts[:512]
    embedder.encode(probe[:64])  # warm-up (CUDA kernels, allocator)
    t0 = time.perf_counter()
    embedder.encode(probe)
    embed_tps = rate(len(probe), time.perf_counter() - t0)
    print(f"BANKING77 train: {len(texts)} rows, {len(names)} classes; MiniLM embeds {embed_tps}/s on {a.device} "
          f"(load avg {load:.1f} on {os.cpu_count()} cores)", flush=True)

    from sklearn.model_selection import StratifiedKFold

    fast_rows = {r["fold"]: r for r in previous.get("fast", {}).get("folds", [])}
    casc_rows = {r["fold"]: r for r in previous.get("cascade_folds", [])}
    if fast_rows or casc_rows:
        print(f"resuming: fast path folds {sorted(fast_rows)}, cascade folds {sorted(casc_rows)} kept", flush=True)
    print(f"{folds}-fold CV (fast path: LightGBM pooled with LR on the embedding and a TF-IDF LR on the text, "
          f"temperature-calibrated; cascade on folds {sorted(fb_folds)}):", flush=True)
    for k, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=0).split(X, y)):
        need_casc = k in fb_folds and k not in casc_rows
        if k in fast_rows and not need_casc:
            continue
        row, clf, p_fast, yt = fast_fold(k, tr, te, X, y, labels, texts)
        fast_rows.setdefault(k, row)
        if need_casc:
            casc_rows[k] = cascade_fold(k, tr, te, labels, texts, clf, p_fast, yt, embedder, a, epochs, fb_rows)
        summarise(report, fast_rows, casc_rows, embed_tps, out)

    summarise(report, fast_rows, casc_rows, embed_tps, out)
    f = report["fast"]
    print(f"\nfast path: {f['accuracy_mean']:.4f} ± {f['accuracy_std']:.4f} over {len(fast_rows)} folds, "
          f"{f['tickets_per_s']:.0f} tickets/s (embed {embed_tps}/s, classify {f['classify_texts_per_s']}/s)",
          flush=True)
    if casc_rows:
        c = report["cascade"]
        print(f"cascade:   {c['accuracy_mean']:.4f} ± {c['accuracy_std']:.4f} over folds {c['folds']}, escalating "
              f"{c['escalation_rate_mean']:.1%} (each fold's own choice), {c['tickets_per_s']:.0f} tickets/s; "
              f"fallback alone {c['fallback_accuracy_mean']}, {c['fallback_texts_per_s']} texts/s; both wrong "
              f"{c['both_wrong_rate_mean']} (ceiling {c['ceiling_accuracy_mean']})", flush=True)
        print("\n  escalation  cascade (replace)  cascade (blend)   mean over folds", flush=True)
        for r in c["sweep"]:
            print(f"  {r['escalation_rate']:>9.0%}   {r['accuracy']:.4f}            {r['accuracy_blend']:.4f}",
                  flush=True)

    if not a.skip_oos and (DATA / "clinc150").exists():
        print("\nabstain / out-of-scope (thresholds from the target precision on the tuning split):", flush=True)
        tr_, va_, tests = load_clinc()
        report["clinc150"] = oos_eval("CLINC150 (train; tune val; report test/oos_test)", tr_, va_, tests,
                                      embedder, a.target_precision, a.quick)
        tr_, va_, tests = load_b77oos()
        report["banking77_oos"] = oos_eval("BANKING77-OOS (train; tune valid; report valid parts)", tr_, va_, tests,
                                           embedder, a.target_precision, a.quick)
    elif not a.skip_oos:
        print(f"\n(no {DATA}: CLINC150 / BANKING77-OOS abstain checks skipped)", flush=True)
    else:
        for key in ("clinc150", "banking77_oos"):
            if key in previous:
                report[key] = previous[key]
    report["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    write(report, out)
    print(f"\nwrote {out}", flush=True)
    return 0


def summarise(report, fast_rows, casc_rows, embed_tps, out) -> None:
    rows = [fast_rows[k] for k in sorted(fast_rows)]
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
    if casc_rows:
        crs = [casc_rows[k] for k in sorted(casc_rows)]
        esc = float(np.mean([r["escalation_rate"] for r in crs]))
        fb_tps = float(np.median([r["fallback_texts_per_s"] for r in crs]))
        report["cascade_folds"] = crs
        report["cascade"] = {
            "folds": sorted(casc_rows), "accuracy_mean": mean(crs, "cascade_accuracy"),
            "accuracy_std": round(float(np.std([r["cascade_accuracy"] for r in crs])), 4),
            "escalation_rate_mean": round(esc, 4), "escalation_rate_max": max(r["escalation_rate"] for r in crs),
            "fast_accuracy_mean": mean(crs, "fast_accuracy"),
            "fallback_accuracy_mean": mean(crs, "fallback_accuracy"),
            "both_wrong_rate_mean": mean(crs, "both_wrong_rate"),
            "ceiling_accuracy_mean": mean(crs, "ceiling_accuracy"),
            "abstain_rate_mean": mean(crs, "abstain_rate"), "team_accuracy_mean": mean(crs, "team_accuracy"),
            "fallback_texts_per_s": fb_tps, "fallback_train_seconds_mean": mean(crs, "train_seconds"),
            # every ticket pays the fast path, escalated ones also the fallback
            "tickets_per_s": round(1.0 / (1.0 / fast_tps + esc / fb_tps), 1),
            "sweep": [{"escalation_rate": r["escalation_rate"],
                       "accuracy": round(float(np.mean([c["sweep"][i]["accuracy"] for c in crs])), 4),
                       "accuracy_blend": round(float(np.mean([c["sweep"][i]["accuracy_blend"] for c in crs])), 4)}
                      for i, r in enumerate(crs[0]["sweep"])],
        }
    write(report, out)


def write(report, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)


if __name__ == "__main__":
    sys.exit(main())
