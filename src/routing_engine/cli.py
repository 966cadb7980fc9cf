"""`routing-engine` command line: up, api, worker, train."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from .config import Settings

STAGES = ("enrich", "dedup", "route", "alerts")

EPILOG = "Environment variables (all optional):\n" + Settings.describe()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="routing-engine",
        description="Real-time support-ticket routing on Redis Streams: classify, score urgency, group "
                    "flash floods into incidents, assign to agents.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name, help_, desc):
        sp = sub.add_parser(name, help=help_, description=desc, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        return sp

    up = add("up", "API + a worker running every stage, one process; embedded Redis if REDIS_URL is unset",
             "Start everything a newcomer needs: (embedded) Redis, the model (trained on first start if none "
             "exists), the HTTP API and one worker running every stage. Ctrl-C stops it cleanly.")
    up.add_argument("--host", help="API bind address (ROUTING_HOST)")
    up.add_argument("--port", type=int, help="API port (ROUTING_PORT)")
    up.add_argument("--agents", help="agents YAML loaded at start (ROUTING_AGENTS_FILE)")

    api = add("api", "the HTTP API alone (webhook door, JSON API, health, metrics)",
              "Serve the HTTP API. Workers run separately (`routing-engine worker`) and share the work "
              "through Redis consumer groups. Requires REDIS_URL.")
    api.add_argument("--host", help="bind address (ROUTING_HOST)")
    api.add_argument("--port", type=int, help="port (ROUTING_PORT)")
    api.add_argument("--agents", help="agents YAML loaded at start (ROUTING_AGENTS_FILE)")

    w = add("worker", "a worker running some or all stages",
            "Run pipeline stages. Start several (processes or hosts) to share the load: each stage is a "
            "consumer group, so every entry goes to one worker, and a dead worker's entries are reclaimed "
            "by the others after ROUTING_CLAIM_IDLE_MS. Requires REDIS_URL.")
    w.add_argument("--stages", default="enrich,dedup,route,alerts",
                   help="comma list from: " + ", ".join(STAGES) + " (alerts runs only if ROUTING_ALERT_URL is set)")
    w.add_argument("--name", help="consumer name (default host-pid); reuse it after a restart to resume its pending entries")
    w.add_argument("--metrics-port", type=int, default=0, help="serve this worker's Prometheus metrics on this port")

    t = add("train", "train the classifier and write a versioned model artifact",
            "Embed labelled texts with all-MiniLM-L6-v2 and train the LightGBM classifier on them. The "
            "artifact goes to <models dir>/<version>/; running workers pick it up within seconds.")
    t.add_argument("--data", help="CSV or JSONL of labelled tickets (default: BANKING77 train from ../shared/datasets)")
    t.add_argument("--text-col", default="text", help="column with the ticket text (default: text)")
    t.add_argument("--label-col", default="category", help="column with the label (default: category)")
    t.add_argument("--models-dir", help="where artifacts go (ROUTING_MODELS_DIR, default state/models)")
    t.add_argument("--limit", type=int, default=0, help="train on the first N rows only (quick trials)")
    return p


def _settings(args) -> Settings:
    return Settings.from_env(
        host=getattr(args, "host", None), port=getattr(args, "port", None),
        agents_file=getattr(args, "agents", None), models_dir=getattr(args, "models_dir", None),
    )


def cmd_train(args, s: Settings) -> int:
    from .classifier import default_training_data, read_labelled, train
    from .embedder import shared_embedder
    from .teams import load_teams

    data = Path(args.data) if args.data else (Path(s.train_data) if s.train_data else default_training_data())
    if data is None or not data.exists():
        print("no training data: pass --data FILE (CSV/JSONL) or set ROUTING_TRAIN_DATA", file=sys.stderr)
        return 2
    texts, labels = read_labelled(data, args.text_col, args.label_col)
    if args.limit:
        texts, labels = texts[: args.limit], labels[: args.limit]
    print(f"training on {len(texts)} rows, {len(set(labels))} labels from {data}", file=sys.stderr)
    clf = train(texts, labels, shared_embedder(), teams=load_teams(s.team_map or None), progress=True,
                source=str(data))
    path = clf.save(s.models_path)
    print(f"model {clf.version} written to {path}  metrics={clf.metrics}")
    return 0


def ensure_model(s: Settings) -> None:
    from .classifier import latest_model

    if latest_model(s.models_path) is None:
        print(f"no model in {s.models_path}: training the default one first (one-time, about 1-2 minutes)",
              file=sys.stderr, flush=True)
        rc = cmd_train(argparse.Namespace(data=None, text_col="text", label_col="category", limit=0), s)
        if rc:
            raise SystemExit(rc)


def build_stages(names: list[str], s: Settings):
    from .alerts import AlertStage
    from .dedup import DedupStage
    from .enrich import EnrichStage
    from .keys import Keys
    from .route import RouteStage

    k = Keys(s.prefix)
    table = {"enrich": EnrichStage, "dedup": DedupStage, "route": RouteStage, "alerts": AlertStage}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown stage(s): {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if "alerts" in names and not s.alert_url:
        names = [n for n in names if n != "alerts"]
    return [table[n](s, k) for n in names]


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _serve(s: Settings, worker_stages: list[str] | None, consumer: str | None, with_api: bool,
                 agents_file: str | None, metrics_port: int = 0) -> None:
    import redis.asyncio as aioredis
    import structlog
    from aiohttp import web

    from .agents import load_agents_file
    from .api import make_app
    from .keys import Keys
    from .runtime import consumer_name, run_stages

    log = structlog.get_logger("cli")
    stop = asyncio.Event()
    _stop_on_signals(stop)
    r = aioredis.from_url(s.redis_url, health_check_interval=30)
    await r.ping()
    runner = None
    try:
        if with_api:
            n = await load_agents_file(r, Keys(s.prefix), agents_file or s.agents_file or None)
            runner = web.AppRunner(make_app(s, r), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, s.host, s.port).start()
            print(f"API      http://{s.host}:{s.port}/v1/tickets  (docs: /openapi.json, health: /healthz, "
                  f"metrics: /metrics; {n} agents loaded)", flush=True)
        if metrics_port:
            from prometheus_client import start_http_server

            start_http_server(metrics_port)
        if worker_stages:
            stages = build_stages(worker_stages, s)
            name = consumer or consumer_name()
            print(f"worker   {name}: stages {', '.join(st.name for st in stages)}", flush=True)
            await run_stages(r, stages, name, stop)
        else:
            await stop.wait()
    finally:
        stop.set()
        if runner is not None:
            await runner.cleanup()
        await r.aclose()
        log.info("shutdown.complete")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    s = _settings(args)
    from .logs import setup_logging

    setup_logging(s.log_format, s.log_level)
    if args.cmd == "train":
        return cmd_train(args, s)
    if args.cmd in ("api", "worker") and not s.redis_url:
        print(f"{args.cmd} needs REDIS_URL (only `routing-engine up` starts an embedded Redis)", file=sys.stderr)
        return 2
    embedded = None
    try:
        if args.cmd == "up":
            ensure_model(s)
            if not s.redis_url:
                from dataclasses import replace

                from .server import EmbeddedRedis

                embedded = EmbeddedRedis(s.state_dir)
                s = replace(s, redis_url=embedded.start())
            print(f"Redis    {s.redis_url}{'  (embedded, data in ' + str(embedded.dir) + ')' if embedded else ''}", flush=True)
            asyncio.run(_serve(s, list(STAGES), None, True, args.agents))
        elif args.cmd == "api":
            asyncio.run(_serve(s, None, None, True, args.agents))
        elif args.cmd == "worker":
            stages = [x.strip() for x in args.stages.split(",") if x.strip()]
            if "enrich" in stages:
                from .classifier import latest_model

                if latest_model(s.models_path) is None:
                    print(f"no model in {s.models_path}: run `routing-engine train` first", file=sys.stderr)
                    return 2
            asyncio.run(_serve(s, stages, args.name, False, None, args.metrics_port))
    except KeyboardInterrupt:
        pass
    finally:
        if embedded:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
