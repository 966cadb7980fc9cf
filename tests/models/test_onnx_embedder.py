"""The int8 ONNX Runtime MiniLM: built in a temp dir from the shipped weights, its embeddings within the bound of
fp32 on texts it was not checked on, and every way it can be unusable ending in PyTorch with the reason logged."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from structlog.testing import capture_logs

from routing_engine.models import onnx_minilm
from routing_engine.models.data import read_labelled
from routing_engine.models.embedder import pipeline_embedder
from routing_engine.models.minilm import Embedder

from fixtures import FIXTURE, overtakes


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedder):
    """One artifact for the module (export + quantize + check: ~20 s on 2 busy cores)."""
    models = tmp_path_factory.mktemp("onnx-models")
    path = onnx_minilm.build(models, embedder)
    return models, path


def copy_of(built, tmp_path):
    models, path = built
    dest = tmp_path / "models" / onnx_minilm.ONNX_DIRNAME / path.name
    shutil.copytree(path, dest)
    return tmp_path / "models", dest


def test_build_publishes_a_checked_versioned_artifact(built):
    models, path = built
    assert path.parent == models / onnx_minilm.ONNX_DIRNAME and path.name.startswith("onnx-int8-")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    meta = json.loads((path / "meta.json").read_text())
    check = meta["check"]
    assert check["passed"] and check["probes"] == onnx_minilm.PROBE_TEXTS + len(onnx_minilm.EDGE_TEXTS)
    assert check["mean_cosine"] >= onnx_minilm.DEFAULT_MIN_COSINE and check["min_cosine"] >= check["bound_min"]
    assert meta["source_sha256"] == onnx_minilm.weights_sha() and meta["max_seq_length"] == 256
    assert meta["rates"]["onnx_int8_texts_per_s"] > 0 and meta["rates"]["torch_fp32_texts_per_s"] > 0
    assert onnx_minilm.latest(models) == path


def test_int8_embeddings_match_fp32_on_unseen_texts(built, embedder):
    texts, _ = read_labelled(FIXTURE)  # the test tickets: none of them is in the probe set
    texts = list(texts) + ["x", "Card " * 400]
    onnx = onnx_minilm.OnnxEmbedder(built[1])
    got, ref = onnx.encode(texts), embedder.encode(texts)
    assert got.shape == ref.shape == (len(texts), 384) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
    check = onnx_minilm.cosine_check(got, ref, onnx_minilm.DEFAULT_MIN_COSINE)
    assert check["passed"], check
    # length-sorted batches come back in the caller's order: each row is nearest to its own fp32 row
    assert (np.argmax(got @ ref.T, axis=1) == np.arange(len(texts))).mean() >= 0.95
    # dynamic int8 scales activations per run, so a text's vector depends a little on its batch-mates: alone or
    # in a batch it stays within the bound (an exact repeat in another batch is still a near-duplicate)
    one = onnx.encode([texts[3]])[0]
    assert float(one @ got[3]) >= onnx_minilm.DEFAULT_MIN_COSINE


def test_choosing_onnx_int8_uses_the_artifact(built):
    emb = pipeline_embedder("onnx-int8", built[0])
    assert isinstance(emb, onnx_minilm.OnnxEmbedder) and emb.path == built[1] and emb.name == onnx_minilm.NAME
    assert pipeline_embedder("onnx-int8", built[0]) is emb  # one per process
    assert emb.threads == onnx_minilm.cores()  # every core this process may use, unless told (ROUTING_EMBED_THREADS)
    one = pipeline_embedder("onnx-int8", built[0], threads=1)
    assert one is not emb and one.threads == 1 and pipeline_embedder("onnx-int8", built[0], threads=1) is one
    assert float(one.encode(["card payment declined"])[0] @ emb.encode(["card payment declined"])[0]) > 0.999
    auto = pipeline_embedder("auto", built[0])
    rates = emb.meta["rates"]
    faster = rates["onnx_int8_texts_per_s"] > rates["torch_fp32_texts_per_s"]
    assert isinstance(auto, onnx_minilm.OnnxEmbedder) == faster  # auto: whichever measured faster at build


def _fallback(choice, models) -> tuple[object, dict]:
    with capture_logs() as logs:
        emb = pipeline_embedder(choice, models)
    fell = [e for e in logs if e["event"] == "embedder.fallback"]
    assert len(fell) == 1, logs
    return emb, fell[0]


def test_missing_artifact_falls_back_to_torch_with_the_reason(tmp_path):
    emb, why = _fallback("auto", tmp_path / "empty")  # auto never builds at a worker's start
    assert isinstance(emb, Embedder) and why["using"] == "torch"
    assert "no int8 model built yet" in why["reason"]


def test_corrupt_model_file_falls_back_to_torch(built, tmp_path):
    models, path = copy_of(built, tmp_path)
    data = bytearray((path / "model.onnx").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\0" * 64
    (path / "model.onnx").write_bytes(bytes(data))
    emb, why = _fallback("onnx-int8", models)
    assert isinstance(emb, Embedder) and "does not match the sha256" in why["reason"]


def test_truncated_model_that_matches_its_meta_still_falls_back(built, tmp_path):
    models, path = copy_of(built, tmp_path)
    (path / "model.onnx").write_bytes((path / "model.onnx").read_bytes()[:4096])
    meta = json.loads((path / "meta.json").read_text())
    meta["model_sha256"] = onnx_minilm.sha256_of(path / "model.onnx")
    (path / "meta.json").write_text(json.dumps(meta))
    emb, why = _fallback("onnx-int8", models)
    assert isinstance(emb, Embedder) and "cannot load" in why["reason"]


def test_probes_that_no_longer_match_fp32_refuse_the_model(built, tmp_path):
    models, path = copy_of(built, tmp_path)
    with np.load(path / "probes.npz") as z:
        texts, ref = z["texts"], z["fp32"]
    rolled = np.roll(ref, 1, axis=0)  # every probe compared with another text's fp32 vector
    np.savez(path / "probes.npz", texts=texts, fp32=rolled)
    with pytest.raises(onnx_minilm.OnnxUnusable, match="stored probes"):
        onnx_minilm.OnnxEmbedder(path)
    emb, why = _fallback("onnx-int8", models)
    assert isinstance(emb, Embedder) and "stored probes" in why["reason"]


def test_a_failed_check_is_never_used(built, tmp_path):
    models, path = copy_of(built, tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    meta["check"] = onnx_minilm.cosine_check(np.eye(3), np.eye(3)[::-1], 0.98)  # cosines 0, 1, 0
    assert not meta["check"]["passed"]
    (path / "meta.json").write_text(json.dumps(meta))
    emb, why = _fallback("onnx-int8", models)
    assert isinstance(emb, Embedder) and "failed its check" in why["reason"]


def test_artifacts_of_other_weights_are_not_picked(built, tmp_path):
    models, path = copy_of(built, tmp_path)
    meta = json.loads((path / "meta.json").read_text())
    meta["source_sha256"] = "0" * 64
    (path / "meta.json").write_text(json.dumps(meta))
    assert onnx_minilm.latest(models) is None


def test_cosine_bound_is_enforced():
    a = np.eye(4, dtype=np.float32)
    assert onnx_minilm.cosine_check(a, a, 0.98)["passed"]
    tilted = a.copy()
    tilted[0] = np.array([0.95, 0.312, 0, 0], dtype=np.float32)  # cosine 0.95 on one row: mean 0.9875
    c = onnx_minilm.cosine_check(tilted, a, 0.98)
    assert c["mean_cosine"] == pytest.approx(0.9875, abs=1e-4) and c["passed"]
    assert not onnx_minilm.cosine_check(tilted, a, 0.99)["passed"]
    tilted[0] = np.array([0.8, 0.6, 0, 0], dtype=np.float32)  # one row under the floor fails however high the mean
    assert not onnx_minilm.cosine_check(tilted, a, 0.9)["passed"]


def test_an_urgent_encode_overtakes_a_full_batch_in_progress(built):
    """The enrich urgent lane's encode_now goes before the next run of a full batch (models/gate.py)."""
    _, path = built
    overtakes(onnx_minilm.OnnxEmbedder(path, threads=2))
