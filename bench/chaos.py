#!/usr/bin/env python
"""Chaos bench: a flood through real `routing-engine worker` processes while things get SIGKILLed, and what it
cost in tickets. Two scenarios, each on its own private embedded Redis (AOF, appendfsync everysec):

  workers  two workers; every --kill-every seconds one is SIGKILLed and restarted under the same name
  redis    two workers; the Redis server is SIGKILLed --redis-kills times mid-flood and restarted on its AOF

The producer posts through the webhook (POST /v1/tickets/batch, in this process) the way the README's producer's
guide says: a refused or failed batch is retried with the same ids, and after a Redis restart every batch
acknowledged in the last --resend-window seconds is sent again (appendfsync everysec may lose ~1 s of
acknowledged writes; the same id makes the resend safe). An operator resolves assigned tickets throughout, so
slots are freed and taken while the kills land.

    python bench/chaos.py                        # both scenarios, 2,000 tickets each
    python bench/chaos.py --scenario redis --tickets 500 --models-dir state/models

Reports per scenario: lost (never routed), routed twice, agents over capacity (or load not equal to the tickets
holding its slots), stuck pending, dead-lettered, wall time, tickets/s. Written to bench/out/chaos.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEXTS = ["my card has not arrived yet", "the money transfer never reached my friend", "ATM did not give me my cash",
         "someone stole my card", "why do you need to verify my identity", "what exchange rate do you use for euros",
         "I was charged twice for the same purchase", "how do I top up with a bank transfer",
         "my account was locked after a failed login", "the app shows a pending card payment I did not make"]
BATCH = 50


def _ticket(i: int) -> dict:
    return {"id": f"chaos-{i}", "subject": f"Ticket {i}", "body": f"{TEXTS[i % len(TEXTS)]} (ref {i})"}


class Workers:
    """`routing-engine worker` processes by name, restartable under the same name."""

    def __init__(self, settings, stages: list[str], log_dir: Path):
        self.s, self.stages, self.log_dir = settings, stages, log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.kills = 0

    def start(self, name: str) -> None:
        env = dict(os.environ, REDIS_URL=self.s.redis_url, ROUTING_PREFIX=self.s.prefix,
                   ROUTING_MODELS_DIR=str(self.s.models_path), ROUTING_BLOCK_MS=str(self.s.block_ms),
                   ROUTING_CLAIM_IDLE_MS=str(self.s.claim_idle_ms), ROUTING_CLAIM_EVERY_MS=str(self.s.claim_every_ms),
                   ROUTING_LOG_FORMAT="json", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        log = open(self.log_dir / f"worker-{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "routing_engine.cli", "worker", "--stages", ",".join(self.stages), "--name", name],
            env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            self.kills += 1
        p.wait(timeout=30)

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


class Producer:
    """POST /v1/tickets/batch with the producer's guide: retry with the same ids; remember when each batch got in."""

    def __init__(self, url: str, n: int):
        self.url, self.n = url, n
        self.acked: dict[int, float] = {}  # batch start -> when its 202 came
        self.refused = 0

    async def send_batch(self, session: aiohttp.ClientSession, start: int, deadline: float) -> None:
        body = [_ticket(i) for i in range(start, min(start + BATCH, self.n))]
        delay = 0.1
        while time.monotonic() < deadline:
            try:
                async with session.post(self.url + "/v1/tickets/batch", json=body) as resp:
                    if resp.status == 202:
                        self.acked[start] = time.monotonic()
                        return
                    if resp.status not in (429, 503):
                        raise RuntimeError(f"batch {start}: {resp.status} {await resp.text()}")
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            self.refused += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise RuntimeError(f"batch {start} never accepted")

    async def run(self, rate: float, deadline: float) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            sem = asyncio.Semaphore(4)

            async def one(start):
                await asyncio.sleep(start / rate)  # paced: the kills land while tickets keep coming
                async with sem:
                    await self.send_batch(session, start, deadline)

            await asyncio.gather(*(one(s) for s in range(0, self.n, BATCH)))

    async def resend_since(self, t: float, deadline: float) -> int:
        again = [s for s, at in self.acked.items() if at >= t]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(self.send_batch(session, s, deadline) for s in again))
        return len(again)


async def _resolver(r, k, scripts, stop: asyncio.Event) -> int:
    from routing_engine.infra.operations import resolve_ticket

    n = 0
    while not stop.is_set():
        try:
            for tid in await r.zrange(k.idx_status("assigned"), 0, 4):
                if (await resolve_ticket(r, k, scripts, tid.decode())).outcome == "resolved":
                    n += 1
        except (aioredis.ConnectionError, aioredis.ResponseError, OSError):
            pass  # Redis is down or loading: the operator tries again
        await asyncio.sleep(0.1)
    return n


async def _groups(r, k, stages) -> list[tuple[str, str]]:
    return [(stream, g) for g in stages for stream in k.stage_inputs(g) if await r.exists(stream)]


async def _measure(r, k, n: int, stages) -> dict:
    from routing_engine.infra.agents import list_agents

    counts = collections.Counter(f[b"ticket_id"].decode() for _, f in await r.xrange(k.routed))
    held = collections.Counter()
    for tid in await r.zrange(k.idx_status("assigned"), 0, -1):
        who, slot = await r.hmget(k.ticket(tid.decode()), "assignee", "holds_slot")
        if slot == b"1" and who:
            held[who.decode()] += 1
    over = [a["id"] for a in await list_agents(r, k)
            if not 0 <= a["load"] <= a["capacity"] or a["load"] != held[a["id"]]]
    pending = sum([(await r.xpending(s, g))["pending"] for s, g in await _groups(r, k, stages)])
    return {"lost": sum(1 for i in range(n) if counts[f"chaos-{i}"] == 0),
            "routed_twice": sum(1 for c in counts.values() if c > 1),
            "over_capacity": len(over), "stuck_pending": pending, "dead_lettered": await r.xlen(k.dead)}


