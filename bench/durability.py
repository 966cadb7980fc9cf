"""What ROUTING_ACK_AFTER_FSYNC costs at the webhook: tickets/s and latency with and without it.

A private embedded server (AOF on, appendfsync everysec, as `up` runs it) in a temp dir; the API in this process
(service.running, no stages: only the door is measured); N tickets POSTed to /v1/tickets with C in flight, twice
with the option off and twice on (off, on, on, off), each on its own key prefix after a short warm-up. With the
option each 202 waits for WAITAOF 1 0 (a reply short of 1 would fail the run). Timings are wall-clock on whatever
else the machine is doing (the load average is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from routing_engine import service  # noqa: E402
from routing_engine.config import Settings  # noqa: E402
from routing_engine.infra.embedded_redis import EmbeddedRedis  # noqa: E402

OUT = ROOT / "bench" / "out" / "durability.json"
WARMUP = 50


async def post_all(url: str, tag: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    """POST n tickets, `concurrency` at a time; (seconds, per-request latencies in ms). Any non-202 fails."""
    latencies: list[float] = []
    todo = iter(range(n))

    async def one_worker(http: aiohttp.ClientSession) -> None:
        for i in todo:
            body = {"id": f"{tag}-{i}", "subject": "card", "body": f"my card {i} has not arrived yet"}
            t0 = time.perf_counter()
            async with http.post(url, json=body) as resp:
                await resp.read()
                if resp.status != 202:
                    raise RuntimeError(f"ticket {i}: HTTP {resp.status}")
            latencies.append((time.perf_counter() - t0) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(one_worker(http) for _ in range(concurrency)))
        return time.perf_counter() - t0, latencies


async def measure(redis_url: str, state_dir: str, fsync: bool, n: int, concurrency: int, rnd: int) -> dict:
    prefix = f"bench-fsync-{int(fsync)}-{rnd}"
    s = Settings(redis_url=redis_url, prefix=prefix, state_dir=state_dir, ack_after_fsync=fsync, log_level="warning")
    r = aioredis.from_url(redis_url)
    try:
        async with service.running(s, r, api=True, host="127.0.0.1", port=0) as run:
            url = f"http://127.0.0.1:{run.port}/v1/tickets"
            await post_all(url, "warm", WARMUP, concurrency)
            seconds, lat = await post_all(url, "t", n, concurrency)
    finally:
        await r.aclose()
    return {"ack_after_fsync": fsync, "tickets": n, "concurrency": concurrency, "seconds": round(seconds, 3),
            "tickets_per_s": round(n / seconds, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2)}


async def main_async(n: int, concurrency: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-durability-") as tmp:
        server = EmbeddedRedis(tmp)  # AOF on, appendfsync everysec: the embedded default
        url = server.start()
        try:
            # off, on, on, off: a later run is a little faster (warm server and caches), so each mode gets one early
            # and one late run, and the table shows their mean
            runs = [await measure(url, tmp, fsync, n, concurrency, i)
                    for i, fsync in enumerate((False, True, True, False))]
        finally:
            server.stop()
    return {"command": f"python bench/durability.py --tickets {n} --concurrency {concurrency}",
            "redis": "embedded (appendonly yes, appendfsync everysec)", "load_avg_1m": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(), "runs": runs, "by_mode": [summary(runs, fsync) for fsync in (False, True)]}


def summary(runs: list[dict], fsync: bool) -> dict:
    mine = [r for r in runs if r["ack_after_fsync"] == fsync]
    return {"ack_after_fsync": fsync, "runs": len(mine), "tickets": mine[0]["tickets"],
            "concurrency": mine[0]["concurrency"],
            **{m: round(sum(r[m] for r in mine) / len(mine), 1 if m == "tickets_per_s" else 2)
               for m in ("tickets_per_s", "p50_ms", "p99_ms")}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tickets", type=int, default=1000, help="tickets per run (default 1000)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    args = p.parse_args()
    from routing_engine.logs import setup_logging

    setup_logging("console", "warning")
    report = asyncio.run(main_async(args.tickets, args.concurrency))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'ROUTING_ACK_AFTER_FSYNC':<24} {'tickets/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for run in report["by_mode"]:
        print(f"{str(run['ack_after_fsync']).lower():<24} {run['tickets_per_s']:>10} {run['p50_ms']:>8} "
              f"{run['p99_ms']:>8}")
    print(f"(mean of 2 runs each of {report['runs'][0]['tickets']} tickets, concurrency "
          f"{report['runs'][0]['concurrency']}, "
          f"load {report['load_avg_1m']} on {report['cpus']} CPUs; {OUT.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
