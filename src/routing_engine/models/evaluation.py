"""Offline evaluation of the cascade on labelled data: accuracy, macro-F1, escalation, abstain, coverage, latency."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .cascade import Policy, decide, should_escalate
from .classifier import Classifier
from .embedder import embed_texts
from .prediction import Prediction

COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


def coverage_curve(confidence: Sequence[float], correct: Sequence[bool],
                   coverages: Sequence[float] = COVERAGES) -> list[dict[str, float]]:
    """Accuracy on the most confident `coverage` share of tickets, and the confidence cut that keeps them."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    order = np.argsort(-conf, kind="stable")
    rows = []
    for c in coverages:
        k = max(1, int(round(c * len(conf)))) if len(conf) else 0
        kept = order[:k]
        rows.append({"coverage": float(c), "accuracy": float(ok[kept].mean()) if k else 0.0,
                     "threshold": float(conf[order[k - 1]]) if k else 0.0})
    return rows


def per_class(y_true: Sequence[str], y_pred: Sequence[str], worst: int = 10) -> list[dict[str, Any]]:
    """The `worst` classes by F1, with support, recall, precision and the label they are most mistaken for."""
    from sklearn.metrics import precision_recall_fscore_support

    classes = sorted(set(y_true))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    confusions: dict[str, Counter] = {c: Counter() for c in classes}
    for t, q in zip(y_true, y_pred):
        if t != q:
            confusions[t][q] += 1
    rows = [{"label": c, "f1": round(float(f[i]), 4), "recall": round(float(r[i]), 4),
             "precision": round(float(p[i]), 4), "support": int(s[i]),
             "confused_with": confusions[c].most_common(1)[0][0] if confusions[c] else None}
            for i, c in enumerate(classes)]
    return sorted(rows, key=lambda row: (row["f1"], row["label"]))[:worst]


