"""The flood bench: its pair scoring on a hand-made case, and a tiny scenario end to end (stages in-process)."""

from __future__ import annotations

import sys
from math import comb

from fixtures import FIXTURE, ROOT

sys.path.insert(0, str(ROOT / "bench"))

import flood  # noqa: E402
import flood_report as fr  # noqa: E402
import scenario as sc_mod  # noqa: E402


def test_pair_scores_on_a_hand_made_case():
    storms = {"a1": "A", "a2": "A", "a3": "A", "a4": "A", "b1": "B", "b2": "B", "b3": "B",
              "x1": None, "x2": None, "x3": None, "x4": None, "lost": "B"}
    groups = {"a1": "g1", "a2": "g1", "a3": "g1", "x1": "g1",   # 3 right pairs, 3 storm-background pairs
              "a4": "g2",                                        # a storm ticket left alone
              "b1": "g3", "b2": "g3", "b3": "g3", "x2": "g3",    # 3 right, 3 wrong
              "x3": "g4", "x4": "g4"}                            # background with background: not scored
    s = fr.pair_scores(groups, storms)
    assert s["true_pairs_found"] == 6
    assert s["predicted_pairs"] == 12
    assert s["truth_pairs"] == comb(4, 2) + comb(4, 2)          # "lost" still counts for storm B
    assert s["precision"] == 0.5
    assert s["recall"] == round(6 / 12, 4)
    # two storms merged into one group: every cross pair is wrong
    merged = fr.pair_scores({"a1": "g", "a2": "g", "b1": "g"}, {"a1": "A", "a2": "A", "b1": "B"})
    assert (merged["true_pairs_found"], merged["predicted_pairs"], merged["recall"]) == (1, 3, 1.0)
    per = fr.storm_groups(groups, storms, incident_gids={"g1"})
    assert per["A"] == {"tickets": 4, "groups": 2, "incidents": 1, "largest_group_share": 0.75,
                        "in_incidents_share": 0.75}
    assert per["B"]["groups"] == 1 and per["B"]["incidents"] == 0


def test_duplicates_and_accuracy_helpers():
    assert fr.duplicates(["t1", "t2", "t2", "zz"], {"t1", "t2"}) == 2
    assert fr.accuracy({"a": "x", "b": "y", "c": None}, {"a": "x", "b": "x", "c": "x"}) == {"accuracy": 0.5, "n": 2}


def tiny_scenario() -> sc_mod.Scenario:
    return sc_mod.scenario_from_dict({
        "name": "tiny", "seed": 3, "data": str(FIXTURE), "duration_s": 4.0,
        "background": {"rate": 12, "details_share": 0.2}, "urgent_share": 0.1,
        "storms": [{"id": "s1", "intent": "lost_or_stolen_card", "start_s": 0.5, "duration_s": 1.0, "rate": 12,
                    "repeat_share": 0.3, "details_share": 0.3}],
    })


def test_generator_is_seeded_and_keeps_truth_out_of_the_tickets():
    rows = sc_mod.load_rows(str(FIXTURE))
    a = sc_mod.generate(tiny_scenario(), rows)
    b = sc_mod.generate(tiny_scenario(), rows)
    assert [p.ticket for p in a] == [p.ticket for p in b]
    assert all(set(p.ticket) <= {"id", "subject", "body", "customer", "channel"} for p in a)
    assert [p.at_s for p in a] == sorted(p.at_s for p in a)
    storm = [p for p in a if p.truth["storm"] == "s1"]
    assert storm and all(p.truth["category"] == "lost_or_stolen_card" for p in storm)
    # a storm's texts never appear word for word in the background
    storm_rows = {p.truth["row"] for p in storm}
    assert not storm_rows & {p.truth["row"] for p in a if p.truth["storm"] is None}


