"""Fine-tuning the transformer fallback: MiniLM end to end with a linear head, on the CPU, calibrated on a holdout."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..domain.teams import Teams, load_teams
from .artifacts import created_now, new_version, sha256_of
from .calibration import MIN_CALIBRATION_ROWS, ece, fit_temperature, softmax
from .data import stratified_split
from .fallback import FallbackModel, build_network, import_torch
from .minilm import default_model_path


def _loop(net, tok, texts, y, tr, rng, opt, sched, loss_fn, total, batch_size, max_seq_length, progress) -> None:
    torch = import_torch()
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
    torch = import_torch()
    from transformers import AutoTokenizer

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
    split = stratified_split(y, holdout, seed)
    tr, ho = split if split else (np.arange(len(y)), None)
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True, use_fast=True)
    net = build_network(base, len(names))
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

    model = FallbackModel(net, tok, names, version=new_version("ft-minilm"), teams=teams,
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
        raw, cal = softmax(logits), softmax(logits / model.temperature)
        correct = cal.argmax(1) == y[ho]
        metrics["holdout_accuracy"] = round(float(correct.mean()), 4)
        metrics["holdout_ece_uncalibrated"] = round(ece(raw.max(1), correct), 4)
        metrics["holdout_ece"] = round(ece(cal.max(1), correct), 4)
    model.metrics = metrics
    model.meta = {
        "created_at": created_now(),
        "base_model": "all-MiniLM-L6-v2", "rows": int(len(y)), "seed": seed, "holdout": holdout,
        "hyperparams": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "head_lr": head_lr,
                        "max_seq_length": max_seq_length},
        "training_data": str(Path(source).resolve()) if source is not None else None,
        "training_data_sha256": sha256_of(Path(source)) if source is not None and Path(source).is_file() else None,
    }
    return model
