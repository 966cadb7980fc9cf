"""Scoring a flood run against its ground truth, and showing it: pure functions, a terminal table, a PNG.

Grouping is scored on pairs of tickets. The truth says which storm (or none) each ticket belongs to; the
engine says which near-duplicate group (record field `group`) it put each ticket in.

- A true pair is two tickets of the same storm. recall = true pairs the engine put in one group / all true
  pairs (tickets never routed still count in the denominator).
- A predicted pair is two tickets in one group where at least one is a storm ticket. It is right when
  both are of the same storm; wrong when they are of different storms or one is background.
  precision = right / predicted.
- Pairs of two background tickets are not scored: the background holds real paraphrases (BANKING77 has
  ~130 rows per intent), and grouping them is the engine doing its job, not a false alarm.

So precision is sensitive to background tickets of a storm's own intent: they are truly about the same
problem but the truth calls them "not the storm". The scenario keeps word-for-word storm texts out of the
background to keep that effect to genuine paraphrases.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from math import comb

import numpy as np


def pct(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def pair_scores(groups: dict[str, str], storms: dict[str, str | None]) -> dict:
    """groups: ticket id -> group id (routed tickets only); storms: ticket id -> storm id or None (all tickets)."""
    members: dict[str, Counter] = defaultdict(Counter)
    for tid, gid in groups.items():
        members[gid][storms.get(tid)] += 1
    tp = predicted = 0
    for counts in members.values():
        n, bg = sum(counts.values()), counts.get(None, 0)
        tp += sum(comb(c, 2) for s, c in counts.items() if s is not None)
        predicted += comb(n, 2) - comb(bg, 2)
    sizes = Counter(s for s in storms.values() if s is not None)
    truth_pairs = sum(comb(c, 2) for c in sizes.values())
    return {
        "precision": round(tp / predicted, 4) if predicted else None,
        "recall": round(tp / truth_pairs, 4) if truth_pairs else None,
        "true_pairs_found": tp, "predicted_pairs": predicted, "truth_pairs": truth_pairs,
    }


def storm_groups(groups: dict[str, str], storms: dict[str, str | None], incident_gids: set[str]) -> dict:
    """Per storm: how many groups / incidents its tickets ended up in, and the biggest group's share."""
    out = {}
    for sid in sorted({s for s in storms.values() if s is not None}):
        tids = [t for t, s in storms.items() if s == sid]
        gids = Counter(groups[t] for t in tids if t in groups)
        out[sid] = {
            "tickets": len(tids),
            "groups": len(gids),
            "incidents": sum(1 for g in gids if g in incident_gids),
            "largest_group_share": round(max(gids.values()) / len(tids), 4) if gids else 0.0,
            "in_incidents_share": round(sum(c for g, c in gids.items() if g in incident_gids) / len(tids), 4),
        }
    return out


def background_in_storms(groups: dict[str, str], truth: dict[str, dict], per_storm: dict, incident_gids: set[str],
                         ) -> dict:
    """Background tickets inside a storm's main incident (the incident holding most of it), as a share of all
    background; "wrongly" counts only those of other intents than the storm's (a background ticket of the storm's
    own intent reports the same problem). Plus every incident of the run, and those holding no storm ticket."""
    mains = {info.get("main_group"): info.get("intent") for info in per_storm.values()}
    bg = [t for t, x in truth.items() if x["storm"] is None and t in groups]
    inside = [t for t in bg if groups[t] in mains and groups[t] in incident_gids]
    wrong = [t for t in inside if truth[t]["category"] != mains[groups[t]]]
    stormy = {groups[t] for t, x in truth.items() if x["storm"] is not None and t in groups}
    return {"background_in_storm_incidents": round(len(inside) / max(1, len(bg)), 4),
            "background_wrongly_in_storm_incidents": round(len(wrong) / max(1, len(bg)), 4),
            "background_wrongly_in_storm_incidents_n": len(wrong), "background_n": len(bg),
            "incidents_total": len(incident_gids), "incidents_without_storm_tickets": len(incident_gids - stormy)}


def accuracy(pred: dict[str, str | None], truth: dict[str, str], only: set[str] | None = None) -> dict:
    ids = [t for t in pred if pred[t] is not None and (only is None or t in only)]
    if not ids:
        return {"accuracy": None, "n": 0}
    return {"accuracy": round(sum(pred[t] == truth[t] for t in ids) / len(ids), 4), "n": len(ids)}


def duplicates(routed_ids: list[str], known: set[str]) -> int:
    """Routed entries beyond the first per ticket, plus routed tickets we never sent."""
    c = Counter(routed_ids)
    return sum(n - 1 for n in c.values()) + sum(n for t, n in c.items() if t not in known)


