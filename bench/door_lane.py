"""The door's urgent lane, measured offline on the flood scenarios: of the tickets the full urgency score calls urgent
(their true team's prior at confidence 1: what enrich would find with a right and sure classifier), how many the door
sends to the urgent lane, and how many tickets in all it sends there, for the text-only rule (S from the text alone
> threshold, the rule before) and the rule shipped (urgency.door_urgent: the text could cross the threshold with the
highest team prior).

Usage: python bench/door_lane.py [--scenarios overload,two-storms,calm,single-storm] [--capacity 895]
       [--json bench/out/door-lane.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
from routing_engine.config import Settings  # noqa: E402
from routing_engine.domain import urgency  # noqa: E402
from routing_engine.domain.teams import load_teams  # noqa: E402

from scenario import generate, load_rows, load_scenario  # noqa: E402


def measure(name: str, capacity: float, threshold: float) -> dict:
    teams = load_teams()
    sc = load_scenario(name)
    n = urgent = old = new = old_hit = new_hit = 0
    for p in generate(sc, load_rows(sc.data), capacity=capacity):
        subject, body = p.ticket.get("subject") or "", p.ticket.get("body") or ""
        full, _ = urgency.score(subject, body, teams.team_of(p.truth["category"]), 1.0)
        text, _ = urgency.score(subject, body, "", 0.0)
        is_urgent, by_old = full > threshold, text > threshold
        by_new = urgency.door_urgent(subject, body, threshold)
        n += 1
        urgent += is_urgent
        old += by_old
        new += by_new
        old_hit += is_urgent and by_old
        new_hit += is_urgent and by_new
    def rule(lane: int, hit: int) -> dict:
        return {"lane": lane, "urgent_in_lane": hit, "recall": round(hit / urgent, 4) if urgent else None}

    return {"tickets": n, "urgent": urgent, "text_only": rule(old, old_hit), "shipped": rule(new, new_hit)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="overload,two-storms,calm,single-storm")
    p.add_argument("--capacity", type=float, default=895.0, help="for scenarios whose rates are relative to it")
    p.add_argument("--json", default=str(ROOT / "bench" / "out" / "door-lane.json"))
    args = p.parse_args()
    threshold = Settings.from_env().urgent_threshold
    out = {"threshold": threshold, "capacity": args.capacity, "max_team_prior": urgency.MAX_TEAM_PRIOR,
           "scenarios": {}}
    for name in args.scenarios.split(","):
        res = out["scenarios"][name] = measure(name, args.capacity, threshold)
        print(f"{name:14s} {res['tickets']:7d} tickets, {res['urgent']:6d} urgent"
              f" | text-only lane {res['text_only']['lane']:6d} recall {res['text_only']['recall']}"
              f" | shipped lane {res['shipped']['lane']:6d} recall {res['shipped']['recall']}", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
