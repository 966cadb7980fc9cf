"""Choosing and sharing a sentence embedder (MiniLM, or a static model distilled from it), and embedding many texts."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog

from .minilm import Embedder
from .static_embedder import load_or_distill

EMBED_BATCH = 256


class TextEmbedder(Protocol):
    """What the pipeline needs from an embedder; `Embedder` and `StaticEmbedder` both fit."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


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


def embed_texts(texts: Sequence[str], embedder: TextEmbedder, progress: bool = True) -> np.ndarray:
    from tqdm.auto import tqdm

    chunks = []
    with tqdm(total=len(texts), desc="embedding", unit="text", disable=not progress) as bar:
        for i in range(0, len(texts), EMBED_BATCH):
            batch = list(texts[i : i + EMBED_BATCH])
            chunks.append(embedder.encode(batch))
            bar.update(len(batch))
    if not chunks:
        return np.zeros((0, getattr(embedder, "dim", 384)), dtype=np.float32)
    return np.vstack(chunks).astype(np.float32, copy=False)
