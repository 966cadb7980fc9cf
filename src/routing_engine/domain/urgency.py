"""Urgency score v1: a transparent weighted sum of text cues and a team prior, squashed into [0, 1]."""

from __future__ import annotations

import math
import re

# Weights are hand-set, not fitted: there is no labelled urgency data for our domain yet, and a
# readable formula is easier to argue about with support leads than a learned one.
BIAS = -1.5

KEYWORD_GROUPS: dict[str, tuple[float, tuple[str, ...]]] = {
    "outage": (1.2, (
        r"outage", r"(?:is|are|went|gone) down", r"not working", r"(?:doesn'?t|does not|won'?t|will not) work",
        r"(?:can'?t|cannot|can not|unable to) (?:access|log ?in|sign ?in|use|pay|withdraw)",
        r"locked out", r"blocked", r"frozen", r"crash(?:ed|es|ing)?", r"server error",
    )),
    "money_loss": (1.6, (
        r"charged twice", r"double[- ]charged", r"stolen", r"stole", r"fraud\w*", r"scam\w*",
        r"unauthori[sz]ed", r"lost (?:my |the )?(?:card|phone|wallet)", r"compromised", r"hacked",
        r"(?:don'?t|do not|didn'?t|did not) recogni[sz]e", r"not recogni[sz]ed",
        r"someone (?:else )?(?:is )?(?:using|spending|took)",
        r"money (?:is )?(?:gone|missing|disappeared)",
    )),
    "time_pressure": (1.4, (
        r"urgent\w*", r"asap", r"a\.s\.a\.p", r"immediately", r"right now", r"right away", r"today",
        r"emergency", r"as soon as possible", r"critical", r"blocker", r"help!",
    )),
    "calm": (-1.2, (
        r"just wondering", r"wondering", r"curious", r"how (?:do|can|would|should) i", r"is it possible",
        r"no rush", r"not urgent", r"when you (?:get|have) a (?:chance|moment)", r"(?:a )?quick question",
        r"what is", r"what are", r"out of interest", r"nice to have", r"feature request",
    )),
}

# Share of the model's belief that the ticket belongs to this team; security mistakes cost money fastest.
TEAM_PRIOR: dict[str, float] = {
    "security": 0.9,
    "payments": 0.4,
    "cash_and_topups": 0.3,
    "accounts": 0.1,
    "cards": 0.0,
    "fx_and_fees": -0.2,
    "general": 0.0,
}

EXCLAMATION_WEIGHT = 0.35
EXCLAMATION_CAP = 3
CAPS_WEIGHT = 1.5
# Acronyms are written in capitals by everyone; they are not shouting.
_ACRONYMS = {"ATM", "PIN", "USD", "EUR", "GBP", "API", "APP", "IBAN", "SWIFT", "SEPA", "FAQ", "NFC", "CVV", "CVC",
             "HDFS", "YARN", "JVM", "JAR", "NPE", "SSL", "TLS", "URL", "HTTP", "HTTPS", "SQL", "DNS", "VPN",
             "AND", "THE"}
_WORD = re.compile(r"[A-Za-z][A-Za-z']+")

_COMPILED = {
    name: (weight, re.compile(r"\b(?:" + "|".join(pats) + r")", re.IGNORECASE))
    for name, (weight, pats) in KEYWORD_GROUPS.items()
}


def _keyword_contribution(weight: float, hits: int) -> float:
    # The first hit carries the signal; repeats add a little and saturate, so spam can't max the score.
    if hits == 0:
        return 0.0
    return weight * (1.0 + 0.25 * (min(hits, 3) - 1))


def _caps_ratio(text: str) -> float:
    words = [w for w in _WORD.findall(text) if len(w) >= 3 and w.upper() not in _ACRONYMS]
    if len(words) < 2:
        return 0.0
    return sum(1 for w in words if w.isupper()) / len(words)


