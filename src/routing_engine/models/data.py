"""Labelled training data: reading CSV/JSONL files, the default data set, the stratified holdout split."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ..resources import PACKAGE_DIR, data_dir

BANKING77_REL = Path("shared") / "datasets" / "banking77" / "train.csv"


def read_labelled(
    path: str | Path, text_col: str = "text", label_col: str = "category"
) -> tuple[list[str], list[str]]:
    path = Path(path)
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    if rows and (text_col not in rows[0] or label_col not in rows[0]):
        raise KeyError(f"{path}: need columns {text_col!r} and {label_col!r}, found {sorted(rows[0])}")
    texts, labels = [], []
    for r in rows:
        text, label = r.get(text_col), r.get(label_col)
        if text is None or label is None or not str(text).strip() or not str(label).strip():
            continue
        texts.append(str(text))
        labels.append(str(label))
    return texts, labels


def default_training_data() -> Path | None:
    """ROUTING_TRAIN_DATA when set; else BANKING77 train as shipped inside the package; else a workspace's
    ../shared copy (a source checkout beside it)."""
    env = os.environ.get("ROUTING_TRAIN_DATA")
    if env:
        # An explicit setting that points nowhere should not silently fall back to another file.
        return Path(env) if Path(env).is_file() else None
    shipped = data_dir() / "banking77" / "train.csv"
    if shipped.is_file():
        return shipped
    repo = PACKAGE_DIR.parents[1]
    for candidate in (repo.parent / BANKING77_REL, Path.cwd().parent / BANKING77_REL):
        if candidate.is_file():
            return candidate.resolve()
    return None

def stratified_split(y: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Stratified split, or None when some class is too small to spare a holdout row."""
    if holdout <= 0:
        return None
    n_classes = len(np.unique(y))
    counts = np.bincount(y)
    n_hold = int(round(len(y) * holdout))
    if counts.min() < 3 or n_hold < n_classes or len(y) - n_hold < 2 * n_classes:
        return None
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, ho = train_test_split(idx, test_size=n_hold, stratify=y, random_state=seed)
    return tr, ho
