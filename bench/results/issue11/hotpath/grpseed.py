"""bench/grouping.py (the before tree, 400 rounds) with the fast path trained with seed 1 instead of 0."""

import functools
import sys
from pathlib import Path

sys.path.insert(0, "/tmp/clean-before/bench")

import grouping  # noqa: E402

from routing_engine.models import training  # noqa: E402

training.train_on_embeddings = functools.partial(training.train_on_embeddings, seed=1)
tmp = Path("/tmp/i11hp/grpseed1")
(tmp / "out").mkdir(parents=True, exist_ok=True)
grouping.HERE = tmp
grouping.main(["--only-new", "--scenario", "overload", "--scenario", "single-storm", "--scenario", "two-storms",
               "--json", "/tmp/i11hp/grouping-cap400-seed1.json"])