def score(subject: str, body: str, team: str, confidence: float) -> tuple[float, dict[str, float]]:
    """Return (S in [0, 1], contribution of each feature to the logit)."""
    subject, body = subject or "", body or ""
    text = f"{subject}\n{body}"
    contributions: dict[str, float] = {"bias": BIAS}

    weight, calm_re = _COMPILED["calm"]
    calm_hits = len(calm_re.findall(text))
    contributions["calm"] = _keyword_contribution(weight, calm_hits)
    # "not urgent" must not also count as "urgent".
    scan = calm_re.sub(" ", text)
    for name in ("outage", "money_loss", "time_pressure"):
        weight, rx = _COMPILED[name]
        contributions[name] = _keyword_contribution(weight, len(rx.findall(scan)))

    contributions["exclamations"] = EXCLAMATION_WEIGHT * min(text.count("!"), EXCLAMATION_CAP)
    contributions["caps"] = CAPS_WEIGHT * _caps_ratio(text)
    conf = min(max(float(confidence or 0.0), 0.0), 1.0)
    contributions["team_prior"] = TEAM_PRIOR.get(team, 0.0) * conf

    logit = sum(contributions.values())
    s = 1.0 / (1.0 + math.exp(-logit))
    contributions = {k: round(v, 4) for k, v in contributions.items()}
    contributions["logit"] = round(logit, 4)
    return s, contributions


# Urgency from growth: a ticket whose group grows fast is part of an outage in progress. The dedup stage adds
# GROWTH_WEIGHT to the logit per doubling of the group's rate over GROWTH_FROM x its baseline (the storm test's
# ratio, models/grouping.py), capped at GROWTH_CAP, for groups of GROWTH_MIN_SIZE or more. At the burst bar (4x)
# that is +1 (a plain ticket 0.18 -> 0.38), at 8x and over +2 (-> 0.62): it moves such tickets up their team's
# queue, and with one text cue (outage +1.2) over the urgent threshold 0.8. Hand-set like the weights above.
GROWTH_WEIGHT = 1.0
GROWTH_FROM = 2.0
GROWTH_CAP = 2.0
GROWTH_MIN_SIZE = 3


def growth(storm: dict) -> float:
    """The logit the group's growth adds (0 when the storm test has no rate: the test is off, or a pair)."""
    ratio, size = storm.get("ratio"), storm.get("size") or 0
    if ratio is None or size < GROWTH_MIN_SIZE or ratio <= GROWTH_FROM:
        return 0.0
    return min(GROWTH_CAP, GROWTH_WEIGHT * math.log2(ratio / GROWTH_FROM))


def with_growth(features: dict[str, float], storm: dict) -> tuple[float, dict[str, float]] | None:
    """(S, features) with the growth term added to the text score's logit, or None when it adds nothing."""
    g = growth(storm)
    if g <= 0 or "logit" not in features:
        return None
    logit = features["logit"] + g
    out = {**features, "growth": round(g, 4), "logit": round(logit, 4)}
    return 1.0 / (1.0 + math.exp(-logit)), out


# The door's lane (infra/scripts.Scripts.lane) has only the text: no team yet. The full score adds the team prior
# (up to MAX_TEAM_PRIOR x confidence), so the door sends a ticket to the urgent lane when the text alone could
# cross the threshold with the highest prior: every ticket that enrich will find urgent is in the lane (the
# text-only S missed 44% of them in two-storms and 67% in overload; this catches all, and flags 1-2x as many
# tickets as end up urgent: bench/door_lane.py). Enrich moves the rest to the normal stream.
MAX_TEAM_PRIOR = max(0.0, *TEAM_PRIOR.values())


def door_urgent(subject: str, body: str, threshold: float) -> bool:
    """Could this ticket be urgent (S > threshold) once its team is known? Text cues only."""
    if threshold >= 1.0:
        return False
    if threshold <= 0.0:
        return True
    _, f = score(subject, body, "", 0.0)
    return f["logit"] + MAX_TEAM_PRIOR > math.log(threshold / (1.0 - threshold))
