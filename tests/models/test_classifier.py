"""The fast-path classifier on its own: train on the hand-written fixture, save, load, pick the newest."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from routing_engine.models.artifacts import new_version
from routing_engine.models.classifier import Classifier, latest_model, load_latest
from routing_engine.models.data import read_labelled
from routing_engine.models.training import train

from fixtures import FIXTURE, UNSEEN


@pytest.fixture(scope="module")
def trained(embedder):
    texts, labels = read_labelled(FIXTURE)
    t0 = time.perf_counter()
    clf = train(texts, labels, embedder, progress=False, source=FIXTURE)
    return clf, time.perf_counter() - t0


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
        clf.booster, clf.labels, version=new_version("lgbm"), embedder_name=clf.embedder_name,
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
    text = "my card was stolen"
    assert clf.predict(embedder.encode([text]), [text])[0].label == "lost_or_stolen_card"
