"""Urgency S: ordering, bounds, the team prior."""

from __future__ import annotations

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