def stage_summary(rows: list[dict]) -> dict:
    out = {}
    for stage in ("queue_wait", "enrich", "dedup", "route", "total"):
        v = [r[stage] for r in rows if r.get(stage) is not None]
        out[stage] = {"p50": pct(v, 50), "p95": pct(v, 95), "p99": pct(v, 99),
                      "mean": round(float(np.mean(v)), 1) if v else None}
    return out


def _bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Quantile from cumulative (upper bound, count) buckets, interpolated within the bucket (as PromQL does)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    want = q * buckets[-1][1]
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= want:
            if bound == float("inf"):
                return lo_bound
            return lo_bound + (bound - lo_bound) * ((want - lo_count) / max(count - lo_count, 1e-12))
        lo_bound, lo_count = bound, count
    return lo_bound


def step_summary(texts: list[str]) -> dict:
    """routing_stage_step_seconds (and the batch totals) from the workers' /metrics, summed over workers:
    per stage and step, batches, mean and p50 ms per batch (p50 from the histogram's buckets), ms per ticket,
    and the step's share of the stage's batch time."""
    from prometheus_client.parser import text_string_to_metric_families

    steps: dict[tuple[str, str], dict] = {}
    batch: dict[str, dict] = defaultdict(lambda: {"sum": 0.0, "count": 0.0})
    entries: dict[str, float] = defaultdict(float)
    for text in texts:
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if fam.name == "routing_stage_step_seconds":
                    key = (smp.labels.get("stage", ""), smp.labels.get("step", ""))
                    d = steps.setdefault(key, {"sum": 0.0, "count": 0.0, "buckets": defaultdict(float)})
                    if smp.name.endswith("_bucket"):
                        d["buckets"][float(smp.labels["le"])] += smp.value
                    elif smp.name.endswith("_sum"):
                        d["sum"] += smp.value
                    elif smp.name.endswith("_count"):
                        d["count"] += smp.value
                elif fam.name == "routing_stage_batch_seconds" and not smp.name.endswith("_bucket"):
                    kind = "sum" if smp.name.endswith("_sum") else "count" if smp.name.endswith("_count") else None
                    if kind:
                        batch[smp.labels.get("stage", "")][kind] += smp.value
                elif fam.name == "routing_stage_batch_size" and smp.name.endswith("_sum"):
                    entries[smp.labels.get("stage", "")] += smp.value
    out: dict[str, dict] = {}
    for (stage, step), d in sorted(steps.items()):
        if not d["count"]:
            continue
        p50 = _bucket_quantile(sorted(d["buckets"].items()), 0.5)
        total = batch[stage]["sum"]
        out.setdefault(stage, {"batches": int(batch[stage]["count"]), "batch_ms_mean":
                               round(1000 * total / batch[stage]["count"], 2) if batch[stage]["count"] else None,
                               "steps": {}})
        out[stage]["steps"][step] = {
            "batches": int(d["count"]), "mean_ms": round(1000 * d["sum"] / d["count"], 2),
            "p50_ms": round(1000 * p50, 2) if p50 is not None else None,
            "ms_per_ticket": round(1000 * d["sum"] / entries[stage], 3) if entries[stage] else None,
            # read happens before the batch clock starts: its share is of the batch time, not part of it
            "share_of_batch": round(d["sum"] / total, 3) if total else None,
        }
    return out


