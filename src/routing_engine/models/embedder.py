"""Choosing and sharing a sentence embedder (MiniLM in PyTorch or int8 ONNX Runtime, or a static model distilled
from it), and embedding many texts."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog

from . import onnx_minilm
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


PIPELINE_CHOICES = ("auto", "onnx-int8", "torch")

log = structlog.get_logger("embedder")


def pipeline_embedder(choice: str, models_dir: str | Path, *, build: bool = False,
                      min_cosine: float = onnx_minilm.DEFAULT_MIN_COSINE, threads: int = 0) -> TextEmbedder:
    """The MiniLM the pipeline embeds with (ROUTING_EMBEDDER), one per process and choice:

    - "torch": the PyTorch fp32 model;
    - "onnx-int8": the int8 ONNX Runtime model under `<models_dir>/onnx-minilm/`, built there first when missing;
    - "auto": the int8 model when one was built (at train / first start; `build=True` builds it), passed its check
      against fp32 and measured faster than PyTorch on this machine at build time.

    Whenever the int8 model cannot be used (missing, corrupt, failed its check, slower) it is PyTorch, and the
    reason is logged (`embedder.fallback`). `threads`: ONNX Runtime's threads (ROUTING_EMBED_THREADS; 0 = every
    core this process may use)."""
    if choice not in PIPELINE_CHOICES:
        raise ValueError(f"unknown ROUTING_EMBEDDER {choice!r}; expected one of {PIPELINE_CHOICES}")
    key = ("pipeline:" + choice, str(Path(models_dir).resolve()), str(threads or ""))
    with _shared_lock:
        if key in _shared:
            return _shared[key]
    chosen = shared_embedder() if choice == "torch" else _int8_or_torch(choice, models_dir, build, min_cosine, threads)
    with _shared_lock:
        return _shared.setdefault(key, chosen)


def _int8_or_torch(choice: str, models_dir: str | Path, build: bool, min_cosine: float,
                   threads: int = 0) -> TextEmbedder:
    reason = None
    path = onnx_minilm.latest(models_dir)
    if path is None and (build or choice == "onnx-int8"):
        log.info("embedder.onnx_building", models_dir=str(models_dir), note="one-off: export, quantize, check")
        try:
            path = onnx_minilm.build(models_dir, shared_embedder(), min_cosine=min_cosine, log=log)
        except Exception as exc:  # export or quantization broke: serve with PyTorch
            reason = f"building the int8 model failed: {type(exc).__name__}: {exc}"
    if path is None:
        reason = reason or f"no int8 model built yet under {models_dir} (built at train or first start)"
    else:
        try:
            onnx = onnx_minilm.OnnxEmbedder(path, threads=threads or None)
        except onnx_minilm.OnnxUnusable as exc:
            reason = f"{path.name}: {exc}"
        else:
            rates = onnx.meta.get("rates") or {}
            faster = rates.get("onnx_int8_texts_per_s", 0) > rates.get("torch_fp32_texts_per_s", float("inf"))
            if choice == "onnx-int8" or faster:
                log.info("embedder.chosen", embedder=onnx.name, path=str(path), check=onnx.meta.get("check"),
                         rates=rates)
                return onnx
            reason = f"{path.name} measured no faster than PyTorch here at build ({rates})"
    log.warning("embedder.fallback", wanted=choice, using="torch", reason=reason)
    return shared_embedder()


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
