"""Model objects in isolation: team map, classifier train/save/load, urgency score."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from routing_engine.classifier import (
    Classifier,
    default_training_data,
    latest_model,
    load_latest,
    new_version,
    read_labelled,
    train,
)
from routing_engine.teams import DEFAULT_TEAMS_PATH, load_teams
from routing_engine.urgency import score

from conftest import FIXTURE, UNSEEN

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="module")
def trained(embedder):
    texts, labels = read_labelled(FIXTURE)
    t0 = time.perf_counter()
    clf = train(texts, labels, embedder, progress=False, source=FIXTURE)
    return clf, time.perf_counter() - t0


# --- teams -------------------------------------------------------------------------------------

def test_teams_yaml_covers_banking77_exactly_once():
    categories = SHARED / "datasets" / "banking77" / "categories.json"
    if not categories.is_file():
        pytest.skip(f"BANKING77 categories not found at {categories} (shared datasets absent)")
    intents = json.loads(categories.read_text())
    doc = yaml.safe_load(DEFAULT_TEAMS_PATH.read_text())
    mapped = Counter(i for spec in doc["teams"].values() for i in spec["intents"])
    assert sorted(mapped) == sorted(intents)
    assert set(mapped.values()) == {1}


def test_team_of_defaults():
    teams = load_teams()
    assert teams.team_of("lost_or_stolen_card") == "security"
    assert teams.team_of("reverted_card_payment?") == "payments"
    assert teams.team_of("no_such_intent") == "general"
    # A user's label set made of team names routes to itself.
    assert teams.team_of("cards") == "cards"
    assert "general" in teams.names and "security" in teams.names
    assert teams.description("security")


# --- classifier --------------------------------------------------------------------------------

def test_train_on_fixture_is_fast_and_generalises(trained, embedder):
    clf, seconds = trained
    assert seconds < 10, f"training on 60 rows took {seconds:.1f}s"
    assert clf.version.startswith("lgbm-") and len(clf.labels) == 6
    preds = clf.predict(embedder.encode(list(UNSEEN)), list(UNSEEN))
    got = {text: p.label for text, p in zip(UNSEEN, preds)}
    assert got == UNSEEN
    for p in preds:
        assert p.team == clf.teams.team_of(p.label)
        assert len(p.top) == 3 and p.top[0] == (p.label, p.confidence)
        assert 0.0 < p.confidence <= 1.0


def test_save_load_round_trip(trained, embedder, tmp_path):
    clf, _ = trained
    path = clf.save(tmp_path)
    assert path.name == clf.version
    meta = json.loads((path / "meta.json").read_text())
    assert meta["labels"] == clf.labels and meta["rows"] == 60
    assert meta["training_data_sha256"] and meta["embedder_name"] == embedder.name
    loaded = Classifier.load(path)
    assert loaded.version == clf.version and loaded.labels == clf.labels
    texts = list(UNSEEN)
    emb = embedder.encode(texts)
    np.testing.assert_allclose(loaded.predict_proba(emb, texts), clf.predict_proba(emb, texts), rtol=1e-6, atol=1e-9)
    assert [p.label for p in loaded.predict(emb, texts)] == [p.label for p in clf.predict(emb, texts)]


def test_latest_model_picks_newest_complete(trained, tmp_path):
    clf, _ = trained
    assert latest_model(tmp_path) is None and load_latest(tmp_path / "missing") is None
    old = clf.save(tmp_path)
    newer = Classifier(
        clf.booster, clf.labels, version=new_version(), embedder_name=clf.embedder_name,
        teams=clf.teams, metrics=clf.metrics, meta={**clf.meta, "created_at": "2999-01-01T00:00:00+00:00"},
    )
    new = newer.save(tmp_path)
    assert old != new
    # A folder without model.txt is a save in progress or a broken one; never pick it.
    broken = tmp_path / "lgbm-30000101T000000-ffffff"
    broken.mkdir()
    (broken / "meta.json").write_text(json.dumps({"created_at": "3000-01-01T00:00:00+00:00"}))
    assert latest_model(tmp_path) == new
    assert load_latest(tmp_path).version == newer.version


def test_tiny_data_without_holdout(embedder):
    texts, labels = read_labelled(FIXTURE)
    clf = train(texts[::2], labels[::2], embedder, progress=False, holdout=0.0)
    assert "holdout_accuracy" not in clf.metrics
    assert clf.predict(embedder.encode(["my card was stolen"]), ["my card was stolen"])[0].label == "lost_or_stolen_card"


def test_read_labelled_jsonl(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"body": "a", "queue": "x"}\n\n{"body": "b", "queue": "y"}\n{"body": "", "queue": "y"}\n')
    assert read_labelled(p, text_col="body", label_col="queue") == (["a", "b"], ["x", "y"])
    with pytest.raises(KeyError):
        read_labelled(p)


def test_default_training_data_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTING_TRAIN_DATA", str(FIXTURE))
    assert default_training_data() == FIXTURE
    monkeypatch.setenv("ROUTING_TRAIN_DATA", str(tmp_path / "nope.csv"))
    assert default_training_data() is None


# --- urgency -----------------------------------------------------------------------------------

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