def timeline(recs: list[dict], t0_ms: int, samples: list[dict]) -> list[dict]:
    """Per second since the first ticket: arrivals, routed, latency p50/p99 (by arrival second), lag."""
    if not recs:
        return []
    arrive = defaultdict(list)
    routed = Counter()
    for r in recs:
        arrive[(r["received_at"] - t0_ms) // 1000].append(r["latency"])
        routed[(r["t_route"] - t0_ms) // 1000] += 1
    last = max(max(arrive), max(routed))
    lag_at = defaultdict(list)
    for s in samples:
        lag_at[int(s["t"])].append(s["backlog"])
    out = []
    for sec in range(0, int(last) + 1):
        lat = arrive.get(sec, [])
        out.append({"t": sec, "arrived": len(lat), "routed": routed.get(sec, 0),
                    "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                    "backlog": max(lag_at[sec]) if lag_at.get(sec) else None})
    return out


def peak_rate(recs: list[dict], window_s: int = 5) -> float | None:
    """Best routed tickets/s over any `window_s`-second window."""
    if not recs:
        return None
    secs = Counter(r["t_route"] // 1000 for r in recs)
    lo, hi = min(secs), max(secs)
    if hi - lo + 1 <= window_s:
        return None
    counts = np.array([secs.get(s, 0) for s in range(lo, hi + 1)], dtype=float)
    return round(float(np.convolve(counts, np.ones(window_s), "valid").max() / window_s), 1)


def _f(v, fmt="{:,.1f}", none="-"):
    return none if v is None else fmt.format(v)


def cpu_summary(before: dict[str, float], after: dict[str, float], wall_s: float, tickets: int, cores: int) -> dict:
    """CPU seconds each process used between two snapshots (from the first ticket sent to the last routed), the
    share of the box's cores they add up to, and CPU milliseconds per ticket: where a run's cores went."""
    used = {name: round(after[name] - before[name], 2) for name in after if name in before}
    total = sum(used.values())
    return {"seconds": used, "total_s": round(total, 2), "wall_s": round(wall_s, 2), "cores": cores,
            "busy_share": round(total / (wall_s * cores), 3) if wall_s > 0 else None,
            "ms_per_ticket": {name: round(1000 * v / tickets, 3) for name, v in used.items()} if tickets else {}}


def table(rep: dict) -> str:
    lat, g, st = rep["latency_ms"], rep["grouping"], rep["stages_ms"]
    rows = [
        ("scenario", f"{rep['scenario']} via {rep['door']} door, {rep['mode']}"
                     f"{', as fast as possible' if rep['fast'] else ''}"),
        ("tickets", f"{rep['tickets']:,} sent, {rep['routed']:,} routed, {rep['dead_letters']} dead-lettered"),
        ("lost / duplicates", f"{rep['lost']} / {rep['duplicates']}  (must be 0 / 0)"),
        ("throughput", f"{_f(rep['tickets_per_s'])} tickets/s sustained (first in -> last routed); "
                       f"best 5 s: {_f(rep['peak_tickets_per_s'])}/s; offered {_f(rep['offered_per_s'])}/s"),
        ("ceiling (embedder)", f"{_f(rep['ceiling_texts_per_s'])} texts/s  -> engine at "
                               f"{_f(rep['ratios']['engine_vs_ceiling'], '{:.2f}')}x of it"),
        ("naive baseline", f"{_f(rep['baseline_tickets_per_s'])} tickets/s  -> engine "
                           f"{_f(rep['ratios']['engine_vs_baseline'], '{:.2f}')}x"
                           f"{' (on ' + str(rep['baseline']['n']) + ' tickets)' if rep.get('baseline') else ''}"),
        ("latency ms (in->routed)", f"p50 {_f(lat['p50'])}  p95 {_f(lat['p95'])}  p99 {_f(lat['p99'])}  "
                                    f"max {_f(lat['max'])}"),
        ("  urgent tickets", f"p50 {_f(lat['urgent_p50'])}  p99 {_f(lat['urgent_p99'])}  (n={lat['urgent_n']})"),
        ("  urgent, not incident members", f"p50 {_f(lat.get('urgent_single_p50'))}  "
                                           f"p99 {_f(lat.get('urgent_single_p99'))}  (n={lat.get('urgent_single_n')})"),
        ("  on the urgent lane to route", f"p50 {_f(lat.get('urgent_lane_p50'))}  p99 {_f(lat.get('urgent_lane_p99'))}"
                                          f"  (n={lat.get('urgent_lane_n')}); lanes {rep.get('lanes')}"),
        ("  urgent at the door, not members", f"p50 {_f(lat.get('urgent_door_p50'))}  "
                                              f"p99 {_f(lat.get('urgent_door_p99'))}  (n={lat.get('urgent_door_n')})"),
        ("  urgent, in no storm (truth)", f"p50 {_f(lat.get('urgent_background_p50'))}  "
                                          f"p99 {_f(lat.get('urgent_background_p99'))}  "
                                          f"(n={lat.get('urgent_background_n')})"),
        ("  while storms arrive", f"p99 {_f(lat['during_storms_p99'])}; urgent p99 "
                                  f"{_f(lat['urgent_during_storms_p99'])} (n={lat['urgent_during_storms_n']})"),
        ("per stage p50/p95 ms", "  ".join(f"{k} {_f(st[k]['p50'], '{:.0f}')}/{_f(st[k]['p95'], '{:.0f}')}"
                                           for k in ("queue_wait", "enrich", "dedup", "route"))),
        *[(f"  {what}, p50/p95 ms", "  ".join(f"{k} {_f(su[k]['p50'], '{:.0f}')}/{_f(su[k]['p95'], '{:.0f}')}"
                                             for k in ("queue_wait", "enrich", "dedup", "route")))
          for what, su in (("urgent singles", rep.get("stages_ms_urgent_single")),
                           ("urgent in no storm", rep.get("stages_ms_urgent_background")))
          if su and su["total"]["p50"] is not None],
        *[(f"  {stage} steps, mean ms/batch", "  ".join(f"{k} {v['mean_ms']:.1f}" for k, v in d["steps"].items()))
          for stage, d in (rep.get("steps") or {}).items() if stage == "enrich"],
        *[(f"  {stage} steps, mean ms/batch", "  ".join(f"{k} {v['mean_ms']:.1f}" for k, v in d["steps"].items()
                                                         if k in ("read", "process", "commit")))
          for stage, d in (rep.get("steps") or {}).items() if stage != "enrich"],
        *[("cpu seconds (share of cores)", "  ".join(f"{k} {v:.1f}" for k, v in c["seconds"].items())
           + f"  = {c['total_s']:.1f} of {c['wall_s'] * c['cores']:.1f} ({c['busy_share']:.0%}); ms/ticket "
           + "  ".join(f"{k} {v:.2f}" for k, v in c["ms_per_ticket"].items()))
          for c in [rep.get("cpu")] if c and c.get("busy_share") is not None],
        ("max backlog", ", ".join(f"{k} {v}" for k, v in rep["lag"]["max_backlog"].items()) or "-"),
        ("accuracy", f"{_f(rep['accuracy'], '{:.3f}')} on all tickets (n={rep['accuracy_detail']['all']['n']}); "
                     f"{_f(rep['accuracy_detail']['unseen']['accuracy'], '{:.3f}')} on texts the model never "
                     f"trained on (n={rep['accuracy_detail']['unseen']['n']})"),
        ("grouping", f"precision {_f(g['precision'], '{:.3f}')}  recall {_f(g['recall'], '{:.3f}')}  "
                     f"({g['true_pairs_found']:,} of {g['truth_pairs']:,} storm pairs)"),
    ]
    for sid, s in g["per_storm"].items():
        rows.append((f"  {sid}", f"{s['tickets']} tickets ({s['intent']}) -> {s['groups']} groups, "
                                 f"{s['incidents']} incident(s), largest group {s['largest_group_share']:.0%}"
                                 + (f", detected {s['detect_s']} s after the K-th ticket"
                                    if s.get("detect_s") is not None else "")))
    if "incidents_total" in g:
        rows.append(("  incidents", f"{g['incidents_total']} in all, {g['incidents_without_storm_tickets']} with no "
                                    f"storm ticket; background wrongly inside a storm's main incident "
                                    f"{g['background_wrongly_in_storm_incidents']:.1%} "
                                    f"({g['background_wrongly_in_storm_incidents_n']} of {g['background_n']})"))
    rows += [
        ("alerts", f"{rep['alerts_sent']} sent, {rep['alerts_suppressed']} suppressed"),
        ("routing", ", ".join(f"{k} {v}" for k, v in sorted(rep["routing"].items()))),
        ("escalation / breaker", f"{_f(rep['escalation_rate'], '{:.3f}')} escalated, {rep['degraded']} degraded, "
                                 f"{_f(rep['abstain_rate'], '{:.3f}')} abstained; "
                                 f"{len(rep['breaker_transitions'])} breaker transitions"),
    ]
    bs = rep.get("breaker") or {}
    if bs.get("open_s"):
        when = (f"first opened {bs['opened_after_storm_start_s']} s after the first storm began"
                if bs.get("opened_after_storm_start_s") is not None else "opened")
        if bs.get("open_at_storm_start"):
            when = (f"already open when the first storm began (since {bs['open_at_storm_start_since_s']} s: "
                    f"{bs['open_at_storm_start_reason']}); {when.replace('first opened', 'opened again')}")
        late = (f"{bs['opened_vs_first_late_s']} s from the first escalation late past budget"
                if bs.get("opened_vs_first_late_s") is not None else "no escalation late before it")
        rows.append(("  breaker", f"{when}, {late} ({bs['late_escalations']} late in all); open {bs['open_s']} s, "
                                  f"routed {bs['routed_per_s_while_open']}/s while open vs "
                                  f"{bs['routed_per_s_otherwise']}/s otherwise"))
        if bs.get("first_open_reason"):
            rows.append(("  why", bs["first_open_reason"]))
    w = max(len(k) for k, _ in rows)
    line = "-" * (w + 60)
    return "\n".join([line] + [f"{k:<{w}}  {v}" for k, v in rows] + [line])


def breaker_summary(transitions: list[dict], windows: dict, recs: list[dict], t0: int, t_end: int,
                    late_at: list[int] = ()) -> dict:
    """When the breaker first opened: after the first storm began, and after the first escalation ran over
    the budget (`late_at`: epoch ms at which each late escalation passed its budget); the routed rate while
    open vs not."""
    storm_start = min((w[0] for w in windows.values()), default=None)
    opens = [b for b in transitions if b.get("state") == "open" and "t" in b]
    after = [b for b in opens if storm_start is None or b["t"] >= storm_start]
    # Already open when the storm began (tripped earlier, say by a slow first fallback batch at start): the first
    # open after the start is then a re-open after the cooldown, not how fast the storm tripped it.
    before = [b for b in transitions if "t" in b and storm_start is not None and b["t"] < storm_start]
    open_at_start = bool(before) and before[-1].get("state") == "open"
    first_late = min(late_at, default=None)
    # open intervals on the epoch-ms clock: from each 'open' to the next transition (or the run's end)
    spans, start = [], None
    for b in sorted((b for b in transitions if b.get("at")), key=lambda b: int(b["at"])):
        if b.get("state") == "open" and start is None:
            start = int(b["at"])
        elif b.get("state") != "open" and start is not None:
            spans.append((start, int(b["at"])))
            start = None
    if start is not None:
        spans.append((start, t_end))
    open_ms = sum(b - a for a, b in spans)
    in_open = sum(1 for x in recs if any(a <= x["t_route"] < b for a, b in spans))
    total_ms = max(1, t_end - t0)
    return {
        "first_storm_start_s": storm_start,
        "open_at_storm_start": open_at_start,
        "open_at_storm_start_since_s": before[-1]["t"] if open_at_start else None,
        "open_at_storm_start_reason": before[-1].get("reason") if open_at_start else None,
        "first_open_s": after[0]["t"] if after else None,
        "opened_after_storm_start_s": round(after[0]["t"] - storm_start, 2) if after and storm_start is not None
        else None,
        "first_open_reason": after[0].get("reason") if after else None,
        "first_late_escalation_s": round((first_late - t0) / 1000, 2) if first_late is not None else None,
        # negative: it opened before any escalated ticket had waited past the budget
        "opened_vs_first_late_s": round((int(after[0]["at"]) - first_late) / 1000, 2) if after and first_late
        is not None else None,
        "late_escalations": len(late_at),
        "open_s": round(open_ms / 1000, 2),
        "routed_per_s_while_open": round(in_open / (open_ms / 1000), 1) if open_ms > 0 else None,
        "routed_per_s_otherwise": round((len(recs) - in_open) / ((total_ms - open_ms) / 1000), 1)
        if total_ms > open_ms else None,
    }


def plot(rep: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = rep["timeline"]
    if not tl:
        return
    t = [x["t"] for x in tl]
    fig, ax = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    ax[0].plot(t, [x["arrived"] for x in tl], label="arrived/s", color="tab:gray")
    ax[0].plot(t, [x["routed"] for x in tl], label="routed/s", color="tab:blue")
    if rep.get("ceiling_texts_per_s"):
        ax[0].axhline(rep["ceiling_texts_per_s"], ls="--", color="tab:red", lw=1, label="embedder ceiling")
    ax[0].set_ylabel("tickets/s")
    ax[0].legend(loc="upper right", fontsize=8)
    ls = rep["lag"]["samples"]
    for key in (ls[0]["stages"] if ls else {}):
        ax[1].plot([s["t"] for s in ls], [s["stages"].get(key, 0) for s in ls], label=f"waiting for {key}")
    ax[1].set_ylabel("entries waiting")
    ax[1].legend(loc="upper right", fontsize=8)
    ax[2].plot(t, [x["p50_ms"] for x in tl], label="p50", color="tab:blue")
    ax[2].plot(t, [x["p99_ms"] for x in tl], label="p99", color="tab:red")
    ax[2].set_ylabel("in->routed ms (by arrival)")
    ax[2].set_xlabel("seconds since the first ticket")
    ax[2].legend(loc="upper right", fontsize=8)
    if any(x["p99_ms"] and x["p99_ms"] > 0 for x in tl):
        ax[2].set_yscale("log")
    for sid, w in rep["storm_windows"].items():
        for a in ax:
            a.axvspan(w[0], w[1], color="tab:orange", alpha=0.12)
        ax[0].text(w[0], ax[0].get_ylim()[1] * 0.9, sid, fontsize=8)
    fig.suptitle(f"flood bench: {rep['scenario']} ({rep['tickets']} tickets, {rep['mode']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
