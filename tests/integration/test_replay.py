"""What-if replay (`routing-engine replay`) on the real Redis with the real pipeline and a tiny real model: a small
recorded stream, replayed with grouping switched off and as a control, and the differences it reports."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace

import pytest

from routing_engine import service
from routing_engine.infra.replay import compare, pacing, read_export

from fixtures import InProcessPipeline, cli_env, wait_for

CARD = ["My new card still has not arrived after two weeks", "My new card has still not arrived after two weeks",
        "Still no sign of my new card after two weeks", "My new card still hasn't arrived, two weeks now"]
FX = ["What exchange rate do you use for euros to pounds?", "Which exchange rate do you use for euros to pounds?",
      "What exchange rate is used for euros into pounds?"]
LONE = ["I want to close my account", "How do I change my PIN?"]


async def record_stream(pipeline) -> list[str]:
    ids = []
    for i, text in enumerate(CARD + FX + LONE):
        resp = await pipeline.client.post("/v1/tickets", json={"id": f"t{i:02d}", "subject": "", "body": text})
        assert resp.status == 202, await resp.text()
        ids.append(f"t{i:02d}")

    async def all_routed():
        recs = [await (await pipeline.client.get(f"/v1/tickets/{t}")).json() for t in ids]
        return recs if all(r["status"] in ("assigned", "queued", "attached") for r in recs) else None

    return await wait_for(all_routed, timeout=60)


def scratch_keys(r_sync, result) -> list:
    return list(r_sync.scan_iter(match="{" + result["scratch_prefix"] + "}*"))


async def test_replay_reports_what_a_changed_rule_would_do(pipeline, settings, r):
    import redis

    recs = await record_stream(pipeline)
    before_groups = {rec["ticket_id"]: rec["group"] for rec in recs}
    assert len(set(before_groups[f"t{i:02d}"] for i in range(4))) == 1  # the card storm is one group live
    n_live = await r.zcard(pipeline.k.idx_all)

    # Control: the same settings give the same categories, teams and groups.
    same = await service.replay(settings, {}, speed=float("inf"), timeout_s=60, say=lambda m: None)
    why = f"control run differs: {same!r}"  # the whole comparison, to tell a real difference from a slow box
    assert same["tickets"] == len(recs) and not same["missing_after"], why
    assert same["category"]["changed"] == 0 and same["team"]["changed"] == 0, why
    assert same["pairs"]["only_before"] == 0 and same["pairs"]["only_after"] == 0, why
    assert same["pairs"]["together_both"] == 6 + 3, why  # C(4,2) card pairs + C(3,2) fx pairs
    assert same["groups"] == {"before": 2, "after": 2, "largest_before": 4, "largest_after": 4}, why

    # Grouping switched off (no cosine reaches 1.01): every pair that was grouped comes apart, nothing else moves.
    off = {name: "1.01" for name in ("ROUTING_DEDUP_TAU", "ROUTING_DEDUP_TAU_CATEGORY")}
    off.update({name: "1.01" for name in ("ROUTING_DEDUP_TAU_CENTROID", "ROUTING_DEDUP_TAU_CENTROID_CATEGORY",
                                          "ROUTING_DEDUP_TAU_MERGE") if _known(settings, name)})
    res = await service.replay(settings, off, speed=float("inf"), timeout_s=60, say=lambda m: None)
    assert res["groups"]["before"] == 2 and res["groups"]["after"] == 0
    assert res["pairs"] == {"together_both": 0, "only_before": 9, "only_after": 0}
    assert res["category"]["changed"] == 0 and res["team"]["changed"] == 0
    assert res["changes"] == off

    # The live prefix was only read, and the scratch prefixes are gone.
    assert await r.zcard(pipeline.k.idx_all) == n_live
    live_now = {t: (await (await pipeline.client.get(f"/v1/tickets/{t}")).json())["group"] for t in before_groups}
    assert live_now == before_groups
    r_sync = redis.Redis.from_url(settings.redis_url)
    assert scratch_keys(r_sync, same) == [] and scratch_keys(r_sync, res) == []


def _known(settings, env_name: str) -> bool:
    try:
        settings.overridden({env_name: "1.0"})
        return True
    except ValueError:
        return False


async def run_cli(settings, tmp_path, *args) -> tuple[int, str, str]:
    """`routing-engine replay ...` as a real process, as an operator runs it, with the recording's embedder."""
    env = cli_env(settings, ROUTING_STATE_DIR=tmp_path, ROUTING_EMBEDDER=settings.embedder)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "routing_engine.cli", "replay", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    return proc.returncode, out.decode(), err.decode()


