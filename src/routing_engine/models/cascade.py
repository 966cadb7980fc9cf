"""Cascade policy: when the fast answer stands, when the transformer is asked, when a ticket goes to triage.

Pure functions over `Prediction`s and numbers, so the enrich and fallback stages, the evaluator and the
benchmark all apply exactly the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .prediction import Prediction

TRIAGE_TEAM = "triage"


@dataclass
class Policy:
    escalate_below: float = 0.6     # fast-path calibrated confidence below this -> ask the fallback
    abstain_below: float = 0.3      # final confidence below this -> triage
    ood_below: float = 0.0          # similarity to the training data below this -> triage (0 = off)
    target_precision: float = 0.9   # what the thresholds were chosen for (kept for the audit trail)
    blend: float = 0.0              # weight of the fast path's probabilities in the transformer's answer

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Policy:
        known = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in (d or {}).items() if k in known})


def should_escalate(fast: Prediction, ood_sim: float, policy: Policy) -> bool:
    # Out-of-distribution text goes to triage whatever the models say, so asking the slow one is wasted work.
    if ood_sim < policy.ood_below:
        return False
    return fast.confidence < policy.escalate_below


def _blend(fast: Prediction, slow: Prediction, w: float) -> tuple[str, float, list[tuple[str, float]]]:
    """Mix the two models' top lists; a label missing from one list counts as 0 there (its mass is tiny)."""
    scores: dict[str, float] = {}
    for lab, p in fast.top:
        scores[lab] = scores.get(lab, 0.0) + w * float(p)
    for lab, p in slow.top:
        scores[lab] = scores.get(lab, 0.0) + (1.0 - w) * float(p)
    top = sorted(scores.items(), key=lambda kv: -kv[1])[: max(len(fast.top), len(slow.top))]
    return top[0][0], top[0][1], top


def decide(
    fast: Prediction, slow: Prediction | None, ood_sim: float, policy: Policy, *, breaker_open: bool = False,
    team_of: Callable[[str], str] | None = None, fallback_in_use: bool = True,
) -> dict[str, Any]:
    """The final routing decision for one ticket, with the reason spelled out for the audit trail.

    `fallback_in_use=False` (escalation switched off, or no fallback trained): an unsure ticket keeps the fast
    answer as the normal outcome, not as `degraded` (degraded = the fallback should have answered and did not).
    """
    ood_sim = float(ood_sim)
    out: dict[str, Any] = {
        "fast": {"label": fast.label, "confidence": float(fast.confidence)},
        "fallback": None if slow is None else {"label": slow.label, "confidence": float(slow.confidence)},
        "degraded": False,
    }
    label, team, conf = fast.label, fast.team, float(fast.confidence)
    if ood_sim < policy.ood_below:
        return {**out, "label": label, "team": TRIAGE_TEAM, "confidence": conf, "decided_by": "abstain",
                "abstain": True, "reason": f"out of distribution (sim {ood_sim:.2f} < {policy.ood_below:.2f})"}
    decided_by = "lightgbm"
    if not should_escalate(fast, ood_sim, policy):
        reason = f"confident ({conf:.2f} >= escalate {policy.escalate_below:.2f})"
    elif slow is not None:
        decided_by = "transformer"
        reason = f"below escalate threshold {policy.escalate_below:.2f}"
        if policy.blend > 0:
            label, conf, _ = _blend(fast, slow, policy.blend)
            team = (slow.team if label == slow.label else fast.team if label == fast.label
                    else team_of(label) if team_of else slow.team)
        else:
            label, team, conf = slow.label, slow.team, float(slow.confidence)
    elif not fallback_in_use:
        reason = f"below escalate threshold {policy.escalate_below:.2f}; no fallback in use: fast answer"
    else:
        out["degraded"] = True
        reason = ("breaker open: kept fast answer" if breaker_open
                  else "no fallback answer: kept fast answer")
    if conf < policy.abstain_below:
        return {**out, "label": label, "team": TRIAGE_TEAM, "confidence": conf, "decided_by": "abstain",
                "abstain": True, "reason": f"final confidence {conf:.2f} < abstain {policy.abstain_below:.2f}"}
    return {**out, "label": label, "team": team, "confidence": conf, "decided_by": decided_by,
            "abstain": False, "reason": reason}


