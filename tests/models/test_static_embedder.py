"""The static (model2vec) embedder: distilled from the local MiniLM, same contract as Embedder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("model2vec", reason="the static embedder is an optional extra: pip install -e '.[static]'")

from routing_engine.models.static_embedder import STATIC_DIRNAME, StaticEmbedder, distill_static, is_static_model  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tickets.csv"

# Distilling runs MiniLM once per vocabulary token: ~2.5 min on 2 busy cores, so the first run may need
# more than the suite's default 300 s timeout; later runs reuse the cached artifact and take seconds.
pytestmark = pytest.mark.timeout(900)

HELD_OUT = {
    "I ordered a card two weeks ago and it still is not here": "card_arrival",
    "Someone stole my wallet with my card in it": "lost_or_stolen_card",
    "What rate do you use to convert dollars to euros?": "exchange_rate",
}


@pytest.fixture(scope="session")
def static_dir(request, tmp_path_factory) -> Path:
    """A distilled static model, reused across runs from pytest's cache (or ROUTING_TEST_STATIC_MODEL).

    Distilling takes minutes, not seconds, so it happens once per checkout rather than once per session;
    with the cache provider off it falls back to a session tmp dir.
    """
    env = os.environ.get("ROUTING_TEST_STATIC_MODEL")
    if env:
        return Path(env)
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("static-embedder") if cache is not None else tmp_path_factory.mktemp("static-embedder")
    path = root / STATIC_DIRNAME
    if not is_static_model(path):
        distill_static(out_dir=path, pca_dims=256)
    return path


@pytest.fixture(scope="session")
def static(static_dir) -> StaticEmbedder:
    return StaticEmbedder(static_dir)


def test_artifact_is_a_model2vec_folder(static_dir):
    assert is_static_model(static_dir)
    # The tokenizer travels with the model: loading never needs MiniLM or the hub.
    assert (static_dir / "tokenizer.json").stat().st_size > 100_000


def test_shape_dtype_and_normalisation(static):
    X = static.encode(["my card has not arrived", "How do I verify my identity?", "ok"])
    assert static.dim == 256 and static.name == "static-minilm"
    assert X.shape == (3, 256) and X.dtype == np.float32 and X.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert static.encode([]).shape == (0, 256)
    # No known token: a zero row (cosine 0 with everything), never NaN.
    empty = static.encode(["", "   "])
    assert not np.isnan(empty).any() and np.allclose(empty, 0.0)


def test_paraphrases_are_closer_than_unrelated_texts(static):
    a, para, other = static.encode([
        "My new card still hasn't arrived in the post",
        "When will the card you sent me get here?",
        "What exchange rate do you charge for euros?",
    ])
    assert a @ para > a @ other + 0.1
    # A bag of token vectors needs some shared words: "A cash machine swallowed my card" scores no closer
    # to this than the unrelated text does (0.48 vs 0.47), where MiniLM separates them. See bench/embedders.py.
    b, para_b, other_b = static.encode([
        "The ATM kept my card and would not give it back",
        "The cash machine took my card and did not return it",
        "I need to prove who I am to open the account",
    ])
    assert b @ para_b > b @ other_b + 0.1


def test_lightgbm_trains_on_static_embeddings(static):
    from routing_engine.models.data import read_labelled
    from routing_engine.models.training import train

    texts, labels = read_labelled(FIXTURE)
    clf = train(texts, labels, static, progress=False, holdout=0)
    assert clf.embedder_name == "static-minilm"
    preds = clf.predict(static.encode(list(HELD_OUT)), list(HELD_OUT))
    assert {t: p.label for t, p in zip(HELD_OUT, preds)} == HELD_OUT


def test_make_embedder_reuses_the_distilled_model(static_dir, tmp_path):
    from routing_engine.models.embedder import make_embedder, shared_embedder

    (tmp_path / STATIC_DIRNAME).symlink_to(static_dir, target_is_directory=True)
    emb = make_embedder("static", tmp_path)  # present: loads, does not distil (that would take minutes)
    assert isinstance(emb, StaticEmbedder) and emb.dim == 256
    assert shared_embedder(kind="static", models_dir=tmp_path) is shared_embedder(kind="static", models_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown embedder kind"):
        make_embedder("word2vec", tmp_path)
    with pytest.raises(ValueError, match="models_dir"):
        make_embedder("static")


def test_shared_embedder_default_is_still_minilm(embedder):
    from routing_engine.models.embedder import shared_embedder
    from routing_engine.models.minilm import Embedder

    assert shared_embedder() is embedder and isinstance(embedder, Embedder) and embedder.dim == 384
