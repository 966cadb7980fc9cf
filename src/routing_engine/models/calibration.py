"""Probability arithmetic shared by the models: softmax, log-linear pooling, temperature scaling, calibration error."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A temperature (or a pooling weight, or a threshold) fitted on fewer held-out rows than this is noise.
MIN_CALIBRATION_ROWS = 100


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def pool(base_logits: np.ndarray, other_logits: np.ndarray, w: float) -> np.ndarray:
    """Log-linear pooling of two models' class distributions (`w` = the second one's share)."""
    return (1.0 - w) * log_softmax(base_logits) + w * log_softmax(np.asarray(other_logits, dtype=np.float64))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The one temperature that minimises held-out log loss (Guo et al. 2017); argmax is unchanged."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def ece(confidence: Sequence[float], correct: Sequence[bool], bins: int = 15) -> float:
    """Expected calibration error: |accuracy - confidence| averaged over equal-width confidence bins."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if len(conf) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(ok[m].mean() - conf[m].mean())
    return float(total)
