"""The transformer fallback at inference: all-MiniLM-L6-v2 fine-tuned with a linear head (finetune.py trains it),
for tickets the fast path doubts.

Artifacts live in <models dir>/fallback/<version>/ (encoder + tokenizer + head + meta.json), beside the fast
path's <models dir>/<version>/ folders, which `classifier.latest_model` never confuses with them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..domain.teams import Teams, load_teams
from .artifacts import newest_artifact, publish_dir
from .calibration import softmax
from .prediction import Prediction, predictions

FALLBACK_DIRNAME = "fallback"


PREDICT_BATCH = 64


def import_torch():
    import torch

    return torch


def build_network(encoder_path: str, n_classes: int, *, normalize: bool = False):
    """Encoder + mean pooling + dropout 0.1 + linear head, as one torch module.

    `normalize` (artifacts trained before the issue-14 recipe): unit-length pooling scaled by 20, the
    sentence-transformers geometry. The recipe that measured best (0.9354 on BANKING77's test after 5 epochs)
    uses plain mean pooling, so new artifacts say `normalize_pooled: false` in their meta.
    """
    torch = import_torch()
    from transformers import AutoModel

    class MeanPoolClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = AutoModel.from_pretrained(encoder_path, local_files_only=True)
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(self.encoder.config.hidden_size, n_classes)
            self.normalize = normalize

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if not self.normalize:
                return self.head(self.dropout(pooled))
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            return self.head(self.dropout(pooled)) * 20.0

    return MeanPoolClassifier()


class FallbackModel:
    """A fine-tuned MiniLM classifier; `predict` batches internally and returns calibrated confidences."""

    def __init__(self, net: Any, tokenizer: Any, labels: Sequence[str], *, version: str, teams: Teams | None = None,
                 temperature: float = 1.0, max_seq_length: int = 64, metrics: dict | None = None,
                 meta: dict | None = None, device: str | None = None):
        from .device import resolve_device

        self.device = resolve_device(device)  # ROUTING_DEVICE; a GPU answers escalations ~100x faster
        self.net = net.to(self.device).eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.version = version
        self.teams = teams or load_teams()
        self.temperature = float(temperature)
        self.max_seq_length = int(max_seq_length)
        self.metrics = dict(metrics or {})
        self.meta = dict(meta or {})
        self._lock = threading.Lock()  # two threads in one torch model on 2 cores only thrash

    def logits(self, texts: Sequence[str], batch_size: int = PREDICT_BATCH) -> np.ndarray:
        torch = import_torch()
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if not texts:
            return out
        # Length-sorted batches waste little on padding; results go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock, torch.inference_mode():
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                enc = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                     max_length=self.max_seq_length, return_tensors="pt")
                ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
                out[idx] = self.net(ids, mask).double().cpu().numpy()
        return out

    def predict_proba(self, texts: Sequence[str], *, calibrated: bool = True) -> np.ndarray:
        return softmax(self.logits(texts) / (self.temperature if calibrated else 1.0))

    def predict(self, texts: list[str]) -> list[Prediction]:
        return predictions(self.predict_proba(texts), self.labels, self.teams.team_of)

    def save(self, models_dir: str | Path) -> Path:
        """Writes <models_dir>/fallback/<version>/ atomically (temp folder + rename)."""
        torch = import_torch()
        final = Path(models_dir) / FALLBACK_DIRNAME / self.version
        with publish_dir(final) as tmp:
            self.net.encoder.save_pretrained(str(tmp / "encoder"))
            self.tokenizer.save_pretrained(str(tmp / "encoder"))
            torch.save({k: v.detach().cpu() for k, v in self.net.head.state_dict().items()}, tmp / "head.pt")
            meta = {**self.meta, "normalize_pooled": bool(self.net.normalize), "version": self.version,
                    "labels": self.labels, "temperature": self.temperature,
                    "max_seq_length": self.max_seq_length, "metrics": self.metrics,
                    "team_map_path": str(self.teams.path) if self.teams.path else None}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        return final

    @classmethod
    def load(cls, path: str | Path, teams: Teams | None = None, device: str | None = None) -> FallbackModel:
        torch = import_torch()
        from transformers import AutoTokenizer

        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        # Artifacts from before the key existed were trained with the normalised head.
        net = build_network(str(path / "encoder"), len(meta["labels"]), normalize=meta.get("normalize_pooled", True))
        net.head.load_state_dict(torch.load(path / "head.pt", map_location="cpu", weights_only=True))
        tok = AutoTokenizer.from_pretrained(str(path / "encoder"), local_files_only=True, use_fast=True)
        if teams is None:
            tp = meta.get("team_map_path")
            teams = load_teams(tp if tp and Path(tp).exists() else None)
        return cls(net, tok, meta["labels"], version=meta["version"], teams=teams,
                   temperature=meta.get("temperature", 1.0), max_seq_length=meta.get("max_seq_length", 64),
                   metrics=meta.get("metrics", {}), meta=meta, device=device)


def latest_fallback(models_dir: str | Path) -> Path | None:
    """Newest complete <models_dir>/fallback/<version>/ (by created_at), or None."""
    return newest_artifact(Path(models_dir) / FALLBACK_DIRNAME, "head.pt")


def load_latest_fallback(models_dir: str | Path, teams: Teams | None = None) -> FallbackModel | None:
    path = latest_fallback(models_dir)
    return FallbackModel.load(path, teams=teams) if path else None
