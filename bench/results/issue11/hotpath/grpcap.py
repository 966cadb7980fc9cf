"""bench/grouping.py (the after tree) with the fast path's num_boost_round capped at argv[1]; its own model dir."""

import sys
from pathlib import Path

sys.path.insert(0, "/tmp/clean-after/bench")

import grouping  # noqa: E402

from routing_engine.models import training  # noqa: E402

cap = int(sys.argv[1])
training.DEFAULT_PARAMS["num_boost_round"] = cap
tmp = Path(f"/tmp/i11hp/grpcap{cap}")
(tmp / "out").mkdir(parents=True, exist_ok=True)
grouping.HERE = tmp  # the classifier is cached under HERE/out/grouping-model: one per cap
grouping.main(["--only-new", "--scenario", "overload", "--scenario", "single-storm", "--scenario", "two-storms",
               "--json", f"/tmp/i11hp/grouping-cap{cap}.json"])
