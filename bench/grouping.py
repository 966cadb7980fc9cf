#!/usr/bin/env python
"""Storm grouping offline: replay a scenario's tickets through the grouping rule alone (no Redis, no pipeline),
in arrival order, and score incidents per storm, pair precision/recall and background inside storm incidents.

Seconds per scenario instead of minutes, so rules can be compared side by side on many scenarios; the flood
bench (bench/flood.py) then measures the chosen rule inside the running engine.

    python bench/grouping.py                           # every shipped scenario, old rule vs new, out-of-sample
    python bench/grouping.py --scenario two-storms --in-sample

Out of sample (the default): a fast-path classifier is trained on 70% of BANKING77 train and the scenarios draw
their tickets from the other 30%, so the classifier mixes up confusable intents as it would on new text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from routing_engine.models.grouping import Grouper, GroupingRule  # noqa: E402

import flood_report as fr  # noqa: E402
import scenario as sc_mod  # noqa: E402

OUT = HERE / "out" / "grouping.json"
K = 10  # ROUTING_INCIDENT_K
NEIGHBOURS = 8
WINDOW_S = 300.0
OLD_RULE = GroupingRule(tau_centroid=2.0, tau_centroid_category=2.0, tau_merge=2.0)  # neighbours only


def ticket_text(t: dict) -> str:
    return f"{t.get('subject', '')}\n{t.get('body', '')}".strip()


class Embeddings:
    """MiniLM embeddings by text, kept on disk between runs (bench/out is not committed)."""

    def __init__(self, embedder, path: Path = HERE / "out" / "grouping-embeddings.pkl"):
        import pickle

        self.embedder, self.path = embedder, path
        self.cache = pickle.loads(path.read_bytes()) if path.is_file() else {}
        self._pickle = pickle

    def __call__(self, texts: list[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self.cache})
        for i in range(0, len(todo), 256):
            chunk = todo[i:i + 256]
            for t, v in zip(chunk, self.embedder.encode(chunk)):
                self.cache[t] = v
        if todo:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(self._pickle.dumps(self.cache))
        return np.stack([self.cache[t] for t in texts])


def drain_order(planned: list, drain: float | None, lane_delay_s: float = 0.3) -> tuple[list[int], set[int]]:
    """The order dedup sees the tickets in when the pipeline drains `drain` tickets/s, and which came through the
    door's urgent lane: those (text-urgent tickets; a storm's are handed to enrich's main loop ahead of its backlog)
    within `lane_delay_s` of arrival, the rest first in, first out at `drain`/s. `drain` None: a flush, every ticket
    delivered at once after the scenario (a help desk's queue replayed with created_at), the lane's first. Their
    times stay the arrival (creation) times."""
    from routing_engine.domain.urgency import door_urgent

    done: list[tuple[float, float, int]] = []
    lanes: set[int] = set()
    free = 0.0
    for i, p in enumerate(planned):
        t = p.ticket
        lane = door_urgent(t.get("subject", ""), t.get("body", ""), 0.8)
        if lane:
            lanes.add(i)
        if drain is None:
            done.append((0.0 if lane else 1.0, p.at_s, i))
        elif lane:
            done.append((p.at_s + lane_delay_s, p.at_s, i))
        else:
            free = max(p.at_s, free + 1.0 / drain)
            done.append((free, p.at_s, i))
    return [i for *_, i in sorted(done)], lanes


def workers_order(order: list[int], lanes: set[int], workers: int, batch: int, seed: int) -> list[int]:
    """`order` as dedup meets it behind `workers` enrich workers reading batches of `batch` in turn: consecutive
    batches of the main stream go to different workers and reach dedup in whichever order those finish (drawn,
    seeded, within each round of `workers` batches), after a first batch of two (what had arrived when enrich first
    read: live, calm 20,000 --workers 2 decided one ticket, then tickets 500-1023, then 0 and 2-499). Lane tickets
    stay where they were."""
    import random

    if workers <= 1:
        return order
    rng = random.Random(seed)
    main = [i for i in order if i not in lanes]
    lead, main = main[:2], main[2:]
    batches = [main[j:j + batch] for j in range(0, len(main), batch)]
    out: list[int] = [i for i in order if i in lanes] + lead  # the lane runs ahead (flush: first; drain: near arrival)
    for r in range(0, len(batches), workers):
        rnd = batches[r:r + workers]
        rng.shuffle(rnd)
        out += [i for b in rnd for i in b]
    return out


def replay(planned: list, vecs: np.ndarray, top: list[list[tuple[str, float]]], rule: GroupingRule,
           order: list[int] | None = None, lanes: set[int] = frozenset()) -> dict:
    """Group every ticket in arrival order (or `order`); returns ticket id -> final group, and the incident groups
    (K). Times are the arrival times either way."""
    g = Grouper(rule, incident_k=K)
    ids = [p.ticket["id"] for p in planned]
    at = np.array([p.at_s for p in planned])
    seen: list[int] = []  # tickets decided so far, in the order decided
    opened: dict[str, float] = {}  # group -> when it reached K (seconds into the scenario)
    opening: dict[str, dict] = {}  # group -> the storm test of the ticket that opened its incident
    decisions = Counter()
    how: dict[str, tuple[str, str]] = {}  # ticket -> (the rule that placed it, its predicted category)
    for i in (order if order is not None else range(len(planned))):
        p = planned[i]
        nbrs: list[tuple[str, float]] = []
        win = np.array(seen, dtype=np.int64)
        win = win[at[win] >= p.at_s - WINDOW_S] if len(win) else win
        if len(win):
            sims = vecs[win] @ vecs[i]
            idx = np.argsort(-sims)[:NEIGHBOURS]
            nbrs = [(ids[win[j]], float(sims[j])) for j in idx]
        d = g.assign(p.ticket["id"], vecs[i], top[i][0][0], top[i], p.at_s, nbrs, lane=i in lanes)
        decisions[d.rule] += 1
        how[p.ticket["id"]] = (d.rule, top[i][0][0])
        seen.append(i)
        grp = g.groups[g.resolve(d.group)]
        if grp.incident_ts is not None and grp.gid not in opened:  # the Grouper decides when an incident opens
            opened[grp.gid] = p.at_s
            opening[grp.gid] = {"ticket": p.ticket["id"], "at_s": round(p.at_s, 3), "category": top[i][0][0],
                                "group_categories": dict(grp.categories.most_common(4)), "storm": dict(d.storm),
                                "parts": {k: round(v, 4) for k, v in g.baseline(grp, p.at_s)[1].items()},
                                "first_s": round(grp.first_ts, 3)}
        for m in d.merged:  # an incident merged into another: the survivor carries it
            if m in opened:
                opened.setdefault(grp.gid, opened[m])
    final = {t: g.group_of_ticket(t) for t in g.group_of}
    incidents = {g.resolve(x) for x in opened}
    return {"groups": final, "incidents": incidents, "opened": {x: opened[x] for x in opened if x in incidents},
            "opening": opening, "decisions": dict(decisions), "how": how}


def score(planned: list, res: dict) -> dict:
    truth = {p.ticket["id"]: p.truth["storm"] for p in planned}
    groups, incidents = res["groups"], res["incidents"]
    pairs = fr.pair_scores(groups, truth)
    per = fr.storm_groups(groups, truth, incidents)
    arrivals = defaultdict(list)
    for p in planned:
        if p.truth["storm"]:
            arrivals[p.truth["storm"]].append(p.at_s)
    for sid, info in per.items():
        tids = [t for t, s in truth.items() if s == sid]
        gids = Counter(groups[t] for t in tids)
        main, n = gids.most_common(1)[0]
        info["main_incident_share"] = round(n / len(tids), 4) if main in incidents else 0.0
        kth = sorted(arrivals[sid])[K - 1] if len(arrivals[sid]) >= K else None
        at = res["opened"].get(main)
        info["detect_s_after_kth"] = round(at - kth, 2) if at is not None and kth is not None else None
    bg = [t for t, s in truth.items() if s is None]
    storm_main = {Counter(groups[t] for t, s in truth.items() if s == sid).most_common(1)[0][0]: sid for sid in per}
    intent = {p.ticket["id"]: p.truth["category"] for p in planned}
    storm_intent = {p.truth["storm"]: p.truth["category"] for p in planned if p.truth["storm"]}
    inside = [t for t in bg if groups.get(t) in storm_main and groups.get(t) in incidents]
    # a background ticket of the storm's own intent is the same problem reported outside the storm's script:
    # grouping it with the storm is right, so "wrongly inside" counts only the other intents
    wrong = [t for t in inside if intent[t] != storm_intent[storm_main[groups[t]]]]
    # how the wrongly inside got there: the rule that placed each (a later merge carries a group's whole membership)
    wrongly = {"by_rule": dict(Counter(res["how"][t][0] for t in wrong).most_common()),
               "by_intent": dict(Counter(f"{intent[t]} (as {res['how'][t][1]})" for t in wrong).most_common(8))}
    # incidents holding no storm ticket (false pages): who opened them and the storm test at that ticket
    stormy = {groups[t] for t, s in truth.items() if s is not None}
    members = Counter(groups.values())
    false = []
    for gid in sorted(incidents - stormy):
        cats = Counter(intent[t] for t, x in groups.items() if x == gid)
        false.append({"group": gid, "size": members[gid], "true_intents": dict(cats.most_common(4)),
                      **res["opening"].get(gid, {})})
    return {"pairs": pairs, "storms": per, "background_in_storm_incidents": round(len(inside) / max(1, len(bg)), 4),
            "background_wrongly_in_storm_incidents": round(len(wrong) / max(1, len(bg)), 4),
            "background": len(bg), "wrongly": wrongly, "incidents_total": len(incidents),
            "incidents_without_storm_tickets": len(false), "false_incidents": false, "decisions": res["decisions"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", action="append", help="scenario name or YAML path (repeatable; default: all)")
    ap.add_argument("--in-sample", action="store_true", help="use the latest trained model on the whole train set")
    ap.add_argument("--models-dir", default="state/models")
    ap.add_argument("--json", default=str(OUT))
    ap.add_argument("--rule", help='JSON overrides of the new rule, e.g. \'{"tau_merge": 0.75}\'')
    ap.add_argument("--only-new", action="store_true", help="skip the old rule")
    ap.add_argument("--drain", type=float, help="decide in the order a pipeline draining this many tickets/s sees "
                    "them (the urgent lane first, the backlog in order: see drain_order); default arrival order")
    ap.add_argument("--flush", action="store_true", help="decide as if every ticket arrived at once after the "
                    "scenario, with its time as created_at: the urgent lane's tickets first, then the rest in order")
    ap.add_argument("--workers", type=int, default=1, help="with --flush: dedup meets the main stream's batches "
                    "as N enrich workers finish them (consecutive batches in a drawn order; see workers_order)")
    ap.add_argument("--batch", type=int, default=512, help="enrich batch size for --workers (ROUTING_BATCH_SIZE)")
    ap.add_argument("--seed", type=int, action="append", help="draw(s) of the --workers order (repeatable; "
                    "default 0)")
    ap.add_argument("--tickets", type=int, help="exactly N tickets per scenario (stretched in time as "
                    "bench/flood.py --tickets does)")
    ap.add_argument("--capacity", type=float, default=200.0,
                    help="tickets/s that relative rates ('10x') are of (default 200; bench/flood.py measures it)")
    args = ap.parse_args(argv)
    if args.workers > 1 and not (args.flush or args.drain):
        ap.error("--workers needs --flush or --drain")

    from routing_engine.models.classifier import load_latest
    from routing_engine.models.data import default_training_data, read_labelled, stratified_split
    from routing_engine.models.embedder import shared_embedder
    from routing_engine.models.training import train_on_embeddings

    emb = Embeddings(shared_embedder())
    texts, labels = read_labelled(default_training_data())
    if args.in_sample:
        clf = load_latest(args.models_dir)
        pool = list(zip(texts, labels))
    else:
        names = sorted(set(labels))
        y = np.array([names.index(x) for x in labels])
        tr, te = stratified_split(y, 0.3, seed=0)
        cached = HERE / "out" / "grouping-model"
        clf = load_latest(cached)
        if clf is None:
            t0 = time.perf_counter()
            X = emb([texts[i] for i in tr])
            clf = train_on_embeddings(X, [labels[i] for i in tr], embedder_name="minilm", progress=False,
                                      texts=[texts[i] for i in tr])
            clf.save(cached)
            print(f"classifier trained on {len(tr)} rows in {time.perf_counter() - t0:.0f}s; scenarios draw "
                  f"from the other {len(te)}", file=sys.stderr)
        pool = [(texts[i], labels[i]) for i in te]
    names = args.scenario or sorted(p.stem for p in (HERE / "scenarios").glob("*.yaml"))
    report = {"mode": "in-sample" if args.in_sample else "out-of-sample (70/30)", "k": K, "scenarios": {},
              "order": "flush" if args.flush else f"drain {args.drain}/s" if args.drain else "arrival",
              "workers": args.workers, "batch": args.batch}
    rules = {"old": OLD_RULE, "new": replace(GroupingRule(), **json.loads(args.rule or "{}"))}
    for name in names:
        sc = sc_mod.load_scenario(name)
        capacity = args.capacity if sc.relative else None
        planned = (sc_mod.stretched(sc, pool, args.tickets, capacity)[0] if args.tickets
                   else sc_mod.generate(sc, pool, capacity))
        ptexts = [ticket_text(p.ticket) for p in planned]
        vecs = emb(ptexts)
        proba = clf.predict_proba(vecs, ptexts)
        top = [[(clf.labels[j], float(row[j])) for j in np.argsort(-row)[:3]] for row in proba]
        acc = np.mean([t[0][0] == p.truth["category"] for t, p in zip(top, planned)])
        report["scenarios"][name] = {"tickets": len(planned), "classifier_accuracy": round(float(acc), 4)}
        for rname, rule in rules.items():
            if args.only_new and rname == "old":
                continue
            for seed in args.seed or [0]:
                order, lanes = drain_order(planned, args.drain) if args.drain or args.flush else (None, set())
                if args.workers > 1:
                    order = workers_order(order, lanes, args.workers, args.batch, seed)
                s = score(planned, replay(planned, vecs, top, rule, order, lanes))
                report["scenarios"][name][rname if len(args.seed or [0]) == 1 else f"{rname}-seed{seed}"] = s
                storms = "; ".join(f"{sid}: {i['groups']} groups, {i['incidents']} inc, "
                                   f"main {i['main_incident_share']:.0%}, detect {i['detect_s_after_kth']} s"
                                   for sid, i in s["storms"].items())
                drawn = f"seed {seed} " if args.workers > 1 else ""
                print(f"{name:<22} {rname:<4} {drawn}P {s['pairs']['precision']}  R {s['pairs']['recall']}  "
                      f"bg in storm inc {s['background_in_storm_incidents']:.3f} "
                      f"(other intents {s['background_wrongly_in_storm_incidents']:.3f})  "
                      f"inc {s['incidents_total']} ({s['incidents_without_storm_tickets']} no storm) | {storms}")
                if s["wrongly"]["by_rule"]:
                    print(f"    wrongly inside by rule {s['wrongly']['by_rule']}; intents {s['wrongly']['by_intent']}")
                for f in s["false_incidents"]:
                    st = f.get("storm", {})
                    print(f"    no-storm incident {f['group']}: {f['size']} tickets {f['true_intents']}, opened at "
                          f"{f.get('at_s')} s by a {f.get('category')} ticket, size {st.get('size')}, rate "
                          f"{st.get('rate')} / baseline {st.get('baseline')} {f.get('parts')} = {st.get('ratio')}x, "
                          f"group since {f.get('first_s')} s")
    report["rules"] = {k: asdict(v) for k, v in rules.items()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
