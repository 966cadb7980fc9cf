"""Intent classifier: LightGBM over sentence embeddings, saved as versioned artifact folders."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .teams import DEFAULT_TEAMS_PATH, Teams, load_teams

BANKING77_REL = Path("shared") / "datasets" / "banking77" / "train.csv"
EMBED_BATCH = 256
REFIT_BELOW_ROWS = 2000

# Tuned on BANKING77 train (10k rows, 77 classes, 384-d MiniLM) on 2 cores: shallow trees,
# column subsampling and coarse bins keep each round cheap; early stopping picks the length.
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
    "num_boost_round": 400,
    "early_stopping_rounds": 15,
    "verbosity": -1,
}


@dataclass
class Prediction:
    label: str
    team: str
    confidence: float
    top: list[tuple[str, float]]


class Classifier:
    """A trained booster plus everything needed to reproduce and audit it."""

    def __init__(
        self,
        booster: Any,
        labels: Sequence[str],
        *,
        version: str,
        embedder_name: str,
        teams: Teams | None = None,
        metrics: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ):
        self.booster = booster
        self.labels = list(labels)
        self.version = version
        self.embedder_name = embedder_name
        self.teams = teams or load_teams()
        self.metrics = dict(metrics or {})
        self.meta = dict(meta or {})

    def predict_proba(self, emb: np.ndarray) -> np.ndarray:
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None, :]
        if len(emb) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        proba = self.booster.predict(emb, num_iteration=self.meta.get("best_iteration") or None)
        return np.asarray(proba).reshape(len(emb), len(self.labels))

    def predict(self, emb: np.ndarray) -> list[Prediction]:
        proba = self.predict_proba(emb)
        out = []
        k = min(3, len(self.labels))
        for row in proba:
            idx = np.argsort(-row)[:k]
            top = [(self.labels[i], float(row[i])) for i in idx]
            label, conf = top[0]
            out.append(Prediction(label, self.teams.team_of(label), conf, top))
        return out

    def save(self, models_dir: str | Path) -> Path:
        models_dir = Path(models_dir)
        models_dir.mkdir(parents=True, exist_ok=True)
        final = models_dir / self.version
        # Write into a hidden temp dir and rename, so a watcher never loads a half-written model.
        tmp = models_dir / f".tmp-{self.version}-{secrets.token_hex(3)}"
        tmp.mkdir()
        try:
            self.booster.save_model(str(tmp / "model.txt"))
            meta = {
                **self.meta,
                "version": self.version,
                "labels": self.labels,
                "embedder_name": self.embedder_name,
                "metrics": self.metrics,
                "team_map_path": str(self.teams.path) if self.teams.path else None,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    @classmethod
    def load(cls, path: str | Path, teams: Teams | None = None) -> "Classifier":
        import lightgbm as lgb

        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        booster = lgb.Booster(model_file=str(path / "model.txt"))
        if teams is None:
            team_path = meta.get("team_map_path")
            teams = load_teams(team_path if team_path and Path(team_path).exists() else None)
        return cls(
            booster,
            meta["labels"],
            version=meta["version"],
            embedder_name=meta.get("embedder_name", ""),
            teams=teams,
            metrics=meta.get("metrics", {}),
            meta=meta,
        )


def new_version() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"lgbm-{stamp}-{secrets.token_hex(3)}"


def embed_texts(texts: Sequence[str], embedder: Any, progress: bool = True) -> np.ndarray:
    from tqdm.auto import tqdm

    chunks = []
    with tqdm(total=len(texts), desc="embedding", unit="text", disable=not progress) as bar:
        for i in range(0, len(texts), EMBED_BATCH):
            batch = list(texts[i : i + EMBED_BATCH])
            chunks.append(embedder.encode(batch))
            bar.update(len(batch))
    if not chunks:
        return np.zeros((0, getattr(embedder, "dim", 384)), dtype=np.float32)
    return np.vstack(chunks).astype(np.float32, copy=False)


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


def _split(y: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Stratified split, or None when some class is too small to spare a holdout row."""
    if holdout <= 0:
        return None
    n_classes = len(np.unique(y))
    counts = np.bincount(y)
    n_hold = int(round(len(y) * holdout))
    if counts.min() < 3 or n_hold < n_classes or len(y) - n_hold < 2 * n_classes:
        return None
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, ho = train_test_split(idx, test_size=n_hold, stratify=y, random_state=seed)
    return tr, ho


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
) -> Classifier:
    import lightgbm as lgb

    label_names = sorted(set(labels))
    if len(label_names) < 2:
        raise ValueError("need at least two distinct labels to train a classifier")
    index = {lab: i for i, lab in enumerate(label_names)}
    y = np.array([index[lab] for lab in labels], dtype=np.int32)
    X = np.asarray(X, dtype=np.float32)
    teams = teams or load_teams()

    split = _split(y, holdout, seed)
    tr, ho = split if split else (np.arange(len(y)), None)
    p = _adaptive_params(len(tr), len(label_names), {**DEFAULT_PARAMS, **(params or {})})
    rounds = int(p.pop("num_boost_round"))
    patience = int(p.pop("early_stopping_rounds"))
    p.update(num_class=len(label_names), seed=seed, deterministic=True, force_col_wise=True)

    dtrain = lgb.Dataset(X[tr], label=y[tr], free_raw_data=True)
    valid_sets, callbacks = [], []
    if ho is not None:
        valid_sets = [lgb.Dataset(X[ho], label=y[ho], reference=dtrain)]
        callbacks.append(lgb.early_stopping(patience, verbose=False))
    cb, bar = _tqdm_callback(rounds, progress)
    callbacks.append(cb)

    t0 = time.perf_counter()
    try:
        booster = lgb.train(p, dtrain, num_boost_round=rounds, valid_sets=valid_sets, callbacks=callbacks)
    finally:
        bar.close()
    best = int(booster.best_iteration or booster.current_iteration())
    final = booster
    refit = ho is not None and len(y) < REFIT_BELOW_ROWS
    if refit:
        # Small data: the holdout rows are too valuable to leave out, and a refit costs well under a second.
        final = lgb.train(p, lgb.Dataset(X, label=y), num_boost_round=best)
    fit_s = time.perf_counter() - t0

    metrics: dict[str, Any] = {
        "n_train": int(len(tr)),
        "n_holdout": 0 if ho is None else int(len(ho)),
        "n_classes": len(label_names),
        "best_iteration": best,
        "fit_seconds": round(fit_s, 2),
        "refit_on_all_rows": refit,
    }
    if ho is not None:
        proba = booster.predict(X[ho], num_iteration=best).reshape(len(ho), len(label_names))
        pred = proba.argmax(1)
        metrics["holdout_accuracy"] = round(float((pred == y[ho]).mean()), 4)
        team_pred = [teams.team_of(label_names[i]) for i in pred]
        team_true = [teams.team_of(label_names[i]) for i in y[ho]]
        metrics["holdout_team_accuracy"] = round(float(np.mean([a == b for a, b in zip(team_pred, team_true)])), 4)
        eps = 1e-12
        metrics["holdout_logloss"] = round(float(-np.log(proba[np.arange(len(ho)), y[ho]] + eps).mean()), 4)

    meta: dict[str, Any] = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "training_data": None,
        "training_data_sha256": None,
        "rows": int(len(y)),
        "params": {**p, "num_boost_round": rounds, "early_stopping_rounds": patience},
        "best_iteration": best,
        "holdout": holdout,
        "seed": seed,
    }
    if source is not None:
        meta["training_data"] = str(Path(source).resolve())
        if Path(source).is_file():
            meta["training_data_sha256"] = _sha256(Path(source))
    return Classifier(
        final, label_names, version=new_version(), embedder_name=embedder_name,
        teams=teams, metrics=metrics, meta=meta,
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
) -> Classifier:
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    t0 = time.perf_counter()
    X = embed_texts(texts, embedder, progress)
    embed_s = time.perf_counter() - t0
    clf = train_on_embeddings(
        X, labels, embedder_name=getattr(embedder, "name", "unknown"), teams=teams, params=params,
        progress=progress, holdout=holdout, seed=seed, source=source,
    )
    clf.metrics["embed_seconds"] = round(embed_s, 2)
    return clf


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def latest_model(models_dir: str | Path) -> Path | None:
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return None
    found = []
    for d in models_dir.iterdir():
        if d.name.startswith(".") or not (d / "meta.json").is_file() or not (d / "model.txt").is_file():
            continue
        try:
            created = json.loads((d / "meta.json").read_text()).get("created_at", "")
        except (OSError, ValueError):
            continue
        found.append((str(created), d.name, d))
    return max(found)[2] if found else None


