"""Compares the MiniLM and static (model2vec) embedders on BANKING77 train: speed, accuracy, duplicate pairs.

Uses a fixed stratified 80/20 split of BANKING77 *train* (seed 0); the official test split is never read.
Timings are wall-clock on whatever else the machine is doing: the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from measure_tau import pair_table  # noqa: E402  (bench/ is on sys.path when run as a script)

from routing_engine.config import Settings  # noqa: E402
from routing_engine.models.embedder import make_embedder  # noqa: E402
from routing_engine.models.training import train_on_embeddings  # noqa: E402
from routing_engine.resources import data_dir  # noqa: E402

DATA = data_dir() / "banking77" / "train.csv"  # shipped with the package
OUT = ROOT / "bench" / "out" / "embedders.json"
TAUS = [round(0.6 + 0.05 * i, 2) for i in range(8)]
BATCH = 64


def load_split(seed: int = 0):
    from sklearn.model_selection import train_test_split

    with DATA.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    texts = [r["text"] for r in rows]
    labels = np.array([r["category"] for r in rows])
    tr, te = train_test_split(np.arange(len(texts)), test_size=0.2, stratify=labels, random_state=seed)
    return texts, labels, np.sort(tr), np.sort(te)


def encode_rates(emb, texts: list[str]) -> tuple[dict, np.ndarray]:
    emb.encode(texts[:BATCH])  # warm-up: first call pays lazy init
    t0 = time.perf_counter()
    chunks = [emb.encode(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)]
    b64 = time.perf_counter() - t0
    t0 = time.perf_counter()
    X = emb.encode(texts)
    full = time.perf_counter() - t0
    assert np.allclose(np.vstack(chunks), X, atol=1e-4)
    return {"texts_per_s_batch64": round(len(texts) / b64), "texts_per_s_full_batch": round(len(texts) / full)}, X


def lgbm_accuracy(X, labels, tr, te, name: str):
    t0 = time.perf_counter()
    clf = train_on_embeddings(X[tr], list(labels[tr]), embedder_name=name, progress=False)
    fit = time.perf_counter() - t0
    pred = np.array(clf.labels)[clf.predict_proba(X[te]).argmax(1)]
    return clf, {"accuracy": round(float((pred == labels[te]).mean()), 4), "fit_s": round(fit, 1),
                 "best_iteration": clf.meta.get("best_iteration")}


def logreg_accuracy(X, labels, tr, te, C: float = 10.0) -> dict:
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    lr = LogisticRegression(C=C, max_iter=2000).fit(X[tr], labels[tr])
    return {"accuracy": round(float((lr.predict(X[te]) == labels[te]).mean()), 4), "C": C,
            "fit_s": round(time.perf_counter() - t0, 1)}


def pair_sample(labels: np.ndarray, per_intent: int = 40, seed: int = 0) -> np.ndarray:
    # Same sample as bench/measure_tau.py: 40 per intent, ~4.7M pairs, exact counts over all of them.
    by = defaultdict(list)
    for i, lab in enumerate(labels):
        by[lab].append(i)
    rng = random.Random(seed)
    return np.array([i for lab in sorted(by) for i in rng.sample(by[lab], min(per_intent, len(by[lab])))])


def fast_path(emb, clf, texts: list[str], n_batches: int) -> dict:
    """What enrich pays per ticket on its hot path: embed a batch of 64, then LightGBM predict."""
    emb_t, pred_t = [], []
    for b in range(n_batches):
        batch = texts[b * BATCH:(b + 1) * BATCH]
        t0 = time.perf_counter()
        X = emb.encode(batch)
        t1 = time.perf_counter()
        clf.predict(X)
        t2 = time.perf_counter()
        emb_t.append(t1 - t0)
        pred_t.append(t2 - t1)
    e, p = np.median(emb_t) / BATCH * 1e6, np.median(pred_t) / BATCH * 1e6
    return {"embed_us_per_ticket": round(e, 1), "predict_us_per_ticket": round(p, 1),
            "total_us_per_ticket": round(e + p, 1), "tickets_per_s": round(1e6 / (e + p)), "batches": n_batches}


def st_static_rate(path: Path, texts: list[str]) -> dict:
    """Reference only: the same static model loaded as a sentence-transformers StaticEmbedding."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device="cpu")
    kw = dict(normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    st.encode(texts[:BATCH], **kw)
    t0 = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        st.encode(texts[i:i + BATCH], batch_size=BATCH, **kw)
    b64 = time.perf_counter() - t0
    t0 = time.perf_counter()
    st.encode(texts, batch_size=1024, **kw)
    return {"texts_per_s_batch64": round(len(texts) / b64),
            "texts_per_s_full_batch": round(len(texts) / (time.perf_counter() - t0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models-dir", default=str(Settings.from_env().models_path),
                    help="where the static model is (or gets distilled to)")
    ap.add_argument("--kinds", default="minilm,static")
    args = ap.parse_args()

    texts, labels, tr, te = load_split()
    sample = pair_sample(labels)
    res: dict = {"data": "BANKING77 train, stratified 80/20 split, seed 0", "n_train": len(tr), "n_test": len(te),
                 "cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in os.getloadavg()], "embedders": {}}
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        emb = make_embedder(kind, args.models_dir)
        r: dict = {"name": emb.name, "dim": emb.dim, "load_s": round(time.perf_counter() - t0, 1)}
        rates, X = encode_rates(emb, texts)
        r.update(rates)
        clf, r["lightgbm"] = lgbm_accuracy(X, labels, tr, te, emb.name)
        r["logreg"] = logreg_accuracy(X, labels, tr, te)
        r["fast_path_batch64"] = fast_path(emb, clf, [texts[i] for i in te], 20)
        r["dup_pairs"] = pair_table(X[sample], labels[sample], TAUS)
        if kind == "static":
            r["via_sentence_transformers"] = st_static_rate(Path(args.models_dir) / "static-minilm", texts)
        res["embedders"][kind] = r
        print(f"{kind}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2))
    print_tables(res)
    print(f"\nwrote {OUT}")


def print_tables(res: dict) -> None:
    em = res["embedders"]
    print(f"\n{res['data']}; load average {res['loadavg_start']} -> {res['loadavg_end']} on {res['cpus']} CPUs")
    print(f"{'embedder':<16}{'dim':>5}{'txt/s b64':>11}{'txt/s full':>11}{'LGBM acc':>10}{'LR acc':>8}"
          f"{'LGBM fit s':>11}{'fast path us/tkt':>18}")
    for _k, r in em.items():
        print(f"{r['name']:<16}{r['dim']:>5}{r['texts_per_s_batch64']:>11}{r['texts_per_s_full_batch']:>11}"
              f"{r['lightgbm']['accuracy']:>10}{r['logreg']['accuracy']:>8}{r['lightgbm']['fit_s']:>11}"
              f"{r['fast_path_batch64']['total_us_per_ticket']:>18}")
    print("\nsame-intent pairs (BANKING77, 40 per intent): precision / recall of cosine >= tau")
    print("  tau " + "".join(f"{k:>24}" for k in em))
    for i, tau in enumerate(TAUS):
        cells = [em[k]["dup_pairs"]["rows"][i] for k in em]
        print(f"  {tau:.2f}" + "".join(f"{str(c['precision']):>12}{c['recall']:>12}" for c in cells))


if __name__ == "__main__":
    main()
