"""Cascade models in isolation: LightGBM+linear calibrated fast path, tiny fine-tuned fallback, decide(), policy,
eval CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from routing_engine.models.cascade import Policy, choose_cascade, decide, policy_for_precision, should_escalate
from routing_engine.models.classifier import Classifier
from routing_engine.models.data import read_labelled
from routing_engine.models.device import resolve_device
from routing_engine.models.fallback import FallbackModel, latest_fallback
from routing_engine.models.finetune import train_fallback
from routing_engine.models.prediction import Prediction
from routing_engine.models.training import train

from fixtures import FIXTURE, UNSEEN


@pytest.fixture(scope="module")
def fast(embedder):
    texts, labels = read_labelled(FIXTURE)
    t0 = time.perf_counter()
    clf = train(texts, labels, embedder, progress=False, source=FIXTURE, target_precision=0.9)
    return clf, time.perf_counter() - t0


@pytest.fixture(scope="module")
def slow():
    texts, labels = read_labelled(FIXTURE)
    t0 = time.perf_counter()
    # Two passes over 60 rows with short sequences: a working artifact, not a good model; the 6-row holdout
    # still drives early stopping and the temperature.
    fb = train_fallback(texts, labels, epochs=2, max_seq_length=32, batch_size=16, progress=False, source=FIXTURE,
                        patience=1)
    return fb, time.perf_counter() - t0


def P(label: str, conf: float, team: str = "cards") -> Prediction:
    return Prediction(label, team, conf, [(label, conf)])


# --- fast path ---------------------------------------------------------------------------------

def test_fast_path_trains_calibrated(fast, embedder, tmp_path):
    clf, _ = fast
    assert clf.meta["linear_weight"] > 0 and clf.linear is not None and clf.temperature > 0
    assert clf.needs_texts and clf.lexical is not None  # trained from texts: the n-gram model is pooled in
    texts = list(UNSEEN)
    emb = embedder.encode(texts)
    with pytest.raises(ValueError, match="needs the ticket texts"):
        clf.predict_proba(emb)
    proba = clf.predict_proba(emb, texts)
    assert proba.shape == (3, len(clf.labels))
    assert np.all(proba >= 0) and np.all(proba <= 1) and np.all(proba.sum(1) <= 1 + 1e-9)
    assert [p.label for p in clf.predict(emb, texts)] == list(UNSEEN.values())
    assert isinstance(clf.policy, Policy) and 0 <= clf.policy.abstain_below <= 1
    # Round trip keeps the pooled regressions, the temperature, the policy and the OOD bank.
    loaded = Classifier.load(clf.save(tmp_path))
    np.testing.assert_allclose(loaded.predict_proba(emb, texts), proba, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(loaded.ood_similarity(emb), clf.ood_similarity(emb), rtol=1e-5)
    assert loaded.policy == clf.policy


def test_ood_similarity_ranks_unlike_text_lower(fast, embedder):
    clf, _ = fast
    sims = clf.ood_similarity(embedder.encode([
        "My card hasn't arrived yet, it has been two weeks",
        "What is the boiling point of tungsten in kelvin?",
    ]))
    assert sims.shape == (2,) and sims[0] > sims[1]


# --- fallback ----------------------------------------------------------------------------------

def test_tiny_fallback_trains_saves_and_loads(slow, tmp_path):
    fb, _ = slow
    assert fb.version.startswith("ft-minilm-") and len(fb.labels) == 6
    m = fb.metrics
    assert m["device"] == "cpu" and m["precision"] in ("fp32", "bf16") and m["n_holdout"] == 6
    # Early stopping kept the epoch with the best holdout accuracy (ties: the later one), and the model in hand
    # is that epoch's: its holdout accuracy (argmax is unchanged by the temperature) is the recorded one.
    hist = m["history"]
    assert [h["epoch"] for h in hist] == list(range(1, len(hist) + 1)) and 1 <= len(hist) <= 2
    best = max(range(len(hist)), key=lambda i: (hist[i]["holdout_accuracy"], i))
    assert m["best_epoch"] == best + 1 and m["holdout_accuracy"] == hist[best]["holdout_accuracy"]
    assert fb.meta["hyperparams"]["label_smoothing"] == 0.1 and fb.meta["hyperparams"]["lr"] == 1e-4
    preds = fb.predict(list(UNSEEN))
    assert len(preds) == 3
    for p in preds:
        assert p.label in fb.labels and 0 < p.confidence <= 1 and p.top[0] == (p.label, p.confidence)
        assert sum(c for _, c in p.top) <= 1 + 1e-9
    assert fb.predict([]) == []
    assert latest_fallback(tmp_path) is None
    path = fb.save(tmp_path)
    assert path.parent.name == "fallback" and latest_fallback(tmp_path) == path
    loaded = FallbackModel.load(path)
    assert loaded.version == fb.version and loaded.labels == fb.labels and not loaded.net.normalize
    np.testing.assert_allclose(loaded.predict_proba(list(UNSEEN)), fb.predict_proba(list(UNSEEN)), atol=1e-5)
    # An artifact written before the recipe changed has no normalize_pooled key: it gets the old geometry back.
    meta = json.loads((path / "meta.json").read_text())
    del meta["normalize_pooled"]
    (path / "meta.json").write_text(json.dumps(meta))
    old = FallbackModel.load(path)
    assert old.net.normalize
    assert not np.allclose(old.logits(list(UNSEEN)), fb.logits(list(UNSEEN)))


def test_device_choice():
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


# --- decide / policy ---------------------------------------------------------------------------

POLICY = Policy(escalate_below=0.6, abstain_below=0.35, ood_below=0.4, target_precision=0.9)


def test_confident_fast_answer_stands():
    fast = P("card_arrival", 0.9)
    assert not should_escalate(fast, 0.8, POLICY)
    d = decide(fast, None, 0.8, POLICY)
    assert (d["label"], d["team"], d["decided_by"], d["abstain"], d["degraded"]) == \
        ("card_arrival", "cards", "lightgbm", False, False)
    assert d["fast"] == {"label": "card_arrival", "confidence": 0.9} and d["fallback"] is None


def test_unsure_goes_to_transformer():
    fast = P("card_arrival", 0.5)
    assert should_escalate(fast, 0.8, POLICY)
    d = decide(fast, P("card_delivery_estimate", 0.8), 0.8, POLICY)
    assert d["decided_by"] == "transformer" and d["label"] == "card_delivery_estimate"
    assert d["fallback"]["confidence"] == 0.8 and "0.60" in d["reason"]


def test_breaker_open_keeps_fast_answer_degraded():
    d = decide(P("card_arrival", 0.5), None, 0.8, POLICY, fallback_in_use=False)
    assert not d["degraded"] and d["decided_by"] == "lightgbm" and "no fallback in use" in d["reason"]
    d = decide(P("card_arrival", 0.5), None, 0.8, POLICY, breaker_open=True)
    assert d["decided_by"] == "lightgbm" and d["label"] == "card_arrival" and d["degraded"]
    assert d["reason"].startswith("breaker open")


def test_abstain_on_low_final_confidence_and_ood():
    d = decide(P("card_arrival", 0.5), P("exchange_rate", 0.2, "fx"), 0.8, POLICY)
    assert d["abstain"] and d["team"] == "triage" and d["decided_by"] == "abstain"
    assert d["label"] == "exchange_rate" and "abstain" in d["reason"]
    fast = P("card_arrival", 0.99)
    assert not should_escalate(fast, 0.1, POLICY)  # unlike text is not worth the transformer's time
    d = decide(fast, None, 0.1, POLICY)
    assert d["abstain"] and d["team"] == "triage" and d["reason"].startswith("out of distribution")


def test_blend_mixes_both_models():
    policy = Policy(escalate_below=0.6, abstain_below=0.0, blend=0.5)
    fast = Prediction("a", "t1", 0.55, [("a", 0.55), ("b", 0.40)])
    slow = Prediction("c", "t3", 0.50, [("c", 0.50), ("b", 0.45)])
    d = decide(fast, slow, 1.0, policy, team_of={"a": "t1", "b": "t2", "c": "t3"}.get)
    assert d["label"] == "b" and d["team"] == "t2" and abs(d["confidence"] - 0.425) < 1e-9


def test_policy_for_precision_meets_target():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.05, 1.0, 5000)
    correct = rng.uniform(size=5000) < conf  # calibrated by construction
    for target in (0.8, 0.9, 0.95):
        pol = policy_for_precision(conf, correct, target, escalation_budget=0.2)
        kept = conf >= pol.abstain_below
        assert correct[kept].mean() >= target and kept.mean() > 0.1
        assert abs((conf < pol.escalate_below).mean() - 0.2) < 0.01
    # With the fallback's held-out answers the cut stays within the budget.
    fb_conf = np.clip(conf + 0.3, 0, 1)
    fb_ok = rng.uniform(size=5000) < fb_conf
    pol = policy_for_precision(conf, correct, 0.9, escalation_budget=0.25, fallback_confidences=fb_conf,
                               fallback_correct=fb_ok, ood_similarities=rng.uniform(0.5, 1, 5000))
    assert (conf < pol.escalate_below).mean() <= 0.25 + 1e-9 and pol.escalate_below > 0
    esc = conf < pol.escalate_below
    fconf, fok = np.where(esc, fb_conf, conf), np.where(esc, fb_ok, correct)
    assert fok[fconf >= pol.abstain_below].mean() >= 0.9
    assert 0.5 <= pol.ood_below < 0.52
    assert Policy.from_dict({**pol.to_dict(), "unknown": 1}) == pol


def _probs(pred: np.ndarray, conf: np.ndarray, k: int) -> np.ndarray:
    """Rows putting `conf` on `pred` and spreading the rest evenly."""
    out = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
    out[np.arange(len(pred)), pred] = conf
    return out


def test_choose_cascade_takes_the_cheapest_budget_that_is_nearly_best():
    n, k = 1000, 5
    y = np.arange(n) % k
    conf = np.linspace(0.3, 0.99, n)  # row i is the i-th least confident
    slow = _probs(y, np.full(n, 0.9), k)  # the fallback is right everywhere
    for wrong, budget in ((100, 0.10), (200, 0.20)):
        fast = _probs(np.where(np.arange(n) < wrong, (y + 1) % k, y), conf, k)
        pol, table = choose_cascade(fast, slow, y, 0.9, budget_ceiling=0.25)
        chosen = [r for r in table if r["chosen"]]
        assert len(chosen) == 1 and chosen[0]["budget"] == budget == pol.escalation_budget
        assert chosen[0]["accuracy"] == 1.0 and abs(chosen[0]["escalated"] - wrong / n) < 0.002
        assert {r["budget"] for r in table} == {0.0, 0.05, 0.10, 0.15, 0.20, 0.25}
    # A fallback no better than the fast path is never asked.
    fast = _probs(np.where(np.arange(n) < 100, (y + 1) % k, y), conf, k)
    pol, _ = choose_cascade(fast, _probs((y + 1) % k, np.full(n, 0.9), k), y, 0.9, budget_ceiling=0.25)
    assert pol.escalation_budget == 0.0 and pol.escalate_below == 0.0
    # One more fixable row at rank 140 gains 0.001 (one ticket in 1,000): not worth 5 more points of escalation.
    pred = np.where(np.arange(n) < 100, (y + 1) % k, y)
    pred[140] = (y[140] + 1) % k
    pol, table = choose_cascade(_probs(pred, conf, k), slow, y, 0.9, budget_ceiling=0.25)
    assert pol.escalation_budget == 0.10
    pol, _ = choose_cascade(_probs(pred, conf, k), slow, y, 0.9, budget_ceiling=0.25, tolerance=0.0)
    assert pol.escalation_budget == 0.15


def test_choose_cascade_blends_when_both_models_half_know():
    # On the 100 least confident rows each model alone ranks a wrong label first but both give the right one
    # second place: only the blend gets them right.
    n, k = 1000, 5
    y = np.arange(n) % k
    fast = _probs(y, np.linspace(0.5, 0.99, n), k)
    slow = _probs(y, np.full(n, 0.9), k)
    for i in range(100):
        fast[i] = 0.05
        fast[i, (y[i] + 1) % k], fast[i, y[i]] = 0.45, 0.40
        slow[i] = 0.05
        slow[i, (y[i] + 2) % k], slow[i, y[i]] = 0.45, 0.40
    pol, table = choose_cascade(fast, slow, y, 0.9, budget_ceiling=0.25)
    assert pol.blend > 0 and [r["accuracy"] for r in table if r["chosen"]] == [1.0]
    assert max(r["accuracy"] for r in table if r["blend"] == 0.0) == 0.9


# --- CLI ---------------------------------------------------------------------------------------

def test_eval_json_prints_the_keys(fast, slow, tmp_path, capsys):
    from routing_engine.cli import main

    fast[0].save(tmp_path)
    slow[0].save(tmp_path)
    assert main(["eval", "--data", str(FIXTURE), "--models-dir", str(tmp_path), "--json",
                 "--plot", str(tmp_path / "cov.png")]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "macro_f1", "escalation_rate", "abstain_rate", "fast_accuracy",
                "fallback_accuracy", "n", "coverage", "worst_classes", "latency_ms_per_ticket",
                "both_wrong_rate", "ceiling_accuracy"):
        assert key in report, key
    assert report["n"] == 60 and report["fallback_model"] == slow[0].version
    assert 0 <= report["accuracy"] <= 1 and report["fallback_accuracy"] is not None
    assert (tmp_path / "cov.png").stat().st_size > 1000