def trail(decision: dict[str, Any], fast: dict, slow: dict | None, ood_sim: float, policy: Policy,
          extra: dict) -> dict[str, Any]:
    """The classification's decision trail, as stored on the ticket and carried downstream: what was decided
    and by which model, both models' answers (Prediction.to_dict), the thresholds, plus the stage's `extra`."""
    return {
        "category": decision["label"], "team": decision["team"], "confidence": round(float(decision["confidence"]), 4),
        "decided_by": decision["decided_by"], "reason": decision["reason"], "abstain": decision["abstain"],
        "degraded": decision.get("degraded", False),
        "model": (slow or fast)["model"] if decision["decided_by"] == "transformer" else fast["model"],
        "fast": fast, "fallback": slow, "ood_similarity": round(float(ood_sim), 4),
        "thresholds": {"escalate_below": policy.escalate_below, "abstain_below": policy.abstain_below,
                       "ood_below": policy.ood_below, "target_precision": policy.target_precision},
        **extra,
    }


def _max_coverage_threshold(conf: np.ndarray, correct: np.ndarray, target: float) -> float:
    """Lowest confidence threshold whose kept set (conf >= t) still has precision >= target."""
    if len(conf) == 0:
        return 0.0
    order = np.argsort(-conf, kind="stable")
    c, ok = conf[order], correct[order].astype(np.float64)
    prec = np.cumsum(ok) / np.arange(1, len(ok) + 1)
    # Only cut between distinct confidences: a threshold cannot split tied rows.
    last_of_tie = np.r_[c[1:] != c[:-1], True]
    good = np.flatnonzero((prec >= target) & last_of_tie)
    if len(good) == 0:
        return float(np.nextafter(c[0], np.inf))  # nothing meets the target: abstain on everything
    k = good[-1]
    return 0.0 if k == len(c) - 1 else float(c[k])


def policy_for_precision(
    confidences: Sequence[float],
    correct: Sequence[bool],
    target_precision: float,
    *,
    escalation_budget: float = 0.25,
    fallback_confidences: Sequence[float] | None = None,
    fallback_correct: Sequence[bool] | None = None,
    ood_similarities: Sequence[float] | None = None,
    ood_quantile: float = 0.01,
    blend: float = 0.0,
) -> Policy:
    """Thresholds from held-out predictions (never the training rows).

    - escalate_below: escalate the least confident `escalation_budget` share of tickets; with the fallback's
      held-out answers on the same rows, the cut (within the budget) that maximises cascade accuracy.
    - abstain_below: the lowest final confidence at which the kept tickets still meet `target_precision`.
    - ood_below: the `ood_quantile` quantile of in-distribution similarities (that share of in-scope traffic is
      given up to catch unlike text); 0 (off) without similarities.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if len(conf) == 0:
        return Policy(target_precision=float(target_precision), blend=blend)
    budget = float(np.clip(escalation_budget, 0.0, 1.0))
    order = np.sort(conf)
    n_esc = int(np.floor(budget * len(conf)))
    escalate_below = float(order[n_esc]) if n_esc < len(conf) else float(np.nextafter(order[-1], np.inf))
    final_conf, final_ok = conf, ok
    if fallback_confidences is not None and fallback_correct is not None and n_esc > 0:
        fconf = np.asarray(fallback_confidences, dtype=np.float64)
        fok = np.asarray(fallback_correct, dtype=bool)
        best = (float(ok.mean()), 0.0)
        for t in np.unique(order[: n_esc + 1]):
            esc = conf < t
            acc = float(np.where(esc, fok, ok).mean())
            if acc > best[0] + 1e-12:
                best = (acc, float(t))
        escalate_below = best[1]
        esc = conf < escalate_below
        final_conf, final_ok = np.where(esc, fconf, conf), np.where(esc, fok, ok)
    abstain_below = _max_coverage_threshold(final_conf, final_ok, float(target_precision))
    ood_below = 0.0
    if ood_similarities is not None and len(ood_similarities):
        ood_below = float(np.quantile(np.asarray(ood_similarities, dtype=np.float64), ood_quantile))
    return Policy(escalate_below=escalate_below, abstain_below=abstain_below, ood_below=ood_below,
                  target_precision=float(target_precision), blend=float(blend))


__all__ = ["Policy", "decide", "should_escalate", "policy_for_precision", "trail", "TRIAGE_TEAM"]