async def test_replay_from_an_export_through_the_cli(settings, r, tmp_path):
    # One embedder for the recording and the replay process: with "auto", a process started after another test built
    # the int8 MiniLM into the shared models dir embeds with it, while this process keeps the PyTorch one it chose
    # first, and a ticket near a boundary can change team (seen once in the full suite).
    settings = replace(settings, embedder="torch")
    async with InProcessPipeline(settings, r) as pipeline:
        recs = await record_stream(pipeline)
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join(json.dumps(rec) for rec in recs) + "\n")
    assert [x.ticket_id for x in read_export(export)] == [rec["ticket_id"] for rec in recs]
    # An unknown setting is refused before anything runs.
    rc, _, err = await run_cli(settings, tmp_path, "--file", str(export), "--set", "ROUTING_NO_SUCH=1")
    assert rc == 2 and "unknown setting 'ROUTING_NO_SUCH'" in err
    rc, out, err = await run_cli(settings, tmp_path, "--file", str(export), "--speed", "inf", "--json",
                                 "--timeout", "60", "--set", "ROUTING_URGENT_THRESHOLD=0.99")
    assert rc == 0, err[-2000:]
    res = json.loads(out)
    assert res["tickets"] == len(recs) and res["source"] == str(export)
    assert res["team"]["changed"] == 0 and res["pairs"]["only_before"] == 0
    assert res["changes"] == {"ROUTING_URGENT_THRESHOLD": "0.99"}
    # and the table an operator reads
    rc, out, _ = await run_cli(settings, tmp_path, "--file", str(export), "--speed", "inf", "--timeout", "60")
    assert rc == 0 and "groups (2+ tickets)" in out and "ticket pairs grouped together" in out


def test_pacing_keeps_gaps_inside_the_window_and_cuts_longer_ones():
    ms = [0, 1_000, 3_000, 3_600_000, 3_600_500]
    assert pacing(ms, window_s=300, speed=1) == [0, 1, 3, 3 + 301, 3 + 301 + 0.5]
    assert pacing(ms, window_s=300, speed=2) == [0, 0.5, 1.5, 1.5 + 150.5, 1.5 + 150.5 + 0.25]
    assert pacing(ms, window_s=300, speed=float("inf")) == [0.0] * 5


def test_compare_counts_moves_and_incident_fates():
    before = {"a": {"group": "g1", "team": "cards", "incident": True}, "b": {"group": "g1", "team": "cards",
                                                                            "incident": True},
              "c": {"group": "g2", "team": "fx"}, "d": {"group": "g2", "team": "fx"}}
    after = {"a": {"group": "h", "team": "cards", "incident": True}, "b": {"group": "h", "team": "cards",
                                                                          "incident": True},
             "c": {"group": "h", "team": "cards", "incident": True}, "d": {"group": "d", "team": "fx"}}
    d = compare(before, after)
    assert d["pairs"] == {"together_both": 1, "only_before": 1, "only_after": 2}
    assert d["team"]["changed"] == 1 and d["team"]["top"] == [{"before": "fx", "after": "cards", "tickets": 1}]
    assert d["incidents"]["before"] == 1 and d["incidents"]["after"] == 1
    [inc] = d["incidents"]["list_after"]
    assert inc["id"] == "h" and inc["size"] == 3 and {x["group"] for x in inc["other_run"]} == {"g1", "g2"}


@pytest.mark.parametrize("line,problem", [("not json", "not JSON"), ('{"subject": "x"}', "needs ticket_id")])
def test_export_errors_name_the_line(tmp_path, line, problem):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": "ok-1", "body": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{problem}"):
        read_export(p)
