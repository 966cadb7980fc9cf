"""Composition root: the one place that assembles the service from its parts, for the CLI, the tests and the bench.

It starts the embedded Redis when none is given, trains the first model when there is none, and runs the HTTP
API and/or a worker with the stages from the registry until told to stop, restarting a stage that dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from .config import Settings
from .domain.teams import load_teams
from .infra import maintenance
from .infra.agents import load_agents_file
from .infra.embedded_redis import EmbeddedRedis
from .infra.keys import Keys
from .infra.runtime import Stage, backoff_s, consumer_name, describe, run_stage
from .models.classifier import latest_model
from .models.data import default_training_data, read_labelled
from .models.embedder import pipeline_embedder
from .models.training import train_and_save
from .stages.registry import PIPELINE_STAGES, STAGES, build_stages
from .web.app import make_app

log = structlog.get_logger("service")

SHUTDOWN_TIMEOUT_S = 5.0
# A stage that dies is restarted after a wait doubling from RESTART_MIN_S to RESTART_MAX_S; one that had run for
# STABLE_S first starts again from RESTART_MIN_S (a new failure, not its setup failing over and over).
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
STABLE_S = 60.0

__all__ = ["STAGES", "PIPELINE_STAGES", "build_stages", "ensure_model", "with_embedded_redis", "serve", "running",
           "supervise", "demo"]


def ensure_model(s: Settings) -> None:
    """First start: build the int8 MiniLM (unless ROUTING_EMBEDDER=torch; seconds), then train the fast path on the
    default data with the embedder the pipeline will use when the models folder has no classifier. Fine-tuning
    the fallback takes many minutes, so `routing-engine train` adds it later and running workers pick it up."""
    embedder = pipeline_embedder(s.embedder, s.models_path, build=True, min_cosine=s.embedder_min_cosine)
    if latest_model(s.models_path) is not None:
        return
    data = default_training_data()
    if data is None:
        raise SystemExit("no labelled data for the first model: set ROUTING_TRAIN_DATA to a CSV/JSONL file")
    print(f"no model in {s.models_path}: training the default one first on {data} with {embedder.name} "
          "(one-time, about 1-2 minutes)", file=sys.stderr, flush=True)
    texts, labels = read_labelled(data)
    train_and_save(texts, labels, s.models_path, embedder, teams=load_teams(s.team_map or None),
                   source=data, target_precision=s.target_precision, escalation_budget=s.escalation_budget,
                   fallback=False, say=lambda m: print(m, file=sys.stderr, flush=True))


def with_embedded_redis(s: Settings) -> tuple[Settings, EmbeddedRedis | None]:
    """The settings to run with: REDIS_URL when set, else a freshly started embedded server (stop it after)."""
    if s.redis_url:
        return s, None
    embedded = EmbeddedRedis(s.state_dir, maxmemory=s.embedded_maxmemory)
    return replace(s, redis_url=embedded.start()), embedded


@asynccontextmanager
async def running(s: Settings, r: aioredis.Redis, *, stages: list[str] | tuple[str, ...] = (), consumer: str = "",
                  api: bool = False, host: str | None = None, port: int | None = None, agents_file: str | None = None):
    """Run the API (on host:port; port 0 = any free one) and/or the named stages on `r` while the block runs;
    on exit the stages finish the batch in hand and the API closes. Yields a handle with `.stop`, `.task`,
    `.port` and `.agents` (how many were loaded)."""
    handle = _Running()
    if api:
        handle.agents = await load_agents_file(r, Keys(s.prefix), agents_file or s.agents_file or None)
        # requests are short and SSE streams are closed at shutdown, so a few seconds bound a clean stop
        runner = web.AppRunner(make_app(s, r), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, host or s.host, s.port if port is None else port)
        await site.start()
        handle.runner = runner
        handle.port = runner.addresses[0][1] if runner.addresses else None
    upkeep = None
    if stages:
        built = build_stages(list(stages), s)
        handle.stage_names = [st.name for st in built]
        worker = consumer or consumer_name()
        consumers = [worker] * len(built)
        if "enrich" in handle.stage_names:  # more enrich read loops: consumers of their own (ROUTING_ENRICH_RUNNERS)
            for i in range(2, s.enrich_runners + 1):
                built += build_stages(["enrich"], s)
                consumers.append(f"{worker}-e{i}")
        handle.task = asyncio.create_task(supervise(r, built, worker, handle.stop,
                                                    rebuild=lambda name: build_stages([name], s)[0],
                                                    consumers=consumers))
        if not api:  # the API's watcher does it there; a worker alone must too (infra/maintenance.py)
            upkeep = asyncio.create_task(maintenance.run(r, Keys(s.prefix), s, worker, handle.stop))
    try:
        yield handle
    finally:
        handle.stop.set()
        if handle.task is not None:
            await asyncio.gather(handle.task, return_exceptions=True)
        if upkeep is not None:
            await asyncio.gather(upkeep, return_exceptions=True)
        if handle.runner is not None:
            await handle.runner.cleanup()
            log.info("shutdown.api_closed")


async def supervise(r: aioredis.Redis, stages: list[Stage], consumer: str, stop: asyncio.Event,
                    rebuild: Callable[[str], Stage], consumers: list[str] | None = None) -> None:
    """Run each stage until `stop` is set (as `consumer`, or as its own entry of `consumers`). One whose task dies
    (its setup failed, or the runtime itself did: errors of entries and of Redis never end it) is rebuilt with
    `rebuild(name)` and restarted after a backoff, while the other stages and the API go on."""
    if not stages:
        await stop.wait()
        return
    names = consumers or [consumer] * len(stages)
    await asyncio.gather(*(_keep_running(r, st, name, stop, rebuild) for st, name in zip(stages, names)))


async def _keep_running(r: aioredis.Redis, stage: Stage, consumer: str, stop: asyncio.Event,
                        rebuild: Callable[[str], Stage]) -> None:
    name = stage.name
    restarts = in_a_row = 0
    while not stop.is_set():
        began = time.monotonic()
        try:
            if restarts:
                stage = rebuild(name)  # a fresh instance: the dead one's state may be what killed it
                log.warning("stage.restarted", stage=name, count=restarts)
            await run_stage(r, stage, consumer, stop)
            return  # it ran until stop
        except Exception as exc:
            in_a_row = in_a_row + 1 if time.monotonic() - began < STABLE_S else 1
            delay = backoff_s(in_a_row - 1, RESTART_MIN_S, RESTART_MAX_S)
            log.error("stage.died", stage=name, error=describe(exc), restart_in_s=delay, exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        restarts += 1


class _Running:
    def __init__(self):
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.agents = 0
        self.stage_names: list[str] = []


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def limit_blas(threads: int) -> None:
    """BLAS (OpenBLAS under numpy, scipy and FAISS) to `threads` threads in this process (0: leave it). calm 20,000
    `--fast` on 2 cores: the worker's CPU 3.90-4.09 -> 3.60-3.64 ms a ticket at the same throughput (its BLAS
    threads spin between the small products of dedup and the classifier); bench/results/issue11/blas-threads/."""
    if threads > 0:
        from threadpoolctl import threadpool_limits

        os.environ["OPENBLAS_NUM_THREADS"] = str(threads)  # the copies loaded later (FAISS's, at a stage's setup)
        threadpool_limits(limits=threads, user_api="blas")  # the ones loaded already (numpy's)


async def serve(s: Settings, *, stages: list[str] | tuple[str, ...] = (), consumer: str | None = None,
                api: bool = False, agents_file: str | None = None, metrics_port: int = 0) -> None:
    """What `up`, `api` and `worker` run: until SIGINT/SIGTERM, then a clean stop."""
    limit_blas(s.blas_threads)
    r = aioredis.from_url(s.redis_url, health_check_interval=30)
    await r.ping()
    try:
        if metrics_port:
            from prometheus_client import start_http_server

            start_http_server(metrics_port)
        name = consumer or consumer_name()
        async with running(s, r, stages=stages, consumer=name, api=api, agents_file=agents_file) as run:
            _stop_on_signals(run.stop)
            if api:
                print(f"API      http://{s.host}:{s.port}/v1/tickets  (docs: /openapi.json, health: /healthz, "
                      f"metrics: /metrics; {run.agents} agents loaded)", flush=True)
            if run.task is not None:
                print(f"worker   {name}: stages {', '.join(run.stage_names)}", flush=True)
                await run.task  # supervised: it returns once stop is set (a stage that dies is restarted)
            else:
                await run.stop.wait()
    finally:
        await r.aclose()
        log.info("shutdown.complete")


async def _delete_prefix(r: aioredis.Redis, prefix: str) -> int:
    keys = [k async for k in r.scan_iter(match="{" + prefix + "}*", count=1000)]
    for i in range(0, len(keys), 500):
        await r.delete(*keys[i:i + 500])
    return len(keys)


async def demo(s: Settings, plan, *, linger_s: float = 60.0, agents_file: str | None = None, say=print) -> dict:
    """`up` plus the built-in flood (demo.py) replayed through this process's own webhook, on a fresh key prefix;
    serves `linger_s` more seconds after the flood for a look around, then stops (or at SIGINT/SIGTERM)."""
    from . import demo as demo_mod
    from .infra import records

    planned = demo_mod.plan_tickets(demo_mod.read_rows(demo_mod.demo_data()), plan)
    r = aioredis.from_url(s.redis_url, health_check_interval=30)
    await r.ping()
    try:
        await _delete_prefix(r, s.prefix)  # every demo starts from an empty board
        async with running(s, r, stages=STAGES, consumer="demo", api=True, agents_file=agents_file) as run:
            _stop_on_signals(run.stop)
            url = f"http://{'127.0.0.1' if s.host in ('0.0.0.0', '::') else s.host}:{s.port}"
            n_storm = sum(1 for _, t in planned if t["id"].startswith("demo-storm"))
            say(f"demo     open {url}/ in a browser (the live monitor); the flood starts now and lasts "
                f"{plan.duration_s:.0f} s:")
            say(f"demo     {len(planned)} tickets: background at {plan.background_rate:g}/s, and from "
                f"{plan.storm_start_s:g} s a storm of {n_storm} '{plan.storm_intent}' tickets at {plan.storm_rate:g}/s")
            say("demo     watch: the ticket table fill, the flood chart turn FLOOD, an incident open for the storm "
                "(incidents panel), agents load up, the breaker card; click a ticket row for its decision trail")
            token = s.ingest_token or s.operate_token or s.api_token  # the demo posts through the webhook door
            stats = await demo_mod.replay(url, planned, run.stop, token=token, secret=s.webhook_secret, say=say)
            k = Keys(s.prefix)
            deadline = asyncio.get_running_loop().time() + 60
            while not run.stop.is_set() and asyncio.get_running_loop().time() < deadline:
                if await r.xlen(k.routed) >= stats["sent"]:
                    break
                await asyncio.sleep(0.5)
            stats["routed"] = await r.xlen(k.routed)
            incidents = await records.list_incidents(r, k)
            stats["incidents"] = [{"id": i["incident_id"], "size": i["size"], "team": i["team"]} for i in incidents]
            say(f"demo     {stats['sent']} sent, {stats['routed']} routed, {len(incidents)} incident(s): "
                + ", ".join(f"{i['incident_id']} ({i['size']} tickets, {i['team']})" for i in incidents[:5]))
            if linger_s > 0 and not run.stop.is_set():
                say(f"demo     still serving {url}/ for {linger_s:.0f} s (Ctrl-C stops it now)")
                try:
                    await asyncio.wait_for(run.stop.wait(), linger_s)
                except TimeoutError:
                    pass
            return stats
    finally:
        await r.aclose()
        log.info("shutdown.complete")


async def replay(s: Settings, changes: dict[str, str], *, source_prefix: str | None = None,
                 export: str | None = None, since_ms: int | None = None, until_ms: int | None = None,
                 limit: int | None = None, speed: float = 1.0, timeout_s: float = 600.0, keep: bool = False,
                 say=print) -> dict:
    """`routing-engine replay`: re-run recorded tickets under `changes` (env-style settings) through the real
    pipeline stages on a scratch prefix, then compare what happened with what happens now. Nothing is sent out
    (no alerts stage) and the live prefix is only read. Returns infra.replay.compare's dict plus the run's facts."""
    import secrets

    from .domain.idempotency import canonical_json
    from .domain.ticket import validate
    from .errors import InvalidTicket
    from .infra import replay as rp
    from .infra.agents import list_agents, load_agents_file, put_agent
    from .infra.scripts import Scripts

    changed = s.overridden(changes)  # raises on an unknown name or a bad value, before anything runs
    r = aioredis.from_url(s.redis_url, health_check_interval=30)
    await r.ping()
    scratch = f"replay-{secrets.token_hex(4)}"
    live = Keys(source_prefix or s.prefix)
    try:
        recorded = (rp.read_export(export) if export else
                    await rp.read_recorded(r, live, since_ms=since_ms, until_ms=until_ms, limit=limit))
        if limit:
            recorded = recorded[:limit]
        source = export or f"prefix {live.prefix!r}"
        if not recorded:
            raise SystemExit(f"replay: no recorded tickets in {source} (records live ROUTING_TICKET_TTL_S)")
        s2 = replace(changed, prefix=scratch, alert_url="")
        k2 = Keys(scratch)
        agents = [] if export else await list_agents(r, live)
        for a in agents:  # the live agents as configured now; their load starts at 0
            await put_agent(r, k2, {x: a[x] for x in ("id", "name", "capacity", "skills", "active")})
        if not agents:
            await load_agents_file(r, k2, s2.agents_file or None)
        offsets = rp.pacing([x.received_at for x in recorded], window_s=s2.dedup_window_s, speed=speed)
        say(f"replay   {len(recorded)} tickets from {source} on scratch prefix {scratch!r} with "
            f"{', '.join(f'{a}={b}' for a, b in changes.items()) or 'no changes'}; paced over "
            f"{offsets[-1]:.0f} s (gaps / {speed:g}, any gap longer than the {s2.dedup_window_s} s window cut to it)")
        scripts = Scripts(r, s2, k2)
        loop = asyncio.get_running_loop()
        skipped: list[dict] = []
        async with running(s2, r, stages=PIPELINE_STAGES, consumer="replay") as run:
            _stop_on_signals(run.stop)
            t0 = loop.time()
            for n, (rec, off) in enumerate(zip(recorded, offsets), 1):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.stop.wait(), max(0.0, t0 + off - loop.time()))
                if run.stop.is_set():
                    break
                try:
                    ticket = validate(rec.ticket, s2.max_text_chars)
                except InvalidTicket as exc:
                    skipped.append({"ticket_id": rec.ticket.get("id"), "reason": str(exc)})
                    continue
                await scripts.ingest(ticket_id=ticket.ticket_id, ticket_json=canonical_json(rec.ticket),
                                     lane=scripts.lane(ticket))
                if n % 500 == 0:
                    say(f"replay   posted {n}/{len(recorded)}")
            ids = [x.ticket_id for x in recorded if x.ticket_id not in {sk["ticket_id"] for sk in skipped}]
            after = await _wait_done(r, k2, ids, run.stop, timeout_s, say)
        result = rp.compare({x.ticket_id: x.outcome for x in recorded}, after)
        result.update({"source": source, "scratch_prefix": scratch, "changes": changes, "speed": speed,
                       "skipped": skipped, "kept_scratch": keep})
        return result
    finally:
        if not keep:
            await _delete_prefix(r, scratch)
        await r.aclose()


async def _wait_done(r: aioredis.Redis, k: Keys, ids: list[str], stop: asyncio.Event, timeout_s: float,
                     say) -> dict[str, dict]:
    """Outcomes once every ticket is past the route stage, or what there is at `timeout_s` without progress."""
    from .infra import replay as rp

    loop = asyncio.get_running_loop()
    last, last_change = -1, loop.time()
    while True:
        async with r.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hget(k.ticket(i), "status")
            statuses = await pipe.execute()
        done = [i for i, st in zip(ids, statuses) if st is not None and st.decode() in rp.DONE]
        if len(done) == len(ids) or stop.is_set():
            break
        if len(done) != last:
            last, last_change = len(done), loop.time()
        elif loop.time() - last_change > timeout_s:
            say(f"replay   {len(ids) - len(done)} tickets unfinished after {timeout_s:.0f} s without progress")
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    return await rp.outcomes(r, k, done)
