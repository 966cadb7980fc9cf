"""`routing-engine` command line: up, api, worker, train, eval."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from .config import Settings

STAGES = ("enrich", "fallback", "dedup", "route", "alerts")

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
    w.add_argument("--stages", default="enrich,fallback,dedup,route,alerts",
                   help="comma list from: " + ", ".join(STAGES) + " (alerts runs only if ROUTING_ALERT_URL is set)")
    w.add_argument("--name", help="consumer name (default host-pid); reuse it after a restart to resume its pending entries")
    w.add_argument("--metrics-port", type=int, default=0, help="serve this worker's Prometheus metrics on this port")

    t = add("train", "train the fast path (LightGBM) and the transformer fallback; write versioned artifacts",
            "Embed labelled texts with all-MiniLM-L6-v2 and train the LightGBM fast path on them (pooled with a "
            "logistic regression, temperature-calibrated), then fine-tune MiniLM end to end as the fallback for "
            "tickets the fast path is unsure of (CPU, minutes; --no-fallback skips it). Escalate/abstain thresholds "
            "are chosen on a 10% holdout for the target precision. Artifacts go to <models dir>/<version>/ and "
            "<models dir>/fallback/<version>/; running workers pick them up within seconds.")
    _data_args(t)
    t.add_argument("--models-dir", help="where artifacts go (ROUTING_MODELS_DIR, default state/models)")
    t.add_argument("--limit", type=int, default=0, help="train on the first N rows only (quick trials)")
    t.add_argument("--no-fallback", action="store_true", help="train only the fast path")
    t.add_argument("--epochs", type=float, default=2.0, help="fallback fine-tuning epochs, may be fractional (default 2)")
    t.add_argument("--max-seq-length", type=int, default=64, help="fallback token limit per ticket (default 64)")
    t.add_argument("--target-precision", type=float, help="precision the kept tickets must reach (default 0.9)")
    t.add_argument("--escalation-budget", type=float, help="most tickets sent to the fallback, a share (default 0.25)")

    e = add("eval", "evaluate the latest models on labelled data",
            "Run the cascade (fast path, fallback, abstain) on labelled tickets and print accuracy, macro-F1, the "
            "escalation and abstain rates, accuracy on kept vs coverage (table + PNG), the 10 worst classes and "
            "latency per ticket for each path. Never train or tune on the data you evaluate on.")
    _data_args(e)
    e.add_argument("--models-dir", help="where artifacts are (ROUTING_MODELS_DIR, default state/models)")
    e.add_argument("--limit", type=int, default=0, help="evaluate the first N rows only")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    e.add_argument("--plot", default="", help="coverage plot PNG (default <models dir>/eval-<model>.png)")
    e.add_argument("--no-fallback", action="store_true", help="ignore the fallback model (fast path + abstain only)")
    e.add_argument("--escalated-only", action="store_true",
                   help="run the fallback only on escalated tickets (faster; no 'fallback alone' accuracy)")
    return p


def _data_args(sp) -> None:
    sp.add_argument("--data", help="CSV or JSONL of labelled tickets (default: BANKING77 train from ../shared/datasets)")
    sp.add_argument("--text-col", default="text", help="column with the ticket text (default: text)")
    sp.add_argument("--label-col", default="category", help="column with the label (default: category)")


def _settings(args) -> Settings:
    return Settings.from_env(
        host=getattr(args, "host", None), port=getattr(args, "port", None),
        agents_file=getattr(args, "agents", None), models_dir=getattr(args, "models_dir", None),
    )


def _labelled_data(args, s: Settings):
    from .classifier import default_training_data, read_labelled

    data = Path(args.data) if args.data else (Path(s.train_data) if s.train_data else default_training_data())
    if data is None or not data.exists():
        print("no labelled data: pass --data FILE (CSV/JSONL) or set ROUTING_TRAIN_DATA", file=sys.stderr)
        return None, [], []
    texts, labels = read_labelled(data, args.text_col, args.label_col)
    if getattr(args, "limit", 0):
        texts, labels = texts[: args.limit], labels[: args.limit]
    return data, texts, labels


def _knob(args, s: Settings, name: str, default: float) -> float:
    v = getattr(args, name, None)
    return float(v if v is not None else getattr(s, name, default))


def cmd_train(args, s: Settings) -> int:
    from .classifier import train
    from .embedder import shared_embedder
    from .teams import load_teams

    data, texts, labels = _labelled_data(args, s)
    if data is None:
        return 2
    target = _knob(args, s, "target_precision", 0.9)
    budget = _knob(args, s, "escalation_budget", 0.25)
    teams = load_teams(s.team_map or None)
    print(f"training on {len(texts)} rows, {len(set(labels))} labels from {data}", file=sys.stderr)
    embedder = shared_embedder()
    clf = train(texts, labels, embedder, teams=teams, progress=True, source=str(data),
                target_precision=target, escalation_budget=budget)
    if not getattr(args, "no_fallback", False):
        from .evaluate import tune_policy
        from .fallback import train_fallback

        print("fine-tuning the transformer fallback (CPU; --no-fallback skips this)", file=sys.stderr, flush=True)
        fb = train_fallback(texts, labels, teams=teams, epochs=getattr(args, "epochs", 2.0),
                            max_seq_length=getattr(args, "max_seq_length", 64), progress=True, source=str(data),
                            label_names=clf.labels)
        # Both models left out the same holdout rows (same labels, same seed): tune the joint policy there.
        tuned = tune_policy(clf, fb, texts, labels, embedder, target_precision=target, escalation_budget=budget)
        if tuned is not None:
            clf.policy = tuned
        clf.meta["fallback_version"] = fb.version
        # Fallback first: a worker that sees the new fast path can already find its fallback.
        fb_path = fb.save(s.models_path)
        print(f"fallback {fb.version} written to {fb_path}  metrics={fb.metrics}")
    path = clf.save(s.models_path)
    print(f"model {clf.version} written to {path}  metrics={clf.metrics}  policy={clf.meta.get('policy')}")
    return 0


def cmd_eval(args, s: Settings) -> int:
    import json

    from .classifier import Classifier, latest_model
    from .embedder import shared_embedder
    from .evaluate import evaluate, format_report, plot_coverage
    from .fallback import FallbackModel, latest_fallback
    from .teams import load_teams

    data, texts, labels = _labelled_data(args, s)
    if data is None:
        return 2
    path = latest_model(s.models_path)
    if path is None:
        print(f"no model in {s.models_path}: run `routing-engine train` first", file=sys.stderr)
        return 2
    teams = load_teams(s.team_map or None)
    clf = Classifier.load(path, teams=teams)
    fb = None
    fb_path = None if args.no_fallback else latest_fallback(s.models_path)
    if fb_path is not None:
        fb = FallbackModel.load(fb_path, teams=teams)
    report = evaluate(texts, labels, clf, shared_embedder(), fb, fallback_on_all=not args.escalated_only,
                      progress=not args.json)
    report["data"] = str(data)
    plot = Path(args.plot) if args.plot else s.models_path / f"eval-{clf.version}.png"
    report["plot"] = str(plot_coverage(report, plot))
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
        print(f"\ncoverage plot: {report['plot']}")
    return 0


def ensure_model(s: Settings) -> None:
    from .classifier import latest_model

    if latest_model(s.models_path) is None:
        print(f"no model in {s.models_path}: training the default one first (one-time, about 1-2 minutes)",
              file=sys.stderr, flush=True)
        # the fast path only: fine-tuning the fallback takes many minutes; `routing-engine train` adds it
        rc = cmd_train(argparse.Namespace(data=None, text_col="text", label_col="category", limit=0,
                                          no_fallback=True), s)
        if rc:
            raise SystemExit(rc)


def build_stages(names: list[str], s: Settings):
    from .alerts import AlertStage
    from .dedup import DedupStage
    from .enrich import EnrichStage
    from .fallback_stage import FallbackStage
    from .keys import Keys
    from .route import RouteStage

    k = Keys(s.prefix)
    table = {"enrich": EnrichStage, "fallback": FallbackStage, "dedup": DedupStage, "route": RouteStage,
             "alerts": AlertStage}
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
    if args.cmd == "eval":
        return cmd_eval(args, s)
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