def evaluate(
    texts: Sequence[str],
    labels: Sequence[str],
    classifier: Classifier,
    embedder: Any,
    fallback: Any = None,
    *,
    policy: Policy | None = None,
    fallback_on_all: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the cascade on labelled texts exactly as the stages do; return one JSON-able dict.

    With `fallback_on_all` the transformer also scores the tickets it would not be sent, so the report
    has the fallback's accuracy alone; the cascade itself still uses only the escalated ones.
    """
    from sklearn.metrics import f1_score

    texts, labels = [str(t) for t in texts], [str(x) for x in labels]
    n = len(texts)
    if n == 0:
        raise ValueError("no rows to evaluate")
    policy = policy or classifier.policy
    t0 = time.perf_counter()
    emb = embed_texts(texts, embedder, progress)
    t1 = time.perf_counter()
    fast = classifier.predict(emb, texts)
    t2 = time.perf_counter()
    sims = classifier.ood_similarity(emb)
    t3 = time.perf_counter()
    escalate = np.array([should_escalate(f, s, policy) for f, s in zip(fast, sims)], dtype=bool)
    slow: list[Prediction | None] = [None] * n
    fb_idx = list(range(n)) if fallback_on_all else list(np.flatnonzero(escalate))
    fb_s = 0.0
    if fallback is not None and fb_idx:
        t4 = time.perf_counter()
        preds = fallback.predict([texts[i] for i in fb_idx])
        fb_s = time.perf_counter() - t4
        for i, p in zip(fb_idx, preds):
            slow[i] = p
    decisions = [decide(f, slow[i] if escalate[i] else None, sims[i], policy, team_of=classifier.teams.team_of,
                        fallback_in_use=fallback is not None)
                 for i, f in enumerate(fast)]
    final = [d["label"] for d in decisions]
    abstain = np.array([d["abstain"] for d in decisions], dtype=bool)
    correct = np.array([a == b for a, b in zip(final, labels)], dtype=bool)
    fast_ok = np.array([f.label == y for f, y in zip(fast, labels)], dtype=bool)
    conf = np.array([d["confidence"] for d in decisions], dtype=np.float64)

    out: dict[str, Any] = {
        "n": n,
        "model": classifier.version,
        "fallback_model": getattr(fallback, "version", None),
        "policy": policy.to_dict(),
        "accuracy": round(float(correct.mean()), 4),
        "macro_f1": round(float(f1_score(labels, final, average="macro", zero_division=0)), 4),
        "team_accuracy": round(float(np.mean([classifier.teams.team_of(a) == classifier.teams.team_of(b)
                                              for a, b in zip(final, labels)])), 4),
        "escalation_rate": round(float(escalate.mean()), 4),
        "abstain_rate": round(float(abstain.mean()), 4),
        "kept_accuracy": round(float(correct[~abstain].mean()), 4) if (~abstain).any() else None,
        "fast_accuracy": round(float(fast_ok.mean()), 4),
        "fast_macro_f1": round(float(f1_score(labels, [f.label for f in fast], average="macro", zero_division=0)), 4),
        "fallback_accuracy": None,
        "degraded_rate": round(float(np.mean([d["degraded"] for d in decisions])), 4),
        "decided_by": dict(Counter(d["decided_by"] for d in decisions)),
        "coverage": coverage_curve(conf, correct),
        "fast_coverage": coverage_curve([f.confidence for f in fast], fast_ok),
        "worst_classes": per_class(labels, final),
        "unknown_labels": sorted(set(labels) - set(classifier.labels)),
        "latency_ms_per_ticket": {
            "embed": round(1000 * (t1 - t0) / n, 3),
            "lightgbm": round(1000 * (t2 - t1) / n, 3),
            "ood": round(1000 * (t3 - t2) / n, 3),
            "transformer": round(1000 * fb_s / len(fb_idx), 3) if fallback is not None and fb_idx else None,
        },
    }
    if fallback is not None:
        scored = [i for i in range(n) if slow[i] is not None]
        if scored:
            fb_ok = np.array([slow[i].label == labels[i] for i in scored])
            key = "fallback_accuracy" if fallback_on_all else "fallback_accuracy_on_escalated"
            out[key] = round(float(fb_ok.mean()), 4)
            if len(scored) == n:
                # Rows both models get wrong: no escalation rule or blend of these two can fix them.
                both = ~fast_ok & ~fb_ok
                out["both_wrong_rate"] = round(float(both.mean()), 4)
                out["ceiling_accuracy"] = round(float(1.0 - both.mean()), 4)
        if escalate.any():
            out["fast_accuracy_on_escalated"] = round(float(fast_ok[escalate].mean()), 4)
            esc_ok = [slow[i].label == labels[i] for i in np.flatnonzero(escalate) if slow[i] is not None]
            if esc_ok:
                out["fallback_accuracy_on_escalated"] = round(float(np.mean(esc_ok)), 4)
    return out


def plot_coverage(report: dict[str, Any], path: str | Path) -> Path:
    """Accuracy on kept tickets vs coverage, for the fast path alone and for the cascade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for key, name in (("fast_coverage", "fast path (LightGBM)"), ("coverage", "cascade")):
        rows = report[key]
        ax.plot([r["coverage"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=name)
    ax.axvline(1 - report["abstain_rate"], color="grey", ls=":", label="policy's coverage")
    ax.set_xlabel("coverage (share of tickets kept)")
    ax.set_ylabel("accuracy on kept")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"n={report['n']}  model {report['model']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"rows {r['n']}   model {r['model']}   fallback {r['fallback_model'] or '-'}",
        f"policy: escalate < {r['policy']['escalate_below']:.3f}   abstain < {r['policy']['abstain_below']:.3f}   "
        f"ood < {r['policy']['ood_below']:.3f}   (target precision {r['policy']['target_precision']:.2f})",
        "",
        f"accuracy        {r['accuracy']:.4f}   (cascade; abstained tickets count with their best guess)",
        f"macro-F1        {r['macro_f1']:.4f}",
        f"team accuracy   {r['team_accuracy']:.4f}",
        f"escalation rate {r['escalation_rate']:.4f}",
        f"abstain rate    {r['abstain_rate']:.4f}   accuracy on kept {r['kept_accuracy']}",
        f"fast path alone {r['fast_accuracy']:.4f}   fallback alone {r['fallback_accuracy']}",
        f"both wrong      {r.get('both_wrong_rate')}   ceiling of this pair {r.get('ceiling_accuracy')}"
        f"   (cascade at the shipped escalation rate: {r['accuracy']:.4f})",
        f"decided by      {r['decided_by']}",
        "",
        "coverage   accuracy on kept (cascade)   fast path alone   confidence cut",
    ]
    for c, f in zip(r["coverage"], r["fast_coverage"]):
        lines.append(f"  {c['coverage']:5.0%}     {c['accuracy']:.4f}                       "
                     f"{f['accuracy']:.4f}            {c['threshold']:.3f}")
    lines += ["", "worst classes (by F1)        f1      recall  support  most confused with"]
    for w in r["worst_classes"]:
        lines.append(f"  {w['label'][:26]:<26} {w['f1']:.3f}   {w['recall']:.3f}   {w['support']:>5}    "
                     f"{w['confused_with'] or '-'}")
    lat = r["latency_ms_per_ticket"]
    lines += ["", "latency per ticket (ms, batched): " + "   ".join(
        f"{k} {v:.2f}" for k, v in lat.items() if v is not None)]
    if r["unknown_labels"]:
        lines.append(f"labels the model has never seen (always wrong): {', '.join(r['unknown_labels'][:10])}")
    return "\n".join(lines)
