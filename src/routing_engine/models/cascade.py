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
    escalation_budget: float = 0.0  # largest share escalate_below was chosen to send (kept for the audit trail)

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
    escalate_below = (0.0 if n_esc == 0 else float(order[n_esc]) if n_esc < len(conf)
                      else float(np.nextafter(order[-1], np.inf)))
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
                  target_precision=float(target_precision), blend=float(blend), escalation_budget=budget)


BLENDS = (0.0, 0.25, 0.5, 0.75)
# Escalation budgets tried, as shares of tickets, up to the configured ceiling (and 0: never escalate). The
# cheapest budget within BUDGET_TOLERANCE of the best validation accuracy wins: a point of accuracy is worth
# escalating for, a tenth of a point on ~1,000 holdout rows (one ticket) is noise, not worth the fallback's time.
BUDGETS = (0.05, 0.10, 0.15, 0.20, 0.25)
BUDGET_TOLERANCE = 0.001


def choose_cascade(
    fast_proba: np.ndarray, slow_proba: np.ndarray, y: np.ndarray, target_precision: float, *,
    budget_ceiling: float = 0.25, blends: Sequence[float] = BLENDS, budgets: Sequence[float] = BUDGETS,
    tolerance: float = BUDGET_TOLERANCE,
) -> tuple[Policy, list[dict[str, Any]]]:
    """The cascade decision from validation predictions of both models (never training rows): the escalation
    budget (cheapest within `tolerance` of the best accuracy), the blend weight of the fast path's probabilities
    on escalated tickets (blending beat replacing by 0.3-0.8 points in issue 14's runs), the escalate threshold
    inside that budget and the abstain threshold for the target precision. Returns (policy, the search table).
    """
    fast_proba, slow_proba, y = np.asarray(fast_proba), np.asarray(slow_proba), np.asarray(y)
    fast_conf, fast_ok = fast_proba.max(1), fast_proba.argmax(1) == y
    ceiling = float(np.clip(budget_ceiling, 0.0, 1.0))
    rows: list[tuple[dict[str, Any], Policy]] = []
    # Budget 0 (never escalate) is a candidate too: a fallback that does not pay for itself is not asked.
    for b in sorted({0.0, ceiling} | {b for b in budgets if b < ceiling}):
        for w in blends:
            pb = w * fast_proba + (1.0 - w) * slow_proba
            pol = policy_for_precision(fast_conf, fast_ok, target_precision, escalation_budget=b,
                                       fallback_confidences=pb.max(1), fallback_correct=pb.argmax(1) == y, blend=w)
            esc = fast_conf < pol.escalate_below
            acc = float(np.where(esc, pb.argmax(1) == y, fast_ok).mean())
            rows.append(({"budget": b, "blend": w, "escalate_below": round(pol.escalate_below, 4),
                          "escalated": round(float(esc.mean()), 4), "accuracy": round(acc, 4)}, pol))
    top = max(r["accuracy"] for r, _ in rows)
    cheapest = min(r["budget"] for r, _ in rows if r["accuracy"] >= top - tolerance - 1e-12)
    # Within that budget the most accurate blend; ties go to the smaller weight (listed first).
    pick = max((rp for rp in rows if rp[0]["budget"] == cheapest), key=lambda rp: rp[0]["accuracy"])
    table = [{**r, "chosen": r is pick[0]} for r, _ in rows]
    return pick[1], table


__all__ = ["Policy", "choose_cascade", "decide", "should_escalate", "policy_for_precision", "trail", "TRIAGE_TEAM"]
