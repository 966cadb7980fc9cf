"""Labelled data: reading files, the default data set."""

from __future__ import annotations

import pytest

from routing_engine.models.data import default_training_data, read_labelled

from fixtures import FIXTURE


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
