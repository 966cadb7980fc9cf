"""Transformer fallback: all-MiniLM-L6-v2 fine-tuned end to end with a linear head, for tickets the fast path doubts.

Artifacts live in <models dir>/fallback/<version>/ (encoder + tokenizer + head + meta.json), beside the fast
path's <models dir>/<version>/ folders, which `classifier.latest_model` never confuses with them.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .classifier import (MIN_CALIBRATION_ROWS, Prediction, _sha256, _softmax, _split, ece, fit_temperature,
                         newest_artifact, publish_dir)
from .teams import Teams, load_teams

FALLBACK_DIRNAME = "fallback"
PREDICT_BATCH = 64


def _torch():
    import torch

    return torch


def _build(encoder_path: str, n_classes: int):
    """Encoder + mean pooling + linear head, as one torch module."""
    torch = _torch()
    from transformers import AutoModel

    class MeanPoolClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = AutoModel.from_pretrained(encoder_path, local_files_only=True)
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(self.encoder.config.hidden_size, n_classes)

        def forward(self, input_ids, attention_mask):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            # Unit-length pooling like the sentence-transformers model it starts from; the head's scale
            # then carries the confidence.
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            return self.head(self.dropout(pooled)) * 20.0

    return MeanPoolClassifier()


class FallbackModel:
    """A fine-tuned MiniLM classifier; `predict` batches internally and returns calibrated confidences."""

    def __init__(self, net: Any, tokenizer: Any, labels: Sequence[str], *, version: str, teams: Teams | None = None,
                 temperature: float = 1.0, max_seq_length: int = 64, metrics: dict | None = None,
                 meta: dict | None = None):
        self.net = net.eval()
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
        torch = _torch()
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
                out[idx] = self.net(enc["input_ids"], enc["attention_mask"]).double().numpy()
        return out

    def predict_proba(self, texts: Sequence[str], *, calibrated: bool = True) -> np.ndarray:
        return _softmax(self.logits(texts) / (self.temperature if calibrated else 1.0))

    def predict(self, texts: list[str]) -> list[Prediction]:
        proba = self.predict_proba(texts)
        k = min(3, len(self.labels))
        out = []
        for row in proba:
            idx = np.argsort(-row)[:k]
            top = [(self.labels[i], float(row[i])) for i in idx]
            out.append(Prediction(top[0][0], self.teams.team_of(top[0][0]), top[0][1], top))
        return out

    def save(self, models_dir: str | Path) -> Path:
        """Writes <models_dir>/fallback/<version>/ atomically (temp folder + rename)."""
        torch = _torch()
        final = Path(models_dir) / FALLBACK_DIRNAME / self.version
        with publish_dir(final) as tmp:
            self.net.encoder.save_pretrained(str(tmp / "encoder"))
            self.tokenizer.save_pretrained(str(tmp / "encoder"))
            torch.save({k: v.detach().cpu() for k, v in self.net.head.state_dict().items()}, tmp / "head.pt")
            meta = {**self.meta, "version": self.version, "labels": self.labels, "temperature": self.temperature,
                    "max_seq_length": self.max_seq_length, "metrics": self.metrics,
                    "team_map_path": str(self.teams.path) if self.teams.path else None}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        return final

    @classmethod
    def load(cls, path: str | Path, teams: Teams | None = None) -> "FallbackModel":
        torch = _torch()
        from transformers import AutoTokenizer

        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        net = _build(str(path / "encoder"), len(meta["labels"]))
        net.head.load_state_dict(torch.load(path / "head.pt", map_location="cpu", weights_only=True))
        tok = AutoTokenizer.from_pretrained(str(path / "encoder"), local_files_only=True, use_fast=True)
        if teams is None:
            tp = meta.get("team_map_path")
            teams = load_teams(tp if tp and Path(tp).exists() else None)
        return cls(net, tok, meta["labels"], version=meta["version"], teams=teams,
                   temperature=meta.get("temperature", 1.0), max_seq_length=meta.get("max_seq_length", 64),
                   metrics=meta.get("metrics", {}), meta=meta)


def latest_fallback(models_dir: str | Path) -> Path | None:
    """Newest complete <models_dir>/fallback/<version>/ (by created_at), or None."""
    return newest_artifact(Path(models_dir) / FALLBACK_DIRNAME, "head.pt")


def load_latest_fallback(models_dir: str | Path, teams: Teams | None = None) -> FallbackModel | None:
    path = latest_fallback(models_dir)
    return FallbackModel.load(path, teams=teams) if path else None


def new_fallback_version() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"ft-minilm-{stamp}-{secrets.token_hex(3)}"


def _loop(net, tok, texts, y, tr, rng, opt, sched, loss_fn, total, batch_size, max_seq_length, progress) -> None:
    torch = _torch()
    from tqdm.auto import tqdm

    step = 0
    with tqdm(total=total, desc="fine-tuning", unit="batch", disable=not progress) as bar:
        while step < total:
            perm = rng.permutation(tr)
            for i in range(0, len(perm), batch_size):
                if step >= total:
                    break
                idx = perm[i : i + batch_size]
                enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_seq_length,
                          return_tensors="pt")
                loss = loss_fn(net(enc["input_ids"], enc["attention_mask"]), torch.from_numpy(y[idx]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


def train_fallback(
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    teams: Teams | None = None,
    epochs: float = 2,
    progress: bool = True,
    source: str | Path | None = None,
    seed: int = 0,
    max_seq_length: int = 64,
    batch_size: int = 32,
    lr: float = 1e-4,
    head_lr: float = 2e-3,
    holdout: float = 0.1,
    base_path: str | None = None,
    label_names: Sequence[str] | None = None,
    threads: int = 1,
) -> FallbackModel:
    """Fine-tune MiniLM end to end (AdamW, linear warm-up/decay) on CPU; the holdout fits the temperature.

    `epochs` may be fractional (1.5 = one and a half passes). `label_names` fixes the label order, e.g. to
    match the fast path's. `threads`: torch threads while training. One by default: on 2 busy cores two
    spinning threads made a step ~20x slower (26 s vs 1.1 s for a batch of 32), one thread never was.
    """
    torch = _torch()
    from transformers import AutoTokenizer

    from .embedder import default_model_path

    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    names = list(label_names) if label_names is not None else sorted(set(labels))
    if len(names) < 2:
        raise ValueError("need at least two distinct labels to train a classifier")
    index = {lab: i for i, lab in enumerate(names)}
    y = np.array([index[lab] for lab in labels], dtype=np.int64)
    texts = [str(t) for t in texts]
    teams = teams or load_teams()
    base = base_path or default_model_path()

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    split = _split(y, holdout, seed)
    tr, ho = split if split else (np.arange(len(y)), None)
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True, use_fast=True)
    net = _build(base, len(names))
    # The 30k-row word-embedding table is half the weights and a ticket touches few of its rows; freezing it
    # drops its dense gradient and AdamW update (~0.15 s of a ~1.2 s step on one core).
    net.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    head_params = list(net.head.parameters())
    enc_params = [p for n, p in net.named_parameters() if not n.startswith("head.") and p.requires_grad]
    opt = torch.optim.AdamW([{"params": enc_params, "lr": lr}, {"params": head_params, "lr": head_lr}],
                            weight_decay=0.01)
    steps_per_epoch = math.ceil(len(tr) / batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    warm = max(1, int(0.06 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / max(1, total - warm)))
    loss_fn = torch.nn.CrossEntropyLoss()

    t0 = time.perf_counter()
    net.train()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        _loop(net, tok, texts, y, tr, rng, opt, sched, loss_fn, total, batch_size, max_seq_length, progress)
    finally:
        torch.set_num_threads(prev_threads)
    fit_s = time.perf_counter() - t0
    net.eval()

    model = FallbackModel(net, tok, names, version=new_fallback_version(), teams=teams,
                          max_seq_length=max_seq_length)
    metrics: dict[str, Any] = {"n_train": int(len(tr)), "n_holdout": 0 if ho is None else int(len(ho)),
                               "n_classes": len(names), "epochs": epochs, "steps": total,
                               "fit_seconds": round(fit_s, 2)}
    if ho is not None:
        t1 = time.perf_counter()
        logits = model.logits([texts[j] for j in ho])
        metrics["holdout_texts_per_s"] = round(len(ho) / max(time.perf_counter() - t1, 1e-9), 1)
        if len(ho) >= MIN_CALIBRATION_ROWS:  # a handful of rows would give a noisy temperature
            model.temperature = fit_temperature(logits, y[ho])
        raw, cal = _softmax(logits), _softmax(logits / model.temperature)
        correct = cal.argmax(1) == y[ho]
        metrics["holdout_accuracy"] = round(float(correct.mean()), 4)
        metrics["holdout_ece_uncalibrated"] = round(ece(raw.max(1), correct), 4)
        metrics["holdout_ece"] = round(ece(cal.max(1), correct), 4)
    model.metrics = metrics
    model.meta = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "base_model": "all-MiniLM-L6-v2", "rows": int(len(y)), "seed": seed, "holdout": holdout,
        "hyperparams": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "head_lr": head_lr,
                        "max_seq_length": max_seq_length},
        "training_data": str(Path(source).resolve()) if source is not None else None,
        "training_data_sha256": _sha256(Path(source)) if source is not None and Path(source).is_file() else None,
    }
    return model


__all__ = ["FallbackModel", "latest_fallback", "load_latest_fallback", "train_fallback", "FALLBACK_DIRNAME"]
