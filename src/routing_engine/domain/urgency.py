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
