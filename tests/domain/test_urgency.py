"""Urgency S: ordering, bounds, the team prior."""

from __future__ import annotations

import math

import pytest

from routing_engine.domain.urgency import score


def test_urgency_ordering_and_bounds():
    stolen, parts = score("", "URGENT my card was stolen and someone is spending money right now!!", "security", 0.9)
    question, _ = score("", "How do I change my PIN?", "cards", 0.9)
    login, _ = score("", "Cannot log in to the app, it says server error", "security", 0.9)
    calm, _ = score("", "Not urgent, just wondering how the exchange rate works", "fx_and_fees", 0.9)
    assert stolen > 0.8 and login <= 0.8
    assert stolen > login > question
    assert calm < 0.2
    assert parts["money_loss"] > 0 and parts["time_pressure"] > 0 and parts["team_prior"] > 0
    for s, b in [("", ""), ("!!!!!!!!", "FRAUD STOLEN URGENT NOW " * 50), ("hi", "how do i " * 50)]:
        v, _ = score(s, b, "security", 1.0)
        assert 0.0 <= v <= 1.0


def test_urgency_team_prior_needs_confidence():
    body = "My card payment looks odd"
    assert score("", body, "security", 0.95)[0] > score("", body, "security", 0.05)[0]
    assert score("", body, "security", 0.9)[0] > score("", body, "fx_and_fees", 0.9)[0]


def test_growth_adds_to_the_logit_per_doubling_over_the_bar_capped_and_only_for_real_groups():
    from routing_engine.domain.urgency import GROWTH_CAP, growth, with_growth

    assert growth({}) == 0.0 and growth({"ratio": 50.0, "size": 2}) == 0.0  # no rate, or a pair
    assert growth({"ratio": 1.5, "size": 40}) == 0.0  # ordinary traffic
    assert growth({"ratio": 4.0, "size": 10}) == pytest.approx(1.0)  # the burst bar: +1
    assert growth({"ratio": 1000.0, "size": 10}) == GROWTH_CAP
    s, feats = with_growth({"bias": -1.5, "logit": -1.5}, {"ratio": 8.0, "size": 10})
    assert feats["growth"] == pytest.approx(2.0) and feats["logit"] == pytest.approx(0.5)
    assert s == pytest.approx(1 / (1 + math.exp(-0.5)))
    assert with_growth({"logit": -1.5}, {"ratio": 1.0, "size": 10}) is None
