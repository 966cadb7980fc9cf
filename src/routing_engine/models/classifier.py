"""The cascade's fast path at inference: LightGBM over sentence embeddings, pooled with a logistic regression on
the same embeddings and an n-gram model on the text, temperature-calibrated; saved and loaded as a versioned folder.

How it is trained is in training.py; the pooling weights and the temperature come from there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..domain.teams import Teams, load_teams
from .artifacts import newest_artifact, publish_dir
from .calibration import pool, softmax
from .cascade import Policy
from .lexical import FILENAME as LEXICAL_FILE
from .lexical import LexicalModel
from .prediction import Prediction, predictions

OOD_BANK_ROWS = 20_000  # training embeddings kept (float16) for the nearest-neighbour out-of-distribution score
OOD_K = 5
MODEL_FILE = "model.txt"


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
        linear: tuple[np.ndarray, np.ndarray] | None = None,
        ood_bank: np.ndarray | None = None,
        lexical: LexicalModel | None = None,
    ):
        self.booster = booster
        self.labels = list(labels)
        self.version = version
        self.embedder_name = embedder_name
        self.teams = teams or load_teams()
        self.metrics = dict(metrics or {})
        self.meta = dict(meta or {})
        self.linear = linear            # (W [dim, classes], b [classes]) of the pooled logistic regression
        self.ood_bank = ood_bank        # L2-normalised training embeddings (float16), for ood_similarity
        self._bank32: np.ndarray | None = None  # the same in float32, made once: not on every batch
        self.lexical = lexical          # n-gram TF-IDF regression over the raw text, pooled when texts are given

    @property
    def temperature(self) -> float:
        return float(self.meta.get("temperature") or 1.0)

    @property
    def policy(self):
        """Escalate/abstain/OOD thresholds chosen on held-out data at training time (defaults if absent)."""
        return Policy.from_dict(self.meta.get("policy"))

    @policy.setter
    def policy(self, value) -> None:
        self.meta["policy"] = value.to_dict()

    @property
    def needs_texts(self) -> bool:
        return float(self.meta.get("lexical_weight") or 0.0) > 0

    def logits(self, emb: np.ndarray, texts: Sequence[str] | None = None,
               timings: dict[str, float] | None = None) -> np.ndarray:
        """Uncalibrated log-scores: LightGBM's, pooled with the logistic regression's when there is one, and
        with the lexical model's on `texts` (required when the model was trained with one). `timings`, when
        given, gets the seconds each part took (lgbm, linear, lexical)."""
        clock = _Clock(timings)
        raw = self.booster.predict(emb, num_iteration=self.meta.get("best_iteration") or None, raw_score=True)
        raw = np.asarray(raw, dtype=np.float64).reshape(len(emb), len(self.labels))
        clock.lap("lgbm")
        w = float(self.meta.get("linear_weight") or 0.0)
        if w > 0:
            if self.linear is None:
                raise RuntimeError(f"model {self.version} pools a logistic regression but its arrays.npz is missing")
            raw = pool(raw, emb @ self.linear[0] + self.linear[1], w)
            clock.lap("linear")
        if self.needs_texts:
            if self.lexical is None:
                raise RuntimeError(f"model {self.version} pools a lexical model but its {LEXICAL_FILE} is missing")
            if texts is None or len(texts) != len(emb):
                raise ValueError(f"model {self.version} needs the ticket texts as well as their embeddings")
            raw = pool(raw, self.lexical.logits(texts), float(self.meta["lexical_weight"]))
            clock.lap("lexical")
        return raw

    def predict_proba(self, emb: np.ndarray, texts: Sequence[str] | None = None, *,
                      calibrated: bool = True, timings: dict[str, float] | None = None) -> np.ndarray:
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None, :]
        if len(emb) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        z = self.logits(emb, texts, timings)
        clock = _Clock(timings)
        out = softmax(z / (self.temperature if calibrated else 1.0))
        clock.lap("calibrate")
        return out

    def ood_similarity(self, emb: np.ndarray) -> np.ndarray:
        """Per row: mean cosine to its k nearest training embeddings; higher = more like the training data."""
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None, :]
        if self.ood_bank is None or len(emb) == 0:
            return np.ones(len(emb), dtype=np.float64)
        if self._bank32 is None:
            self._bank32 = np.ascontiguousarray(self.ood_bank, dtype=np.float32)
        return knn_similarity(emb, self._bank32, int(self.meta.get("ood_k", OOD_K)))

    def predict(self, emb: np.ndarray, texts: Sequence[str] | None = None,
                timings: dict[str, float] | None = None) -> list[Prediction]:
        """`timings`, when given, gets the seconds per part: lgbm, linear, lexical, calibrate, top."""
        proba = self.predict_proba(emb, texts, timings=timings)
        clock = _Clock(timings)
        out = predictions(proba, self.labels, self.teams.team_of)
        clock.lap("top")
        return out

    def save(self, models_dir: str | Path) -> Path:
        final = Path(models_dir) / self.version
        # a watcher never loads a half-written model: the folder appears whole, in one rename
        with publish_dir(final) as tmp:
            self.booster.save_model(str(tmp / MODEL_FILE))
            arrays = {}
            if self.linear is not None:
                arrays.update(linear_w=self.linear[0], linear_b=self.linear[1])
            if self.ood_bank is not None:
                arrays["ood_bank"] = self.ood_bank
            if arrays:
                np.savez(tmp / "arrays.npz", **arrays)
            if self.lexical is not None:
                self.lexical.save(tmp)
            meta = {
                **self.meta,
                "version": self.version,
                "labels": self.labels,
                "embedder_name": self.embedder_name,
                "metrics": self.metrics,
                "team_map_path": str(self.teams.path) if self.teams.path else None,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        return final

    @classmethod
    def load(cls, path: str | Path, teams: Teams | None = None) -> Classifier:
        import lightgbm as lgb

        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        booster = lgb.Booster(model_file=str(path / MODEL_FILE))
        linear = bank = None
        if (path / "arrays.npz").is_file():
            with np.load(path / "arrays.npz") as z:
                if "linear_w" in z:
                    linear = (z["linear_w"], z["linear_b"])
                bank = z["ood_bank"] if "ood_bank" in z else None
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
            linear=linear,
            ood_bank=bank,
            lexical=LexicalModel.load(path),
        )


class _Clock:
    """Adds the seconds since the last lap to timings[name]; does nothing when timings is None."""

    def __init__(self, timings: dict[str, float] | None):
        self.timings = timings
        self.t = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[name] = self.timings.get(name, 0.0) + now - self.t
            self.t = now


def knn_similarity(emb: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    out = np.empty(len(emb), dtype=np.float64)
    bank32 = bank.astype(np.float32, copy=False)
    k = max(1, min(k, len(bank32)))
    for i in range(0, len(emb), 512):  # bounded memory: 512 x bank rows at a time
        sims = emb[i : i + 512] @ bank32.T
        top = np.partition(sims, -k, axis=1)[:, -k:]
        out[i : i + 512] = top.mean(axis=1)
    return out


def unit_rows(X: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.maximum(n, 1e-12)).astype(np.float32)


def latest_model(models_dir: str | Path) -> Path | None:
    return newest_artifact(models_dir, MODEL_FILE)


def load_latest(models_dir: str | Path, teams: Teams | None = None) -> Classifier | None:
    path = latest_model(models_dir)
    return Classifier.load(path, teams=teams) if path else None
