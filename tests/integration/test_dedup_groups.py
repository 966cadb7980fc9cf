"""Storm groups in the live dedup stage, on the real Redis: group-level joins on the trail, groups of one storm
merging into one incident (one page), and two dedup workers racing on a new storm ending in one incident."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np
import orjson
import pytest

from routing_engine.domain.messages import Enriched
from routing_engine.domain.ticket import Ticket
from routing_engine.infra.keys import Keys
from routing_engine.infra.runtime import Entry, StageContext
from routing_engine.infra.scripts import Scripts

from fixtures import wait_for

DIM = 8


def unit(*xs: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(xs)] = xs
    return v / np.linalg.norm(v)


def enriched(tid: str, vec: np.ndarray, category: str = "atm", urgent: bool = False) -> Enriched:
    enrich = {"category": category, "team": "payments", "urgency": 0.9 if urgent else 0.2, "urgent": urgent,
              "urgency_features": {"logit": 2.1972 if urgent else -1.3863},  # the logits of 0.9 and 0.2
              "confidence": 0.9, "fast": {"top": [[category, 0.9], ["other", 0.05]]}}
    return Enriched(Ticket(tid, subject=f"s {tid}", body="b"), int(time.time() * 1000), enrich, vec)


@pytest.fixture
def grouping_settings(settings):
    # hand-made vectors: pairs join only when nearly equal, groups merge at 0.7; these tests are about merges and
    # races, so K alone opens an incident (storm_burst 0); the storm test by rate has its own tests below
    return dataclasses.replace(settings, dedup_tau=0.99, dedup_tau_category=0.95, dedup_tau_centroid=0.99,
                               dedup_tau_centroid_category=0.95, dedup_tau_merge=0.7, incident_k=10, storm_burst=0.0)


async def feed(r, k, msgs):
    for m in msgs:
        await r.xadd(k.enriched, m.to_fields())


async def records(r, k, ids):
    out = {}
    for t in ids:
        h = await r.hgetall(k.ticket(t))
        out[t] = {f.decode(): v.decode() for f, v in h.items()}
    return out


async def alerts_of(r, k, kind):
    return [f for _, f in await r.xrange(k.alerts) if f[b"type"] == kind.encode()]


async def test_two_groups_of_one_storm_converge_into_one_incident_and_one_page(grouping_settings, r):
    from routing_engine import service

    s, k = grouping_settings, Keys(grouping_settings.prefix)
    left = [enriched(f"l{i}", unit(1, 0.2, 0.03 * i)) for i in range(10)]  # reaches K: an incident, one page
    right = [enriched(f"r{i}", unit(1, -0.6, 0.03 * i)) for i in range(4)]  # a sub-cluster ~0.8 from the left one
    ids = [m.ticket_id for m in left + right]
    async with service.running(s, r, stages=["dedup"], consumer="d1"):
        await feed(r, k, left + right)

        async def done():
            recs = await records(r, k, ids)
            return all(x.get("status") == "grouped" for x in recs.values())

        await wait_for(done, 30)
    recs = await records(r, k, ids)
    # the right sub-cluster started its own group, then merged into the incident when it reached 3
    trail = {t: orjson.loads(recs[t]["dedup"]) for t in ids}
    assert trail["r0"]["rule"] == "none" and trail["r1"]["group"] == "r0"
    assert trail["r2"]["merged"] == ["r0"] and trail["r2"]["group"] == "l0" and trail["r2"]["joined_group"] == "r0"
    assert {recs[t]["group"] for t in ids} == {"l0"}  # members re-pointed
    assert all(recs[t]["incident"] == "1" for t in ("l9", "r0", "r1", "r2", "r3"))  # members of the incident now
    assert trail["l1"]["rule"] in ("tau_category", "centroid_category", "centroid")
    members = [m.decode() for m in await r.lrange(k.members("l0"), 0, -1)]
    assert sorted(members) == sorted(ids)
    g = {f.decode(): v.decode() for f, v in (await r.hgetall(k.group("r0"))).items()}
    assert g["merged_into"] == "l0" and g["status"] == "merged"
    assert int((await r.hget(k.group("l0"), "size")).decode()) == 14
    assert [x.decode() for x in await r.zrange(k.incidents, 0, -1)] == ["l0"]
    assert len(await alerts_of(r, k, "incident.opened")) == 1  # one page, the merge did not page
    merged = [f for _, f in await r.xrange(k.events) if f[b"type"] == b"incident.merged"]
    assert len(merged) == 1 and merged[0][b"group"] == b"l0" and merged[0][b"merged"] == b"r0"
    # the API follows the merge
    from routing_engine.infra import records as rec_read

    inc = await rec_read.get_incident(r, k, "r0")
    assert inc["status"] == "merged" and inc["merged_into"] == "l0"
    from routing_engine.infra import operations

    res = await operations.resolve_incident(r, k, Scripts(r, s, k), "r0")  # the old id resolves the survivor
    assert res.outcome == "resolved" and res.incident_id == "l0"
    assert (await r.hget(k.group("l0"), "status")) == b"resolved"


async def test_a_merge_that_reaches_k_opens_one_incident_for_both(grouping_settings, r):
    from routing_engine import service

    s, k = grouping_settings, Keys(grouping_settings.prefix)
    left = [enriched(f"l{i}", unit(1, 0.2, 0.03 * i)) for i in range(6)]
    right = [enriched(f"r{i}", unit(1, -0.6, 0.03 * i)) for i in range(4)]
    ids = [m.ticket_id for m in left + right]
    async with service.running(s, r, stages=["dedup"], consumer="d1"):
        await feed(r, k, left + right)

        async def done():
            return all(x.get("status") == "grouped" for x in (await records(r, k, ids)).values())

        await wait_for(done, 30)
    recs = await records(r, k, ids)
    assert {recs[t]["group"] for t in ids} == {"l0"}
    assert [x.decode() for x in await r.zrange(k.incidents, 0, -1)] == ["l0"]
    opened = await alerts_of(r, k, "incident.opened")
    assert len(opened) == 1 and opened[0][b"group"] == b"l0" and opened[0][b"size"] == b"10"


async def _stage(s, r, consumer):
    from routing_engine.stages.dedup import DedupStage

    k = Keys(s.prefix)
    st = DedupStage(s, k)
    await st.setup(StageContext(r, Scripts(r, s, k), consumer))
    return st


def entries(msgs):
    return [Entry(f"{i + 1}-0", m.to_fields(), "enriched", m) for i, m in enumerate(msgs)]


async def test_two_dedup_workers_racing_on_a_new_storm_make_one_group_and_one_incident(grouping_settings, r):
    """Both workers decide their half of a new storm from the same state (nothing grouped yet). Without
    coordination each would start a group of its own; the second to commit finds the sequence moved, rolls its
    decisions back, reads the first one's and decides again: its tickets join the first worker's group."""
    s, k = grouping_settings, Keys(grouping_settings.prefix)
    a, b = await _stage(s, r, "a"), await _stage(s, r, "b")
    storm = [enriched(f"s{i}", unit(1, 0.01 * i)) for i in range(12)]
    batch_a, batch_b = storm[:6], storm[6:]
    real_claim = a._claim
    raced = []

    async def claim_after_b_committed(msgs, decisions):
        if not raced:  # a decided on the same (empty) state as b; b commits first
            raced.append([d.group for d in decisions])
            await b.process(entries(batch_b))
        return await real_claim(msgs, decisions)

    a._claim = claim_after_b_committed
    await a.process(entries(batch_a))
    assert raced == [["s0"] * 6]  # a's first decision: a group of its own
    assert a.retries == 1 and b.retries == 0
    recs = await records(r, k, [m.ticket_id for m in storm])
    assert {x["group"] for x in recs.values()} == {"s6"}
    assert not await r.exists(k.group("s0"))
    assert int((await r.hget(k.group("s6"), "size")).decode()) == 12
    assert [x.decode() for x in await r.zrange(k.incidents, 0, -1)] == ["s6"]
    assert len(await alerts_of(r, k, "incident.opened")) == 1
    # both workers hold the same groups afterwards
    await b._catch_up()
    assert a.grouper.group_of_ticket("s0") == b.grouper.group_of_ticket("s0") == "s6"
    assert a.seq == b.seq == 12


async def test_two_dedup_workers_under_load_one_storm_one_incident(grouping_settings, r):
    """Two dedup consumers in the runtime, small batches, a storm arriving while both read: one group, one
    incident, every ticket grouped once."""
    from routing_engine import service

    s = dataclasses.replace(grouping_settings, batch_size=3, block_ms=20)
    k = Keys(s.prefix)
    built = [service.build_stages(["dedup"], s)[0] for _ in range(2)]
    handled = [0, 0]
    for i, st in enumerate(built):
        def counting(entries, i=i, process=st.process):
            handled[i] += len(entries)
            return process(entries)

        st.process = counting
    stop = asyncio.Event()
    tasks = [asyncio.create_task(service.supervise(r, [st], f"w{i}", stop, rebuild=lambda name: None))
             for i, st in enumerate(built)]
    try:
        async def both_reading():
            try:
                return len(await r.xinfo_consumers(k.enriched, "dedup")) == 2
            except Exception:
                return False

        await wait_for(both_reading, 30)
        storm = [enriched(f"s{i:03d}", unit(1, 0.002 * i, 0.001 * (i % 7))) for i in range(90)]
        for i in range(0, len(storm), 6):
            await feed(r, k, storm[i:i + 6])
            await asyncio.sleep(0.01)
        ids = [m.ticket_id for m in storm]

        async def done():
            return all(x.get("status") == "grouped" for x in (await records(r, k, ids)).values())

        await wait_for(done, 60)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    recs = await records(r, k, ids)
    assert len({x["group"] for x in recs.values()}) == 1
    assert len(await r.zrange(k.incidents, 0, -1)) == 1
    assert len(await alerts_of(r, k, "incident.opened")) == 1
    assert int(await r.get(k.dedup_seq)) == 90  # each ticket decided once
    assert all(handled), handled  # both workers grouped part of the storm


async def test_a_dedup_worker_starts_over_when_redis_lost_the_decision_log(grouping_settings, r):
    s, k = grouping_settings, Keys(grouping_settings.prefix)
    a = await _stage(s, r, "a")
    await a.process(entries([enriched(f"s{i}", unit(1, 0.01 * i)) for i in range(3)]))
    assert a.seq == 3
    await r.delete(k.dedup_seq, k.dedup_log)  # a Redis without persistence restarted
    await a.process(entries([enriched(f"t{i}", unit(0, 1, 0.01 * i)) for i in range(2)]))
    assert a.seq == 2 and a.retries == 1
    assert (await r.hget(k.ticket("t1"), "group")) == b"t0"


# ---- the storm test by rate (models/grouping.py): arrival times are the tickets' received_at, so no test waits

T0 = time.time() - 3600  # the hour these streams are set in (seconds)


def at(tid: str, vec: np.ndarray, t: float, category: str) -> Enriched:
    m = enriched(tid, vec, category)
    m.received_at = int((T0 + t) * 1000)
    return m


def background(t_from: float, t_to: float, tag: str = "b") -> list[Enriched]:
    """Ordinary traffic: six intents, each a ticket every 2 s (3 tickets/s in all), each intent its own group."""
    out, n = [], 0
    t = t_from
    while t < t_to:
        for c in range(6):
            v = np.zeros(DIM, dtype=np.float32)
            v[2 + c], v[1] = 1.0, 0.001 * (n % 5)
            out.append(at(f"{tag}{n:04d}", v / np.linalg.norm(v), t + c * 0.3, f"intent{c}"))
            n += 1
        t += 2.0
    return out


def burst(prefix: str, vec: np.ndarray, t_from: float, rate: float, n: int, category: str) -> list[Enriched]:
    return [at(f"{prefix}{i:04d}", vec, t_from + i / rate, category) for i in range(n)]


async def run_in_order(st, msgs: list[Enriched], batch: int = 64) -> list:
    msgs = sorted(msgs, key=lambda m: m.received_at)
    outcomes = []
    for i in range(0, len(msgs), batch):
        outcomes += await st.process(entries(msgs[i:i + batch]))
    return outcomes


def record_of(outcomes, tid: str) -> dict:
    """The fields a ticket's dedup commit writes to its record (commit.lua's record fields follow ARGV[13])."""
    for o in outcomes:
        args = o.writes[0].args
        if args[6] == tid:
            flat = args[13:]
            return dict(zip(flat[::2], flat[1::2]))
    raise KeyError(tid)


def trail_of(outcomes, tid: str) -> dict:
    return orjson.loads(record_of(outcomes, tid)["dedup"])


@pytest.fixture
def storm_settings(grouping_settings):
    return dataclasses.replace(grouping_settings, storm_burst=4.0, storm_calm=2.0, storm_quiet_s=60.0,
                               storm_tau_fringe=0.5, storm_fringe_ratio=0.1)


async def test_calm_background_traffic_opens_no_incident_though_its_groups_reach_k(storm_settings, r):
    s, k = storm_settings, Keys(storm_settings.prefix)
    st = await _stage(s, r, "d1")
    await run_in_order(st, background(0, 120))
    sizes = [int((await r.hget(k.group(g), "size")).decode()) for g in ("b0000", "b0001")]
    assert min(sizes) >= s.incident_k * 5  # K in the window, many times over: the seed's rule alone would page
    assert await r.zcard(k.incidents) == 0
    assert await alerts_of(r, k, "incident.opened") == []
    trail = st.grouper.decisions["b0354"].storm
    assert trail["state"] == "off" and trail["rule"] == "burst" and trail["size"] >= s.incident_k
    assert trail["ratio"] < s.storm_burst


@pytest.mark.parametrize("fringe_ratio", [0.1, 0.0])  # the fringe rule on (default) / off
async def test_a_storms_fringe_group_opens_no_incident_of_its_own_one_page(storm_settings, r, fringe_ratio):
    """A storm at 200/s and, beside it, a group of another predicted category (its fringe: centroid cosine ~0.63)
    bursting at 10/s. The fringe passes the burst test on its own; with the fringe rule it opens no incident (one
    storm, one page), without it it pages a second time."""
    s = dataclasses.replace(storm_settings, storm_fringe_ratio=fringe_ratio)
    k = Keys(s.prefix)
    st = await _stage(s, r, "d1")
    storm = burst("s", unit(1, 0.1), 60.0, 200.0, 600, "atm")
    fringe = burst("f", unit(1, -1.0), 60.2, 10.0, 30, "atm_other")
    await run_in_order(st, background(0, 70) + storm + fringe)
    incidents = [x.decode() for x in await r.zrange(k.incidents, 0, -1)]
    opened = await alerts_of(r, k, "incident.opened")
    assert "s0000" in incidents and int((await r.hget(k.group("f0000"), "size")).decode()) == 30
    fringe_trail = [st.grouper.decisions[f"f{i:04d}"].storm for i in range(30)]
    if fringe_ratio:
        assert incidents == ["s0000"] and len(opened) == 1
        assert any(t.get("fringe_of") == "s0000" for t in fringe_trail)
        assert all(t["state"] == "off" and not t["opened"] for t in fringe_trail)
    else:
        assert sorted(incidents) == ["f0000", "s0000"] and len(opened) == 2
    first = st.grouper.decisions["s0000"].storm
    opener = next(st.grouper.decisions[f"s{i:04d}"].storm for i in range(600)
                  if st.grouper.decisions[f"s{i:04d}"].storm["opened"])
    assert first["state"] == "off" and opener["started"] and opener["ratio"] >= s.storm_burst
    assert opener["size"] >= s.incident_k


async def test_storm_state_has_hysteresis_and_closes_after_a_quiet_period(storm_settings, r):
    """A burst starts the storm state (one incident, one page); a slower trickle right after keeps it; a quiet
    period of storm_quiet_s ends it (the incident stays open); a new burst starts it again without a new page."""
    s, k = storm_settings, Keys(storm_settings.prefix)
    st = await _stage(s, r, "d1")
    v = unit(1, 0.1)
    first = burst("s", v, 60.0, 200.0, 200, "atm")
    trickle = burst("t", v, 62.0, 0.5, 20, "atm")  # a ticket every 2 s for 40 s: under the burst bar, still on
    late = burst("u", v, 200.0, 0.5, 4, "atm")  # 130 s of nothing first: the storm state ended
    again = burst("v", v, 220.0, 200.0, 200, "atm")
    await run_in_order(st, background(0, 240) + first + trickle + late + again)
    d = st.grouper.decisions
    assert any(d[f"s{i:04d}"].storm["started"] for i in range(200))
    assert all(d[f"t{i:04d}"].storm["state"] == "on" for i in range(20))
    assert d["t0019"].storm["ratio"] < s.storm_burst  # below the bar that started it, and still on: hysteresis
    assert d["u0000"].storm.get("ended") and d["u0000"].storm["state"] == "off"
    assert all(d[f"u{i:04d}"].storm["state"] == "off" for i in range(4))
    assert any(d[f"v{i:04d}"].storm["started"] for i in range(200))
    assert [x.decode() for x in await r.zrange(k.incidents, 0, -1)] == ["s0000"]  # open all along
    assert len(await alerts_of(r, k, "incident.opened")) == 1
    assert (await r.hget(k.ticket("v0199"), "incident")) == b"1"


async def events_of(r, k, kind):
    return [{f.decode(): v.decode() for f, v in e.items()} for _, e in await r.xrange(k.events)
            if e[b"type"] == kind.encode()]


async def test_the_end_of_a_storm_is_said_once_on_the_feed_and_a_new_burst_says_it_resumed(storm_settings, r):
    """No ticket says a storm is over (the next one never comes), so the stage's tick does: once the storm state's
    end (storm_until, from the last member's trail) has passed, incident.storm_ended goes on the feed once, whichever
    worker sweeps, and the incident stays open; a new burst of the same group says incident.storm_resumed."""
    from routing_engine.infra.health import redis_metrics

    s = dataclasses.replace(storm_settings, storm_quiet_s=30.0)
    k = Keys(s.prefix)
    st, other = await _stage(s, r, "d1"), await _stage(s, r, "d2")
    t1 = time.time() - 150  # the tickets' times: the first storm ends ~30 s before now, the second is still on

    def now_at(msgs):  # the helpers set tickets in the hour before now (T0): move them to t1
        for m in msgs:
            m.received_at += int((t1 - T0) * 1000)
        return msgs

    v = unit(1, 0.1)
    await run_in_order(st, now_at(background(0, 150) + burst("s", v, 60.0, 200.0, 200, "atm")))
    assert [x.decode() for x in await r.zrange(k.incidents, 0, -1)] == ["s0000"]
    until = int((await r.hget(k.group("s0000"), "storm_until")).decode())
    assert until == int(await r.zscore(k.storming, "s0000"))
    assert until == int(st.grouper.decisions["s0199"].storm["until"] * 1000)
    assert until < time.time() * 1000 - 10_000  # over: calm for the quiet period
    await st.tick()
    await other.tick()  # a second worker sweeping finds nothing more to say
    await st.tick()
    ended = await events_of(r, k, "incident.storm_ended")
    assert len(ended) == 1 and ended[0]["group"] == "s0000" and ended[0]["size"] == "200"
    assert await r.zscore(k.storming, "s0000") is None
    assert (await r.hget(k.group("s0000"), "storm_ended_at")) is not None
    assert (await r.hget(k.group("s0000"), "status")) == b"open"  # the incident stays for people to resolve
    assert await events_of(r, k, "incident.storm_resumed") == []
    assert 'routing_storms_on 0.0' in (await redis_metrics(r, k)).decode()
    # the same outage bursts again, now: one resumed event, no new page, and the sweep finds it on again
    await run_in_order(st, now_at(burst("v", v, 140.0, 200.0, 200, "atm")))
    resumed = await events_of(r, k, "incident.storm_resumed")
    assert len(resumed) == 1 and resumed[0]["group"] == "s0000"
    assert (await r.hget(k.group("s0000"), "storm_ended_at")) is None
    assert int(await r.zscore(k.storming, "s0000")) > time.time() * 1000
    assert 'routing_storms_on 1.0' in (await redis_metrics(r, k)).decode()  # /metrics: a storm in progress
    await st.tick()
    assert len(await events_of(r, k, "incident.storm_ended")) == 1  # still on: nothing more said
    assert len(await alerts_of(r, k, "incident.opened")) == 1


async def test_a_resolved_or_merged_incident_gets_no_storm_end_event(storm_settings, r):
    s, k = storm_settings, Keys(storm_settings.prefix)
    st = await _stage(s, r, "d1")
    await run_in_order(st, background(0, 70) + burst("s", unit(1, 0.1), 60.0, 200.0, 200, "atm"))
    assert await r.zscore(k.storming, "s0000") is not None
    await _resolve(s, r, "s0000")
    await st.tick()
    assert await events_of(r, k, "incident.storm_ended") == []
    assert await r.zscore(k.storming, "s0000") is None  # swept out all the same


async def test_an_incident_taken_over_in_a_merge_keeps_its_storm_end(settings, r):
    """The spill-over merge lets the faster group survive, so a group with no incident of its own can take one over.
    The storm's end goes with it: the survivor gets storm_until and the storming entry, and the sweep says the storm
    is over though no member joins the survivor again (before, that incident was never said to be over)."""
    k, sc = Keys(settings.prefix), Scripts(r, settings, Keys(settings.prefix))
    until = time.time() + 1.0

    def spec(t, g, o=0, merges=(), storm=None):
        d = {"t": t, "g": g, "m": [list(p) for p in merges], "u": 0, "team": "payments", "sample": "s", "a": "{}",
             "o": o, "d": {"storm": storm or {}}}
        return t, orjson.dumps(d), np.zeros(DIM, dtype=np.float32).tobytes()

    on = {"state": "on", "until": until, "rate": 40.0, "baseline": 2.0}
    first = [spec(f"a{i}", "a", o=int(i == 9), storm=on if i == 9 else None) for i in range(10)]
    reply = await sc.group(expected_seq=0, tickets=first, groups=[("a", -1)], members=[], log_min_ms=0)
    assert reply[0] == b"ok" and await r.zscore(k.storming, "a") == int(until * 1000)
    # the faster group b (no incident) takes a's incident over at its third ticket
    second = [spec("b0", "b"), spec("b1", "b"), spec("b2", "b", merges=[("a", "b")], storm={"state": "on"})]
    reply = await sc.group(expected_seq=10, tickets=second, groups=[("a", -1), ("b", -1)],
                           members=[f"a{i}" for i in range(10)], log_min_ms=0)
    assert reply[0] == b"ok"
    assert [x.decode() for x in await r.zrange(k.incidents, 0, -1)] == ["b"]
    assert int(await r.hget(k.group("b"), "storm_until")) == int(until * 1000)
    assert await r.zscore(k.storming, "b") == int(until * 1000) and await r.zscore(k.storming, "a") is None
    assert not await sc.storm_end("b")  # still on
    await asyncio.sleep(max(0.0, until - time.time()) + 0.05)
    assert await sc.storm_end("b") and not await sc.storm_end("a")
    ended = await events_of(r, k, "incident.storm_ended")
    assert [e["group"] for e in ended] == ["b"] and ended[0]["size"] == "13"
    assert await events_of(r, k, "incident.storm_resumed") == []


async def test_a_split_off_incident_is_said_over_with_its_storm_and_a_merge_back_keeps_one_end(settings, r):
    """An operator splits part of a storming incident off: the new incident was part of the storm, so the sweep says
    it is over when the source's storm is (before, it never was until a member joined it); merging it back leaves
    one storming entry, the target's."""
    from routing_engine.infra import operations

    k, sc = Keys(settings.prefix), Scripts(r, settings, Keys(settings.prefix))
    until = time.time() + 1.0
    on = {"state": "on", "until": until, "rate": 40.0, "baseline": 2.0}
    first = [(f"a{i}", orjson.dumps({"t": f"a{i}", "g": "a", "m": [], "u": 0, "team": "payments", "sample": "s",
                                     "a": "{}", "o": int(i == 9), "d": {"storm": on if i == 9 else {}}}),
              np.zeros(DIM, dtype=np.float32).tobytes()) for i in range(10)]
    assert (await sc.group(expected_seq=0, tickets=first, groups=[("a", -1)], members=[], log_min_ms=0))[0] == b"ok"
    split = await operations.regroup(r, k, sc, "split", "a", ["a7", "a8", "a9"])
    dst = split.target
    assert await r.zscore(k.storming, dst) == int(until * 1000) == int(await r.hget(k.group(dst), "storm_until"))
    back = await operations.regroup(r, k, sc, "split", "a", ["a5", "a6"])
    await operations.regroup(r, k, sc, "merge", back.target, [], target=dst)  # merged back into the first split
    assert await r.zscore(k.storming, back.target) is None and await r.zscore(k.storming, dst) is not None
    await asyncio.sleep(max(0.0, until - time.time()) + 0.05)
    assert await sc.storm_end("a") and await sc.storm_end(dst) and not await sc.storm_end(back.target)
    ended = await events_of(r, k, "incident.storm_ended")
    assert sorted(e["group"] for e in ended) == sorted(["a", dst])


# ---- after a resolve: the storm coming back re-opens the incident (one page); stragglers are follow-ups


async def _resolve(s, r, gid):
    from routing_engine.infra import operations

    res = await operations.resolve_incident(r, Keys(s.prefix), Scripts(r, s, Keys(s.prefix)), gid)
    assert res.outcome == "resolved"


async def test_stragglers_after_a_resolve_are_followups_and_the_storm_coming_back_reopens_it(storm_settings, r):
    """A storm at 200/s opens an incident, which an operator resolves. Fifteen reports trickle in afterwards at
    0.5/s (more than K, at the stream's ordinary per-cluster rate): each is a follow-up linked to the resolved
    incident, routed on its own, no page. Then the storm comes back at 200/s: once K tickets since the resolve
    arrived while the group bursts, the incident re-opens under its own id, pages once with the reason, and the
    later storm tickets are its members again."""
    s, k = storm_settings, Keys(storm_settings.prefix)
    st = await _stage(s, r, "d1")
    v = unit(1, 0.1)
    await run_in_order(st, background(0, 70) + burst("s", v, 60.0, 200.0, 200, "atm"))
    assert [x.decode() for x in await r.zrange(k.incidents, 0, -1)] == ["s0000"]
    await _resolve(s, r, "s0000")
    stragglers = burst("t", v, 100.0, 0.5, 15, "atm")
    outcomes = await run_in_order(st, background(70, 190, tag="c") + stragglers)
    recs = await records(r, k, [m.ticket_id for m in stragglers])
    for tid, rec in recs.items():
        assert rec["group"] == "s0000" and rec["incident"] == "0", (tid, rec)
        note = orjson.loads(rec["after_resolve"])
        assert note["action"] == "followup" and note["incident"] == "s0000"
        assert "resolved incident s0000" in note["reason"]
    assert orjson.loads(recs["t0014"]["after_resolve"])["since_resolved"] == 15  # more than K: a trickle is no storm
    trail = trail_of(outcomes, "t0014")
    assert trail["after_resolve"]["action"] == "followup" and trail["lane"] == "normal"
    assert (await r.hget(k.group("s0000"), "status")) == b"resolved"
    follow = [f for _, f in await r.xrange(k.events) if f[b"type"] == b"incident.followup"]
    assert len(follow) == 15 and await alerts_of(r, k, "incident.reopened") == []

    again = burst("v", v, 200.0, 200.0, 200, "atm")
    await run_in_order(st, background(190, 205, tag="e") + again)
    recs = await records(r, k, [m.ticket_id for m in again])
    notes = {t: orjson.loads(x["after_resolve"]) for t, x in recs.items() if x.get("after_resolve")}
    reopener = [t for t, n in notes.items() if n["action"] == "reopened"]
    assert len(reopener) == 1, notes
    i = int(reopener[0][1:])
    assert 0 < i < 50  # within the first tickets of the new burst (a trickle of 15 before it did not)
    assert all(notes[f"v{j:04d}"]["action"] == "followup" for j in range(i))
    assert all(recs[f"v{j:04d}"]["incident"] == "1" and f"v{j:04d}" not in notes for j in range(i + 1, 200))
    g = {f.decode(): x.decode() for f, x in (await r.hgetall(k.group("s0000"))).items()}
    assert g["status"] == "open" and g["reopen_count"] == "1" and "since it was resolved" in g["reopen_reason"]
    reopened = await alerts_of(r, k, "incident.reopened")
    assert len(reopened) == 1 and reopened[0][b"group"] == b"s0000" and b"x its baseline" in reopened[0][b"reason"]
    assert len(await alerts_of(r, k, "incident.opened")) == 1  # the first page, and only the re-open since
    from routing_engine.infra import records as rec_read

    inc = await rec_read.get_incident(r, k, "s0000")
    assert inc["status"] == "open" and inc["reopen_count"] == 1 and inc["reopened_at"]


async def test_a_fast_growing_group_ranks_its_tickets_higher_and_its_incident_tracks_size_and_rate(storm_settings, r):
    """Urgency from growth: storm tickets get a growth term on their urgency logit (visible in their features) and
    a higher S, background tickets none, and the urgent flag (alerts, lanes) stays the text's. The incident keeps
    its rate, peak rate and a point at opening and at each doubling from K, with incident.updated (no page)."""
    s, k = storm_settings, Keys(storm_settings.prefix)
    st = await _stage(s, r, "d1")
    outcomes = await run_in_order(st, background(0, 70) + burst("s", unit(1, 0.1), 60.0, 200.0, 200, "atm"))
    grown = record_of(outcomes, "s0150")
    enrich = orjson.loads(grown["enrich"])
    assert 0 < enrich["urgency_features"]["growth"] <= 2.0 and enrich["urgency"] == grown["urgency"] > 0.2
    assert enrich["urgent"] is False  # the text's flag: growth ranks, it does not page or pick the lane
    quiet = record_of(outcomes, "b0100")
    assert "enrich" not in quiet and "urgency" not in quiet  # ordinary traffic: nothing added
    g = {f.decode(): v.decode() for f, v in (await r.hgetall(k.group("s0000"))).items()}
    series = orjson.loads(g["series"])
    sizes = [p[1] for p in series]
    assert sizes[0] >= s.incident_k and sizes[1:] == [x for x in (20, 40, 80, 160) if x > sizes[0]]
    assert all(p[2] > 0 for p in series) and float(g["peak_rate"]) >= float(g["rate"]) > 0
    updated = [f for _, f in await r.xrange(k.events) if f[b"type"] == b"incident.updated"]
    assert [int(f[b"size"]) for f in updated] == sizes[1:]
    assert len(await alerts_of(r, k, "incident.opened")) == 1 and len(await r.xrange(k.alerts)) == 1


@pytest.mark.parametrize("with_created", [True, False])
async def test_a_flushed_backlog_is_judged_by_when_its_tickets_were_created(storm_settings, r, with_created):
    """A help desk that was down flushes four minutes of ordinary traffic within a second. By the producer's
    created_at it is the calm stream it was, and opens none. By arrival (the control, without created_at) every
    intent bursts at once; before the storm test read its baseline as the covered share of the stream that opened
    incidents, now the whole stream rising together reads as seconds not yet seen (`coverage` on the trail) and the
    ratios stay under the burst bar."""
    from datetime import UTC, datetime

    s, k = storm_settings, Keys(storm_settings.prefix)
    st = await _stage(s, r, "d1")
    msgs = sorted(background(0, 240), key=lambda m: m.received_at)
    for i, m in enumerate(msgs):
        created = m.received_at / 1000
        m.received_at = int((T0 + 250) * 1000) + i  # all delivered within a second, in their order...
        if with_created:
            m.ticket.created_at = datetime.fromtimestamp(created, UTC).isoformat()
            if i % 30 == 29:
                m.received_at -= 1000  # ...but some go first, as the urgent lane's do: counted before older ones
    await run_in_order(st, msgs)
    incidents = await r.zcard(k.incidents)
    if with_created:
        assert incidents == 0
        assert st.grouper.decisions[msgs[-1].ticket_id].storm["state"] == "off"
    else:
        assert incidents == 0
        trails = [st.grouper.decisions[m.ticket_id].storm for m in msgs]
        covered = [t for t in trails if "coverage" in t]  # the groups' first dozens: read as ~10% seen
        assert len(covered) > 100 and all(t["coverage"] < 0.5 and t["ratio"] < t["burst"] for t in covered)