async def run_scenario(name: str, base, n: int, args) -> dict:
    from aiohttp import web

    from routing_engine.infra.agents import load_agents_file
    from routing_engine.infra.embedded_redis import EmbeddedRedis
    from routing_engine.infra.keys import Keys
    from routing_engine.infra.scripts import Scripts
    from routing_engine.service import PIPELINE_STAGES
    from routing_engine.web.app import make_app

    tmp = Path(tempfile.mkdtemp(prefix=f"chaos-{name}-"))
    server = EmbeddedRedis(tmp)
    s = replace(base, redis_url=server.start(), prefix="chaos-" + uuid.uuid4().hex[:8], state_dir=str(tmp))
    stages = list(PIPELINE_STAGES)
    r = aioredis.from_url(s.redis_url)
    k = Keys(s.prefix)
    workers = Workers(s, stages, tmp)
    runner = None
    stop = asyncio.Event()
    redis_kills = 0
    try:
        await load_agents_file(r, k)
        runner = web.AppRunner(make_app(s, r), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        for w in ("w1", "w2"):
            workers.start(w)
        while True:  # both workers joined every group before the clock starts
            try:
                names = {c["name"] for c in await r.xinfo_consumers(k.deduped, "route")}
            except aioredis.ResponseError:
                names = set()
            if {b"w1", b"w2"} <= names:
                break
            await asyncio.sleep(0.5)
        producer = Producer(url, n)
        resolver = asyncio.create_task(_resolver(r, k, Scripts(r, s, k), stop))
        t0 = time.monotonic()
        deadline = t0 + args.timeout
        feed = asyncio.create_task(producer.run(args.rate, deadline))

        async def routed() -> int:
            try:
                return await r.xlen(k.routed)
            except (aioredis.ConnectionError, aioredis.ResponseError, OSError):
                return 0

        if name == "workers":
            while await routed() < n and time.monotonic() < deadline:
                await asyncio.sleep(args.kill_every)
                workers.kill("w1")  # SIGKILL: its pending entries wait for XAUTOCLAIM or its own restart
                workers.start("w1")  # same name: it re-reads its own pending list (deliveries counted)
        else:
            marks = [n * (j + 1) // (args.redis_kills + 1) for j in range(args.redis_kills)]
            for mark in marks:
                while len(producer.acked) * BATCH < mark and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                server.proc.send_signal(signal.SIGKILL)  # no AOF flush: up to ~1 s of writes gone
                killed_at = time.monotonic()
                server.proc.wait(timeout=10)
                redis_kills += 1
                await asyncio.sleep(1.0)
                server.start()  # same dir and port
                await producer.resend_since(killed_at - args.resend_window, deadline)
        await feed
        while await routed() < n and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        wall = time.monotonic() - t0
        await asyncio.sleep(args.settle)  # reclaims and the resolver's last moves land
        stop.set()
        resolved = await resolver
        out = await _measure(r, k, n, stages)
        out.update({"scenario": name, "tickets": n, "wall_s": round(wall, 1), "tickets_per_s": round(n / wall, 1),
                    "worker_kills": workers.kills, "redis_kills": redis_kills, "producer_retries": producer.refused,
                    "resolved_during_flood": resolved})
        return out
    finally:
        stop.set()
        workers.stop_all()
        if runner is not None:
            await runner.cleanup()
        await r.aclose()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=("workers", "redis", "both"), default="both")
    p.add_argument("--tickets", type=int, default=2000)
    p.add_argument("--models-dir", default="", help="model folder (default state/models; trained there if empty)")
    p.add_argument("--rate", type=float, default=100.0, help="tickets/s the producer offers")
    p.add_argument("--kill-every", type=float, default=3.0, help="seconds between worker SIGKILLs (workers)")
    p.add_argument("--redis-kills", type=int, default=2, help="Redis SIGKILLs mid-flood (redis)")
    p.add_argument("--resend-window", type=float, default=3.0, help="re-send batches acked this long before a kill")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this long per scenario")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the last routed entry before measuring")
    p.add_argument("--json", default=str(HERE / "out" / "chaos.json"))
    args = p.parse_args(argv)

    from routing_engine.config import Settings
    from routing_engine.logs import setup_logging
    from routing_engine.service import ensure_model

    setup_logging(level="warning")  # the report, not an access line per batch
    base = Settings(models_dir=args.models_dir or str(ROOT / "state" / "models"), block_ms=100, claim_idle_ms=1500,
                    claim_every_ms=500, batch_size=32)
    ensure_model(base)  # the shipped default model, trained on first use (~75 s)
    names = ["workers", "redis"] if args.scenario == "both" else [args.scenario]
    results = []
    for name in names:
        res = asyncio.run(run_scenario(name, base, args.tickets, args))
        results.append(res)
        print(f"{name:8} {res['tickets']} tickets in {res['wall_s']} s ({res['tickets_per_s']}/s): "
              f"lost {res['lost']}, routed twice {res['routed_twice']}, over capacity {res['over_capacity']}, "
              f"stuck pending {res['stuck_pending']}, dead-lettered {res['dead_lettered']} "
              f"(worker kills {res['worker_kills']}, Redis kills {res['redis_kills']}, "
              f"producer retries {res['producer_retries']}, resolved {res['resolved_during_flood']})", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    bad = any(res[f] for res in results for f in ("lost", "routed_twice", "over_capacity", "stuck_pending"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
