"""Composition root: the one place that assembles the service from its parts, for the CLI, the tests and the bench.

It starts the embedded Redis when none is given, trains the first model when there is none, and runs the HTTP
API and/or a worker with the stages from the registry until told to stop.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from contextlib import asynccontextmanager
from dataclasses import replace

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from .config import Settings
from .domain.teams import load_teams
from .infra.agents import load_agents_file
from .infra.embedded_redis import EmbeddedRedis
from .infra.keys import Keys
from .infra.runtime import consumer_name, run_stages
from .models.classifier import latest_model
from .models.data import default_training_data, read_labelled
from .models.embedder import shared_embedder
from .models.training import train_and_save
from .stages.registry import PIPELINE_STAGES, STAGES, build_stages
from .web.app import make_app

log = structlog.get_logger("service")

__all__ = ["STAGES", "PIPELINE_STAGES", "build_stages", "ensure_model", "with_embedded_redis", "serve", "running"]


def ensure_model(s: Settings) -> None:
    """Train the fast path on the default data when the models folder has none (first start); fine-tuning the
    fallback takes many minutes, so `routing-engine train` adds it later and running workers pick it up."""
    if latest_model(s.models_path) is not None:
        return
    data = default_training_data()
    if data is None:
        raise SystemExit("no labelled data for the first model: set ROUTING_TRAIN_DATA to a CSV/JSONL file")
    print(f"no model in {s.models_path}: training the default one first on {data} (one-time, about 1-2 minutes)",
          file=sys.stderr, flush=True)
    texts, labels = read_labelled(data)
    train_and_save(texts, labels, s.models_path, shared_embedder(), teams=load_teams(s.team_map or None),
                   source=data, target_precision=s.target_precision, escalation_budget=s.escalation_budget,
                   fallback=False, say=lambda m: print(m, file=sys.stderr, flush=True))


def with_embedded_redis(s: Settings) -> tuple[Settings, EmbeddedRedis | None]:
    """The settings to run with: REDIS_URL when set, else a freshly started embedded server (stop it after)."""
    if s.redis_url:
        return s, None
    embedded = EmbeddedRedis(s.state_dir)
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
        runner = web.AppRunner(make_app(s, r), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host or s.host, s.port if port is None else port)
        await site.start()
        handle.runner = runner
        handle.port = runner.addresses[0][1] if runner.addresses else None
    if stages:
        built = build_stages(list(stages), s)
        handle.stage_names = [st.name for st in built]
        handle.task = asyncio.create_task(run_stages(r, built, consumer or consumer_name(), handle.stop))
    try:
        yield handle
    finally:
        handle.stop.set()
        if handle.task is not None:
            await asyncio.gather(handle.task, return_exceptions=True)
        if handle.runner is not None:
            await handle.runner.cleanup()


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


async def serve(s: Settings, *, stages: list[str] | tuple[str, ...] = (), consumer: str | None = None,
                api: bool = False, agents_file: str | None = None, metrics_port: int = 0) -> None:
    """What `up`, `api` and `worker` run: until SIGINT/SIGTERM, then a clean stop."""
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
                await run.task  # a stage that fails for good stops the worker (its error is raised here)
            else:
                await run.stop.wait()
    finally:
        await r.aclose()
        log.info("shutdown.complete")
