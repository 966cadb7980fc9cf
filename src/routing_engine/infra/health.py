"""Pipeline health read from Redis: per stream length, per consumer group lag, pending and consumers, tickets by
status; and the same as cluster-wide Prometheus gauges, read at scrape time so any API replica reports it all."""

from __future__ import annotations

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from redis.exceptions import ResponseError

from ..domain.ticket import STATUSES
from .agents import list_agents
from .keys import STAGE_INPUTS, Keys
from .scripts import now_ms

# (stream attribute, consumer group) for every stage input, in pipeline order
PIPELINE = tuple((attr, group) for group, attrs in STAGE_INPUTS.items() for attr in attrs)


async def pipeline_state(r: aioredis.Redis, k: Keys) -> dict:
    """Per stream: length, and per consumer group: lag, pending, consumers (with idle ms)."""
    out = {}
    for stream_attr, _group in PIPELINE:
        stream = getattr(k, stream_attr)
        info = {"length": await r.xlen(stream), "groups": {}}
        try:
            groups = await r.xinfo_groups(stream)
        except ResponseError:  # stream not created yet
            groups = []
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            consumers = await r.xinfo_consumers(stream, name)
            info["groups"][name] = {
                "lag": g.get("lag"), "pending": g.get("pending"),
                "consumers": [{"name": c["name"].decode() if isinstance(c["name"], bytes) else c["name"],
                               "pending": c["pending"], "idle_ms": c["idle"]} for c in consumers],
            }
        out[stream_attr] = info
    out["dead"] = {"length": await r.xlen(k.dead)}
    return out


async def status_counts(r: aioredis.Redis, k: Keys) -> dict[str, int]:
    async with r.pipeline(transaction=False) as pipe:
        for s in STATUSES:
            pipe.zcard(k.idx_status(s))
        counts = await pipe.execute()
    return dict(zip(STATUSES, counts))


class _Snapshot:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


async def redis_metrics(r: aioredis.Redis, k: Keys) -> bytes:
    state = await pipeline_state(r, k)
    stats = {a.decode(): int(b) for a, b in (await r.hgetall(k.stats)).items()}
    length = GaugeMetricFamily("routing_stream_length", "Entries in each stream", labels=["stream"])
    lag = GaugeMetricFamily("routing_group_lag", "Entries not yet read by a consumer group", labels=["stream", "group"])
    pending = GaugeMetricFamily("routing_group_pending", "Read but unacked entries", labels=["stream", "group"])
    consumers = GaugeMetricFamily("routing_group_consumers", "Consumers in each group", labels=["stream", "group"])
    for stream, info in state.items():
        length.add_metric([stream], info["length"])
        for g, v in info.get("groups", {}).items():
            lag.add_metric([stream, g], v["lag"] or 0)
            pending.add_metric([stream, g], v["pending"] or 0)
            consumers.add_metric([stream, g], len(v["consumers"]))
    processed = CounterMetricFamily("routing_processed", "Entries committed per stage, all workers", labels=["stage"])
    for key, v in stats.items():
        if key.startswith("processed:"):
            processed.add_metric([key.split(":", 1)[1]], v)
    dead = CounterMetricFamily("routing_dead_letters", "Entries moved to the dead-letter stream")
    dead.add_metric([], stats.get("dead_letters", 0))
    alerts = CounterMetricFamily("routing_alerts_pipeline", "Alerts queued, sent, suppressed (all workers)",
                                 labels=["result"])
    for res in ("queued", "sent", "suppressed"):
        alerts.add_metric([res], stats.get(f"alerts_{res}", 0))
    statuses = GaugeMetricFamily("routing_tickets", "Tickets by status", labels=["status"])
    for s, n in (await status_counts(r, k)).items():
        statuses.add_metric([s], n)
    load = GaugeMetricFamily("routing_agent_load", "Tickets held per agent", labels=["agent"])
    cap = GaugeMetricFamily("routing_agent_capacity", "Capacity per agent", labels=["agent"])
    for a in await list_agents(r, k):
        load.add_metric([a["id"]], a["load"])
        cap.add_metric([a["id"]], a["capacity"])
    storms = GaugeMetricFamily("routing_storms_on", "Open incidents whose storm is on now (not yet said over)")
    storms.add_metric([], await r.zcount(k.storming, now_ms(), "+inf"))
    reg = CollectorRegistry()
    reg.register(_Snapshot([length, lag, pending, consumers, processed, dead, alerts, statuses, load, cap, storms]))
    return generate_latest(reg)