def load_latest(models_dir: str | Path, teams: Teams | None = None) -> Classifier | None:
    path = latest_model(models_dir)
    return Classifier.load(path, teams=teams) if path else None


def read_labelled(
    path: str | Path, text_col: str = "text", label_col: str = "category"
) -> tuple[list[str], list[str]]:
    path = Path(path)
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    if rows and (text_col not in rows[0] or label_col not in rows[0]):
        raise KeyError(f"{path}: need columns {text_col!r} and {label_col!r}, found {sorted(rows[0])}")
    texts, labels = [], []
    for r in rows:
        text, label = r.get(text_col), r.get(label_col)
        if text is None or label is None or not str(text).strip() or not str(label).strip():
            continue
        texts.append(str(text))
        labels.append(str(label))
    return texts, labels


def default_training_data() -> Path | None:
    env = os.environ.get("ROUTING_TRAIN_DATA")
    if env:
        # An explicit setting that points nowhere should not silently fall back to another file.
        return Path(env) if Path(env).is_file() else None
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo.parent / BANKING77_REL, Path.cwd().parent / BANKING77_REL):
        if candidate.is_file():
            return candidate.resolve()
    return None


__all__ = [
    "Classifier", "Prediction", "DEFAULT_PARAMS", "DEFAULT_TEAMS_PATH", "train", "train_on_embeddings",
    "embed_texts", "latest_model", "load_latest", "read_labelled", "default_training_data", "new_version",
]
