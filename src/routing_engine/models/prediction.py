"""A model's answer for one ticket: label, team, calibrated confidence and the runner-up labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Prediction:
    label: str
    team: str
    confidence: float
    top: list[tuple[str, float]]

    def to_dict(self, model: str) -> dict:
        """As on the decision trail: which model said it, and its top labels."""
        return {"label": self.label, "team": self.team, "confidence": round(float(self.confidence), 4),
                "model": model, "top": [[label, round(float(c), 4)] for label, c in self.top]}

    @classmethod
    def from_dict(cls, d: dict) -> Prediction:
        return cls(d["label"], d["team"], d["confidence"], [tuple(x) for x in d["top"]])


def predictions(proba: np.ndarray, labels: Sequence[str], team_of: Callable[[str], str],
                k: int = 3) -> list[Prediction]:
    """One Prediction per row of class probabilities, with its top-k labels."""
    k = min(k, len(labels))
    out = []
    for row in proba:
        idx = np.argsort(-row)[:k]
        top = [(labels[i], float(row[i])) for i in idx]
        out.append(Prediction(top[0][0], team_of(top[0][0]), top[0][1], top))
    return out
