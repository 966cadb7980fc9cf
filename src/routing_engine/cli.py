"""`routing-engine` command line: argparse and dispatch only (up, api, worker, train, eval, replay-alerts)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from .config import Settings
from .infra.keys import STAGE_INPUTS

# Stage names from the topology, not the registry: importing the registry loads the models' libraries, which
# `--help` and argument errors never need.
STAGE_NAMES = tuple(STAGE_INPUTS)

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
        return sub.add_parser(name, help=help_, description=desc, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    up = add("up", "API + a worker running every stage, one process; embedded Redis if REDIS_URL is unset",
             "Start everything a newcomer needs: (embedded) Redis, the model (trained on first start if none "
             "exists), the HTTP API and one worker running every stage. Ctrl-C stops it cleanly.")
    up.add_argument("--host", help="API bind address (ROUTING_HOST)")
    up.add_argument("--port", type=int, help="API port (ROUTING_PORT)")
    up.add_argument("--agents", help="agents YAML loaded at start (ROUTING_AGENTS_FILE)")

    d = add("demo", "`up` plus a built-in flood replayed through the webhook, to watch on the live monitor",
            "Start everything as `up` does (embedded Redis, first-start model, API, every stage) on the key prefix "
            "'demo' (cleared first), then replay a small built-in flood through the webhook: background tickets "
            "plus a storm of one intent, from the shipped BANKING77 texts. Open the printed address to watch the "
            "ticket table, the flood state, an incident opening for the storm, agent load and the breaker. It "
            "keeps serving --linger seconds after the flood, then stops; Ctrl-C stops it at any time.")
    d.add_argument("--host", help="API bind address (ROUTING_HOST)")
    d.add_argument("--port", type=int, help="API port (ROUTING_PORT)")
    d.add_argument("--agents", help="agents YAML loaded at start (ROUTING_AGENTS_FILE)")
    d.add_argument("--duration", type=float, default=45.0, help="seconds of traffic (default 45)")
    d.add_argument("--linger", type=float, default=60.0, help="seconds to keep serving after the flood (default 60)")
    d.add_argument("--storm-intent", default="declined_cash_withdrawal",
                   help="BANKING77 intent of the storm (default declined_cash_withdrawal: an ATM outage)")
    d.add_argument("--storm-rate", type=float, default=30.0, help="storm tickets/s (default 30)")
    d.add_argument("--rate", type=float, default=3.0, help="background tickets/s (default 3)")

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
    w.add_argument("--stages", default=",".join(STAGE_NAMES),
                   help="comma list from: " + ", ".join(STAGE_NAMES)
                        + " (alerts runs only if ROUTING_ALERT_URL is set)")
    w.add_argument("--name",
                   help="consumer name (default host-pid); reuse it after a restart to resume its pending entries")
    w.add_argument("--metrics-port", type=int, default=0, help="serve this worker's Prometheus metrics on this port")

    ra = add("replay-alerts", "re-queue dead-lettered alerts onto the alerts stream (each once)",
             "Put the alerts the alerts stage dead-lettered (receiver down past ROUTING_ALERT_RETRY_FOR_S, or "
             "rejecting them) back on the alerts stream with their original payload and alert_id, printing each. "
             "Replayed dead entries are remembered, so a second run sends nothing twice. Requires REDIS_URL.")
    ra.add_argument("--since", default="-", help="first {prefix}:dead entry id to look at (default: all)")
    ra.add_argument("--dry-run", action="store_true", help="only list what would be replayed")

    rp = add("replay", "what-if: re-run recorded tickets under changed settings and show what would differ",
             "Re-run the tickets recorded on the live prefix (its ticket records, oldest first; or a JSONL export of "
             "GET /v1/tickets/{id} records) through the real pipeline stages on a scratch key prefix, with the "
             "settings given by --set changed, then print what differs from what happened: groups, incidents (and "
             "where their tickets went), categories, teams, assignees. Tickets are paced as they came (gaps divided "
             "by --speed; a gap longer than the dedup window is cut to it), so window and storm rules see the same "
             "traffic. Nothing is sent out (no alerts stage), the live prefix is only read, and the scratch prefix "
             "is deleted afterwards. Agents are the live ones as configured now, all idle at the start, so assignee "
             "changes show the new rules' routing, not a prediction of the old load. Requires REDIS_URL.",
             )
    rp.add_argument("--set", action="append", default=[], metavar="ROUTING_X=VALUE",
                    help="a setting to change for the replay, as its env var (repeatable), e.g. ROUTING_DEDUP_TAU=0.8")
    rp.add_argument("--from-prefix", help="the live prefix to read (default ROUTING_PREFIX)")
    rp.add_argument("--file", help="replay this JSONL export instead of the live prefix's records")
    rp.add_argument("--since", type=float, help="only tickets received after this Unix time (seconds)")
    rp.add_argument("--until", type=float, help="only tickets received before this Unix time (seconds)")
    rp.add_argument("--limit", type=int, default=0, help="at most N tickets (the oldest in range)")
    rp.add_argument("--speed", type=float, default=1.0,
                    help="divide the recorded gaps by this (default 1: real time; 'inf' posts all at once, which "
                         "squeezes the traffic into less time than the rules saw)")
    rp.add_argument("--timeout", type=float, default=120.0, help="give up after this long without progress (s)")
    rp.add_argument("--keep", action="store_true", help="keep the scratch prefix to look at it (API with its prefix)")
    rp.add_argument("--json", action="store_true", help="print one JSON object instead of the table")

    t = add("train", "train the fast path (LightGBM) and the transformer fallback; write versioned artifacts",
            "Embed labelled texts with all-MiniLM-L6-v2 and train the LightGBM fast path on them (pooled with a "
            "logistic regression, temperature-calibrated), then fine-tune MiniLM end to end as the fallback for "
            "tickets the fast path is unsure of (5 epochs with early stopping: about 25 minutes on 2 CPU cores, "
            "about a minute on a GPU; --no-fallback skips it). The escalation budget, blend weight and "
            "escalate/abstain thresholds are chosen on a 10% holdout both models leave out. Artifacts go to "
            "<models dir>/<version>/ and <models dir>/fallback/<version>/; running workers pick them up within "
            "seconds.")
    _data_args(t)
    t.add_argument("--models-dir", help="where artifacts go (ROUTING_MODELS_DIR, default state/models)")
    t.add_argument("--limit", type=int, default=0, help="train on the first N rows only (quick trials)")
    t.add_argument("--no-fallback", action="store_true", help="train only the fast path")
    t.add_argument("--epochs", type=float, default=5.0,
                   help="fallback fine-tuning epochs, may be fractional (default 5; early stopping may end sooner)")
    t.add_argument("--device", choices=("cpu", "cuda", "auto"),
                   help="where the fallback fine-tunes (ROUTING_DEVICE, default auto: a CUDA GPU when torch sees "
                        "one, else the CPU); the artifacts are the same either way")
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
    sp.add_argument("--data",
                    help="CSV or JSONL of labelled tickets (default: BANKING77 train, shipped with the package)")
    sp.add_argument("--text-col", default="text", help="column with the ticket text (default: text)")
    sp.add_argument("--label-col", default="category", help="column with the label (default: category)")


def _settings(args) -> Settings:
    return Settings.from_env(
        host=getattr(args, "host", None), port=getattr(args, "port", None),
        agents_file=getattr(args, "agents", None), models_dir=getattr(args, "models_dir", None),
        target_precision=getattr(args, "target_precision", None),
        escalation_budget=getattr(args, "escalation_budget", None),
    )


def _labelled_data(args, s: Settings):
    from .models.data import default_training_data, read_labelled

    data = Path(args.data) if args.data else (Path(s.train_data) if s.train_data else default_training_data())
    if data is None or not data.exists():
        print("no labelled data: pass --data FILE (CSV/JSONL) or set ROUTING_TRAIN_DATA", file=sys.stderr)
        return None, [], []
    texts, labels = read_labelled(data, args.text_col, args.label_col)
    if getattr(args, "limit", 0):
        texts, labels = texts[: args.limit], labels[: args.limit]
    return data, texts, labels


def cmd_train(args, s: Settings) -> int:
    from .domain.teams import load_teams
    from .models.embedder import pipeline_embedder
    from .models.training import train_and_save

    data, texts, labels = _labelled_data(args, s)
    if data is None:
        return 2
    print(f"training on {len(texts)} rows, {len(set(labels))} labels from {data}", file=sys.stderr)
    # the embedder the pipeline will use (ROUTING_EMBEDDER), the int8 model built first when it is missing
    embedder = pipeline_embedder(s.embedder, s.models_path, build=True, min_cosine=s.embedder_min_cosine)
    train_and_save(texts, labels, s.models_path, embedder, teams=load_teams(s.team_map or None),
                   source=data, target_precision=s.target_precision, escalation_budget=s.escalation_budget,
                   fallback=not args.no_fallback, epochs=args.epochs, max_seq_length=args.max_seq_length,
                   say=lambda m: print(m, flush=True), device=args.device)
    return 0


def cmd_eval(args, s: Settings) -> int:
    import json

    from .domain.teams import load_teams
    from .models.classifier import Classifier, latest_model
    from .models.embedder import shared_embedder
    from .models.evaluation import evaluate, format_report, plot_coverage
    from .models.fallback import FallbackModel, latest_fallback

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


def cmd_replay_alerts(args, s: Settings) -> int:
    import redis.asyncio as aioredis

    from .infra.alert_replay import replay_alerts

    async def run() -> None:
        r = aioredis.from_url(s.redis_url)
        try:
            await replay_alerts(r, s, since=args.since, dry_run=args.dry_run, say=lambda m: print(m, flush=True))
        finally:
            await r.aclose()

    asyncio.run(run())
    return 0


def cmd_replay(args, s: Settings) -> int:
    import json

    from . import service
    from .infra.replay import format_comparison

    changes = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            print(f"--set {item!r}: expected ROUTING_NAME=VALUE", file=sys.stderr)
            return 2
        changes[name.strip()] = value.strip()
    try:
        s.overridden(changes)
    except ValueError as exc:
        print(f"--set: {exc}", file=sys.stderr)
        return 2
    if args.speed <= 0:
        print("--speed must be above 0", file=sys.stderr)
        return 2
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else (lambda m: print(m, flush=True))
    result = asyncio.run(service.replay(
        s, changes, source_prefix=args.from_prefix, export=args.file,
        since_ms=int(args.since * 1000) if args.since is not None else None,
        until_ms=int(args.until * 1000) if args.until is not None else None,
        limit=args.limit or None, speed=args.speed, timeout_s=args.timeout, keep=args.keep, say=say))
    if args.json:
        print(json.dumps(result))
    else:
        what = ", ".join(f"{a}={b}" for a, b in changes.items()) or "no changes (a control run)"
        print(format_comparison(result, f"\nreplay of {result['tickets']} tickets from {result['source']} with {what}"))
        if result["skipped"]:
            print(f"skipped (invalid): {len(result['skipped'])}, e.g. {result['skipped'][0]}")
    return 0


def cmd_serve(args, s: Settings) -> int:
    # the service (stages, models, web) is imported only for the commands that run it: see STAGE_NAMES
    from . import service
    from .logs import redact_url

    embedded = None
    try:
        if args.cmd == "demo":
            from dataclasses import replace

            from .demo import DemoPlan

            plan = DemoPlan(duration_s=args.duration, background_rate=args.rate, storm_intent=args.storm_intent,
                            storm_rate=args.storm_rate)
            service.ensure_model(s)
            s, embedded = service.with_embedded_redis(s)
            if "ROUTING_PREFIX" not in os.environ:
                s = replace(s, prefix="demo")  # never mixes with a real pipeline's keys on the same Redis
            print(f"Redis    {redact_url(s.redis_url)}  (key prefix {{{s.prefix}}})", flush=True)
            asyncio.run(service.demo(s, plan, linger_s=args.linger, agents_file=args.agents,
                                     say=lambda m: print(m, flush=True)))
        elif args.cmd == "up":
            service.ensure_model(s)
            s, embedded = service.with_embedded_redis(s)
            where = f"  (embedded, data in {embedded.dir})" if embedded else ""
            print(f"Redis    {redact_url(s.redis_url)}{where}", flush=True)
            asyncio.run(service.serve(s, stages=service.STAGES, api=True, agents_file=args.agents))
        elif args.cmd == "api":
            asyncio.run(service.serve(s, api=True, agents_file=args.agents))
        else:
            stages = [x.strip() for x in args.stages.split(",") if x.strip()]
            unknown = [x for x in stages if x not in service.STAGES]
            if unknown:
                print(f"unknown stage(s): {', '.join(unknown)}; choose from {', '.join(service.STAGES)}",
                      file=sys.stderr)
                return 2
            if "enrich" in stages and service.latest_model(s.models_path) is None:
                print(f"no model in {s.models_path}: run `routing-engine train` first", file=sys.stderr)
                return 2
            asyncio.run(service.serve(s, stages=stages, consumer=args.name, metrics_port=args.metrics_port))
    except KeyboardInterrupt:
        pass
    finally:
        if embedded:
            embedded.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        s = _settings(args)
    except ValueError as exc:  # a setting of the wrong type or range: say which, not a traceback
        print(f"configuration: {exc}", file=sys.stderr)
        return 2
    from .logs import setup_logging

    setup_logging(s.log_format, s.log_level)
    if args.cmd == "train":
        return cmd_train(args, s)
    if args.cmd == "eval":
        return cmd_eval(args, s)
    refusal = s.bind_refusal() if args.cmd in ("api", "up", "demo") else None
    if refusal:  # before training or starting anything: a token must be set to serve beyond loopback
        print(refusal, file=sys.stderr)
        return 2
    if args.cmd in ("api", "worker", "replay-alerts", "replay") and not s.redis_url:
        print(f"{args.cmd} needs REDIS_URL (only `routing-engine up` starts an embedded Redis)", file=sys.stderr)
        return 2
    if args.cmd == "replay-alerts":
        return cmd_replay_alerts(args, s)
    if args.cmd == "replay":
        return cmd_replay(args, s)
    return cmd_serve(args, s)


if __name__ == "__main__":
    sys.exit(main())
