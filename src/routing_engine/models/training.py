"""Training the fast path: embed labelled texts, fit LightGBM, the pooled logistic regression and n-gram model,
choose pooling weights and a temperature on a holdout, and the cascade's thresholds for a target precision.

Beside it, `tune_policy` chooses the joint escalate/abstain thresholds once the transformer fallback exists.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..domain.teams import Teams, load_teams
from .artifacts import created_now, new_version, sha256_of
from .calibration import MIN_CALIBRATION_ROWS, ece, fit_temperature, pool, softmax
from .cascade import Policy, choose_cascade, policy_for_precision
from .classifier import OOD_BANK_ROWS, OOD_K, Classifier, knn_similarity, unit_rows
from .data import stratified_split
from .embedder import embed_texts
from .lexical import DEFAULT_WEIGHT as LEXICAL_DEFAULT_WEIGHT
from .lexical import WEIGHTS as LEXICAL_WEIGHTS
from .lexical import LexicalModel

REFIT_BELOW_ROWS = 2000


LINEAR_C = 20.0


LINEAR_WEIGHTS = (0.0, 0.25, 0.5, 0.6, 0.75, 0.9)


# Tuned on BANKING77 train (10k rows, 77 classes, 384-d MiniLM) on 2 cores: shallow trees,
# column subsampling and coarse bins keep each round cheap; early stopping picks the length, within
# num_boost_round. That cap is what the fast path pays per ticket (one tree per class per round): at 400 rounds
# (30,700 trees) LightGBM took 1.1-1.3 ms per ticket, at 100 rounds 0.10 ms, and the pooled fast path (with
# the logistic regression and the n-gram model) was as accurate in 5-fold CV (bench/lgbm_speed.py --cv 5).
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "multiclass",
    "learning_rate": 0.2,
    "num_leaves": 4,
    "max_depth": -1,
    "min_data_in_leaf": 20,
    "min_sum_hessian_in_leaf": 1e-3,
    "feature_fraction": 0.15,
    "bagging_fraction": 0.6,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 15,
    "num_boost_round": 100,
    "early_stopping_rounds": 15,
    "verbosity": -1,
}


def fit_linear(X: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression; returns (W, b) over all n_classes (absent classes get -inf-ish bias)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=LINEAR_C, max_iter=300, tol=1e-3, random_state=seed)
    lr.fit(X, y)
    W = np.zeros((X.shape[1], n_classes), dtype=np.float32)
    b = np.full(n_classes, -30.0, dtype=np.float32)
    W[:, lr.classes_] = lr.coef_.T.astype(np.float32)
    b[lr.classes_] = lr.intercept_.astype(np.float32)
    return W, b


def _tqdm_callback(total: int, progress: bool):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="boosting", unit="round", disable=not progress)

    def callback(env) -> None:
        bar.update(1)
        if env.evaluation_result_list:
            _, metric, value, _ = env.evaluation_result_list[-1][:4]
            bar.set_postfix({metric: f"{value:.4f}"}, refresh=False)

    callback.order = 30  # after early stopping has seen the round
    return callback, bar


def _adaptive_params(n_train: int, n_classes: int, params: dict[str, Any]) -> dict[str, Any]:
    p = dict(params)
    per_class = n_train / max(n_classes, 1)
    # With a handful of examples per class the defaults forbid any split at all.
    if per_class < 60:
        p["min_data_in_leaf"] = int(max(2, min(p.get("min_data_in_leaf", 20), per_class // 4)))
        p["min_data_in_bin"] = 1
        p["num_leaves"] = min(p.get("num_leaves", 4), 4)
        p["feature_fraction"] = max(p.get("feature_fraction", 0.3), 0.5)
        p["bagging_fraction"] = 1.0
        p["bagging_freq"] = 0
    if n_train < 500:
        p["num_boost_round"] = min(p.get("num_boost_round", 300), 100)
    if n_train < 5000:
        # OpenMP threads spin-wait: on small data with busy cores one thread was 5x faster than two.
        p.setdefault("num_threads", 1)
    return p


def train_on_embeddings(
    X: np.ndarray,
    labels: Sequence[str],
    *,
    embedder_name: str,
    teams: Teams | None = None,
    params: dict[str, Any] | None = None,
    progress: bool = True,
    holdout: float = 0.1,
    seed: int = 0,
    source: str | Path | None = None,
    linear: bool = True,
    target_precision: float = 0.9,
    escalation_budget: float = 0.25,
    texts: Sequence[str] | None = None,
) -> Classifier:
    """Train the fast path on embeddings `X`; with `texts` (the same rows' text) it also pools a lexical model."""
    import lightgbm as lgb

    label_names = sorted(set(labels))
    if len(label_names) < 2:
        raise ValueError("need at least two distinct labels to train a classifier")
    n_classes = len(label_names)
    index = {lab: i for i, lab in enumerate(label_names)}
    y = np.array([index[lab] for lab in labels], dtype=np.int32)
    X = np.asarray(X, dtype=np.float32)
    teams = teams or load_teams()

    split = stratified_split(y, holdout, seed)
    tr, ho = split if split else (np.arange(len(y)), None)
    p = _adaptive_params(len(tr), n_classes, {**DEFAULT_PARAMS, **(params or {})})
    rounds = int(p.pop("num_boost_round"))
    patience = int(p.pop("early_stopping_rounds"))
    p.update(num_class=n_classes, seed=seed, deterministic=True, force_col_wise=True)

    t0 = time.perf_counter()
    dtrain = lgb.Dataset(X[tr], label=y[tr], free_raw_data=True)
    valid_sets, callbacks = [], []
    if ho is not None:
        valid_sets = [lgb.Dataset(X[ho], label=y[ho], reference=dtrain)]
        callbacks.append(lgb.early_stopping(patience, verbose=False))
    cb, bar = _tqdm_callback(rounds, progress)
    callbacks.append(cb)
    try:
        booster = lgb.train(p, dtrain, num_boost_round=rounds, valid_sets=valid_sets, callbacks=callbacks)
    finally:
        bar.close()
    best = int(booster.best_iteration or booster.current_iteration())
    t1 = time.perf_counter()
    lin = fit_linear(X[tr], y[tr], n_classes, seed) if linear else None
    linear_s = time.perf_counter() - t1
    if texts is not None and len(texts) != len(y):
        raise ValueError(f"{len(texts)} texts but {len(y)} labels")
    t1 = time.perf_counter()
    lex = LexicalModel.fit([texts[i] for i in tr], y[tr], n_classes, seed) if texts is not None else None
    lexical_s = time.perf_counter() - t1
    final = booster
    refit = ho is not None and len(y) < REFIT_BELOW_ROWS
    if refit:
        # Small data: the holdout rows are too valuable to leave out, and a refit costs well under a second.
        final = lgb.train(p, lgb.Dataset(X, label=y), num_boost_round=best)
    fit_s = time.perf_counter() - t0

    metrics: dict[str, Any] = {
        "n_train": int(len(tr)),
        "n_holdout": 0 if ho is None else int(len(ho)),
        "n_classes": n_classes,
        "best_iteration": best,
        "fit_seconds": round(fit_s, 2),
        "linear_seconds": round(linear_s, 2),
        "lexical_seconds": round(lexical_s, 2),
        "refit_on_all_rows": refit,
    }
    bank_rows = np.arange(len(y))
    linear_weight = 0.5 if lin is not None else 0.0
    lexical_weight = LEXICAL_DEFAULT_WEIGHT if lex is not None else 0.0
    temperature, policy = 1.0, Policy(target_precision=float(target_precision))
    if ho is not None:
        raw = np.asarray(booster.predict(X[ho], num_iteration=best, raw_score=True)).reshape(len(ho), n_classes)
        # A temperature (or a weight, or a threshold) fitted on a handful of rows is noise: defaults below that.
        trusted = len(ho) >= MIN_CALIBRATION_ROWS
        metrics["holdout_accuracy_lightgbm"] = round(float((raw.argmax(1) == y[ho]).mean()), 4)
        if lin is not None:
            lin_logits = X[ho] @ lin[0] + lin[1]
            metrics["holdout_accuracy_linear"] = round(float((lin_logits.argmax(1) == y[ho]).mean()), 4)
            scores = {w: float((pool(raw, lin_logits, w).argmax(1) == y[ho]).mean()) for w in LINEAR_WEIGHTS}
            linear_weight = max(LINEAR_WEIGHTS, key=lambda w: (scores[w], -abs(w - 0.5))) if trusted else 0.5
            raw = pool(raw, lin_logits, linear_weight)
        if lex is not None:
            lex_logits = lex.logits([texts[i] for i in ho])
            metrics["holdout_accuracy_lexical"] = round(float((lex_logits.argmax(1) == y[ho]).mean()), 4)
            scores = {a: float((pool(raw, lex_logits, a).argmax(1) == y[ho]).mean()) for a in LEXICAL_WEIGHTS}
            lexical_weight = (max(LEXICAL_WEIGHTS, key=lambda a: (scores[a], -abs(a - LEXICAL_DEFAULT_WEIGHT)))
                              if trusted else LEXICAL_DEFAULT_WEIGHT)
            if lexical_weight > 0:
                raw = pool(raw, lex_logits, lexical_weight)
        temperature = fit_temperature(raw, y[ho]) if trusted else 1.0
        proba_raw, proba = softmax(raw), softmax(raw / temperature)
        pred = proba.argmax(1)
        correct = pred == y[ho]
        metrics["holdout_accuracy"] = round(float(correct.mean()), 4)
        team_pred = [teams.team_of(label_names[i]) for i in pred]
        team_true = [teams.team_of(label_names[i]) for i in y[ho]]
        metrics["holdout_team_accuracy"] = round(float(np.mean([a == b for a, b in zip(team_pred, team_true)])), 4)
        eps = 1e-12
        rows = np.arange(len(ho))
        metrics["holdout_logloss_uncalibrated"] = round(float(-np.log(proba_raw[rows, y[ho]] + eps).mean()), 4)
        metrics["holdout_logloss"] = round(float(-np.log(proba[np.arange(len(ho)), y[ho]] + eps).mean()), 4)
        metrics["holdout_ece_uncalibrated"] = round(ece(proba_raw.max(1), correct), 4)
        metrics["holdout_ece"] = round(ece(proba.max(1), correct), 4)
        # Similarities of held-out rows to the training rows only: honest, unlike a row compared with itself.
        sims = knn_similarity(unit_rows(X[ho]), unit_rows(X[tr]).astype(np.float16), OOD_K)
        if trusted:
            policy = policy_for_precision(proba.max(1), correct, target_precision,
                                          escalation_budget=escalation_budget, ood_similarities=sims)
        if not refit:
            bank_rows = tr
    if lin is not None and refit:
        lin = fit_linear(X, y, n_classes, seed)
    if lex is not None and refit:
        lex = LexicalModel.fit(texts, y, n_classes, seed)
    rng = np.random.default_rng(seed)
    if len(bank_rows) > OOD_BANK_ROWS:
        bank_rows = rng.choice(bank_rows, OOD_BANK_ROWS, replace=False)
    bank = unit_rows(X[bank_rows]).astype(np.float16)

    meta: dict[str, Any] = {
        "created_at": created_now(),
        "training_data": None,
        "training_data_sha256": None,
        "rows": int(len(y)),
        "params": {**p, "num_boost_round": rounds, "early_stopping_rounds": patience},
        "best_iteration": best,
        "holdout": holdout,
        "seed": seed,
        "linear_weight": float(linear_weight) if lin is not None else 0.0,
        "lexical_weight": float(lexical_weight),
        "temperature": temperature,
        "ood_k": OOD_K,
        "policy": policy.to_dict(),
        "escalation_budget": escalation_budget,
    }
    if source is not None:
        meta["training_data"] = str(Path(source).resolve())
        if Path(source).is_file():
            meta["training_data_sha256"] = sha256_of(Path(source))
    return Classifier(
        final, label_names, version=new_version("lgbm"), embedder_name=embedder_name,
        teams=teams, metrics=metrics, meta=meta, linear=lin, ood_bank=bank,
        lexical=lex if lexical_weight > 0 else None,
    )


def train(
    texts: Sequence[str],
    labels: Sequence[str],
    embedder: Any,
    *,
    teams: Teams | None = None,
    params: dict[str, Any] | None = None,
    progress: bool = True,
    holdout: float = 0.1,
    seed: int = 0,
    source: str | Path | None = None,
    linear: bool = True,
    target_precision: float = 0.9,
    escalation_budget: float = 0.25,
) -> Classifier:
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    t0 = time.perf_counter()
    X = embed_texts(texts, embedder, progress)
    embed_s = time.perf_counter() - t0
    clf = train_on_embeddings(
        X, labels, embedder_name=getattr(embedder, "name", "unknown"), teams=teams, params=params,
        progress=progress, holdout=holdout, seed=seed, source=source, linear=linear,
        target_precision=target_precision, escalation_budget=escalation_budget, texts=texts,
    )
    clf.metrics["embed_seconds"] = round(embed_s, 2)
    return clf


def tune_policy(
    classifier: Classifier, fallback: Any, texts: Sequence[str], labels: Sequence[str], embedder: Any, *,
    target_precision: float, escalation_budget: float,
) -> tuple[Policy, list[dict[str, float]]] | None:
    """The cascade decision (cascade.choose_cascade) on the holdout both models left out: returns (policy, the
    search table), or None when the holdout cannot be shared: the fast path refitted on every row (small data,
    its holdout answers would be in-sample) or the two saw different label sets.
    Both trainers split with the same seed over the same label order, so their holdout rows coincide.
    """
    if classifier.metrics.get("refit_on_all_rows") or not classifier.metrics.get("n_holdout"):
        return None
    if list(fallback.labels) != list(classifier.labels):
        return None
    index = {lab: i for i, lab in enumerate(classifier.labels)}
    y = np.array([index[lab] for lab in labels], dtype=np.int32)
    split = stratified_split(y, float(classifier.meta.get("holdout", 0.1)), int(classifier.meta.get("seed", 0)))
    if split is None or len(split[1]) != fallback.metrics.get("n_holdout"):
        return None
    ho = split[1]
    ho_texts = [texts[i] for i in ho]
    pf = classifier.predict_proba(embedder.encode(ho_texts), ho_texts)
    ps = fallback.predict_proba(ho_texts)
    pol, table = choose_cascade(pf, ps, y[ho], target_precision, budget_ceiling=escalation_budget)
    pol.ood_below = classifier.policy.ood_below
    return pol, table


def train_and_save(
    texts: Sequence[str], labels: Sequence[str], models_dir: str | Path, embedder: Any, *,
    teams: Teams | None = None, source: str | Path | None = None, target_precision: float = 0.9,
    escalation_budget: float = 0.25, fallback: bool = True, epochs: float = 5.0, max_seq_length: int = 64,
    progress: bool = True, say=print, device: str | None = None,
) -> tuple[Classifier, Any]:
    """What `routing-engine train` does: the fast path, then (unless `fallback=False`) the fine-tuned fallback
    and the joint policy tuned on the holdout both left out; artifacts written fallback first, so a worker
    that sees the new fast path can already find its fallback. Returns (classifier, fallback or None)."""
    clf = train(texts, labels, embedder, teams=teams, progress=progress, source=source,
                target_precision=target_precision, escalation_budget=escalation_budget)
    fb = None
    if fallback:
        from .finetune import train_fallback  # imports torch's training stack: only when fine-tuning

        say(f"fine-tuning the transformer fallback, {epochs:g} epochs (about 25 minutes on 2 CPU cores, a minute "
            "on a GPU; --no-fallback skips this)")
        fb = train_fallback(texts, labels, teams=teams, epochs=epochs, max_seq_length=max_seq_length,
                            progress=progress, source=source, label_names=clf.labels, device=device, say=say)
        # Both models left out the same holdout rows (same labels, same seed): tune the joint policy there.
        tuned = tune_policy(clf, fb, texts, labels, embedder, target_precision=target_precision,
                            escalation_budget=escalation_budget)
        if tuned is not None:
            clf.policy, search = tuned
            clf.meta["policy_search"] = search
            say(f"cascade decision on the holdout: escalation budget {clf.policy.escalation_budget:.2f}, "
                f"blend {clf.policy.blend:.2f}, escalate below {clf.policy.escalate_below:.3f}")
        clf.meta["fallback_version"] = fb.version
        say(f"fallback {fb.version} written to {fb.save(models_dir)}  metrics={fb.metrics}")
    path = clf.save(models_dir)
    say(f"model {clf.version} written to {path}  metrics={clf.metrics}  policy={clf.meta.get('policy')}")
    return clf, fb