async def test_tiny_flood_end_to_end(settings, embedder, tmp_path):
    rows = sc_mod.load_rows(str(FIXTURE))
    sc = tiny_scenario()
    planned = sc_mod.generate(sc, rows, limit=40)
    n_storm = sum(p.truth["storm"] == "s1" for p in planned)
    assert len(planned) == 40 and n_storm == 12  # seeded: 28 background tickets, a storm of 12
    opts = flood.Options(workers=0, fast=True, progress=False, ceiling_max=40, stall_timeout_s=30,
                         out_dir=tmp_path)
    rep = await flood.run_flood(sc, planned, settings, opts, embedder)

    assert rep["tickets"] == 40 and rep["routed"] + rep["dead_letters"] == 40
    assert rep["lost"] == 0 and rep["duplicates"] == 0 and rep["dead_letters"] == 0
    g = rep["grouping"]
    assert g["truth_pairs"] == comb(n_storm, 2)
    assert 0 <= g["precision"] <= 1 and 0 < g["recall"] <= 1   # exact repeats always share a group
    assert g["per_storm"]["s1"]["tickets"] == n_storm
    assert 0 <= rep["accuracy"] <= 1
    lat = rep["latency_ms"]
    assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"]
    assert rep["tickets_per_s"] > 0 and rep["ceiling_texts_per_s"] > 0 and rep["baseline_tickets_per_s"] > 0
    assert rep["baseline"]["n"] == 40 and rep["baseline"]["grouping"]["truth_pairs"] == g["truth_pairs"]
    for key in ("alerts_sent", "alerts_suppressed", "escalation_rate", "timeline"):
        assert key in rep
    # per-step timings read back from the stages' Prometheus histograms
    enrich = rep["steps"]["enrich"]
    assert {"read", "decode", "process", "commit", "embed", "lgbm", "ood", "urgency"} <= set(enrich["steps"])
    assert enrich["steps"]["embed"]["mean_ms"] > 0 and 0 < enrich["steps"]["embed"]["share_of_batch"] <= 1
    assert {"process", "commit"} <= set(rep["steps"]["dedup"]["steps"])
    # where the cores went: this process ran the stages, and Redis did work for them
    cpu = rep["cpu"]
    assert set(cpu["seconds"]) == {"bench + stages", "redis"} and cpu["seconds"]["bench + stages"] > 0
    assert cpu["seconds"]["redis"] > 0 and 0 < cpu["busy_share"] and cpu["ms_per_ticket"]["redis"] > 0
    assert "cpu seconds" in fr.table(rep)


def test_step_summary_reads_histograms_across_workers():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    texts = []
    for batches in ([0.02, 0.04], [0.03]):
        reg = CollectorRegistry()
        h = Histogram("routing_stage_step_seconds", "", ["stage", "step"], registry=reg,
                      buckets=(0.01, 0.025, 0.05, 0.1))
        b = Histogram("routing_stage_batch_seconds", "", ["stage"], registry=reg, buckets=(0.1, 1))
        size = Histogram("routing_stage_batch_size", "", ["stage"], registry=reg, buckets=(64,))
        for x in batches:
            h.labels("enrich", "embed").observe(x)
            b.labels("enrich").observe(2 * x)
            size.labels("enrich").observe(10)
        texts.append(generate_latest(reg).decode())
    out = fr.step_summary(texts)["enrich"]
    embed = out["steps"]["embed"]
    assert out["batches"] == 3 and embed["batches"] == 3
    assert embed["mean_ms"] == 30.0 and embed["share_of_batch"] == 0.5 and embed["ms_per_ticket"] == 3.0
    assert 25 <= embed["p50_ms"] <= 50  # the bucket holding the median: (25 ms, 50 ms]


def test_breaker_summary_says_when_the_breaker_was_open_before_the_storm():
    """A breaker tripped before the storm (here by a slow first fallback batch) and re-opened after its cooldown
    is not one the storm took 2.8 s to trip: the summary says it was open at the storm's start."""
    windows = {"storm-1": (5.0, 15.0)}
    early = [{"state": "open", "t": 2.1, "at": "2100", "reason": "backlog: oldest escalation waited 1004ms"},
             {"state": "half_open", "t": 7.8, "at": "7800"},
             {"state": "open", "t": 7.8, "at": "7800", "reason": "backlog: 152 escalations pending"}]
    s = fr.breaker_summary(early, windows, [], 0, 20_000)
    assert s["open_at_storm_start"] and s["open_at_storm_start_since_s"] == 2.1
    assert s["opened_after_storm_start_s"] == 2.8
    closed = [{"state": "open", "t": 5.4, "at": "5400", "reason": "fast path behind"}]
    s = fr.breaker_summary(closed, windows, [], 0, 20_000)
    assert not s["open_at_storm_start"] and s["opened_after_storm_start_s"] == 0.4
    assert s["first_open_reason"] == "fast path behind" and s["open_s"] == 14.6
