#!/usr/bin/env python
"""Flash-flood bench: replay a ticket-storm scenario through the engine and report throughput, latency,
grouping quality and losses against the scenario's ground truth, next to two anchors measured in the same
run: the embedding model's raw rate on the same texts (the ceiling) and a naive one-ticket-at-a-time
baseline (no Redis, no batching, brute-force cosine over the window).

    python bench/flood.py --scenario single-storm
    python bench/flood.py --scenario calm --tickets 2000 --fast          # the plain "N tickets" benchmark
    python bench/flood.py --scenario two-storms --door http --workers 2
    python bench/flood.py --scenario my-storm.yaml --json out.json

Every run uses its own key prefix on the given Redis and deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import flood_report as fr  # noqa: E402
import scenario as sc_mod  # noqa: E402

REC_FIELDS = ("status", "category", "team", "group", "incident", "alert", "received_at", "t_enrich_start",
              "t_enrich", "t_dedup", "t_route", "enrich", "breaker", "dedup")


def stage_names() -> list[str]:
    """Every stage a ticket passes on its way to routed (the registry's, so a stage added later, like an
    escalation fallback, is picked up here and its tickets are not left waiting)."""
    from routing_engine.service import PIPELINE_STAGES

    return list(PIPELINE_STAGES)


def stage_streams(settings) -> list[tuple[str, str]]:
    """(input stream, consumer group) per stage and input (a stage's urgent lane included)."""
    from routing_engine.service import build_stages

    return [(stream, st.name) for st in build_stages(stage_names(), settings) for stream in st.inputs]


@dataclass
class Options:
    door: str = "stream"              # stream: pipelined XADD; http: POST /v1/tickets[/batch]
    workers: int = 1                  # 0 = the stages run inside this process
    split: list[str] = field(default_factory=list)  # one worker process per entry, running those stages ("enrich")
    fast: bool = False                # ignore the scenario's timing, send as fast as possible
    http_batch: int = 50              # tickets per POST /v1/tickets/batch; 1 = POST /v1/tickets each
    http_concurrency: int = 16
    ceiling: bool = True
    ceiling_max: int = 1024
    baseline: bool = True
    baseline_max: int = 2000          # tickets at most...
    baseline_budget_s: float = 20.0   # ...and seconds at most: its rate is per ticket, a sample is enough
    stall_timeout_s: float = 60.0
    join_timeout_s: float = 180.0
    progress: bool = True
    agents_file: str | None = None
    out_dir: Path = field(default_factory=lambda: HERE / "out")
    keep_keys: bool = False


def ticket_text(t: dict) -> str:
    return f"{t.get('subject', '')}\n{t.get('body', '')}".strip()  # as ingest.Ticket.text


# ---------------------------------------------------------------- anchors

def measure_ceiling(embedder, texts: list[str]) -> dict:
    """Raw embedding rate in batches (the model alone: no Redis, no classifier), warm: the first pass over the
    texts is not timed (ONNX Runtime plans each new batch shape once; a long-running worker has them all), then the
    faster of two timed passes. A cold single pass read 642 texts/s where warm passes of the same texts read ~900
    on this box, which flattered the engine's ratio to its ceiling."""
    t0 = time.perf_counter()
    embedder.encode(texts)
    cold = len(texts) / (time.perf_counter() - t0)
    rates = []
    for _ in range(2):
        t0 = time.perf_counter()
        embedder.encode(texts)
        rates.append(len(texts) / (time.perf_counter() - t0))
    return {"texts_per_s": round(max(rates), 1), "passes_texts_per_s": [round(x, 1) for x in rates],
            "cold_texts_per_s": round(cold, 1), "n": len(texts), "batch": embedder.batch_size}


def naive_baseline(planned: list, embedder, clf, tau: float, window_s: float, urgent_threshold: float,
                   budget_s: float = float("inf")) -> dict:
    """The same tickets one at a time: embed 1 text, classify it, cosine against every vector in the window
    (numpy brute force), join the best neighbour's group if >= tau. No Redis, no batching."""
    from routing_engine.domain import urgency

    n = len(planned)
    vecs = np.zeros((n, embedder.dim), dtype=np.float32)
    times: list[float] = []
    gid: list[str] = []
    preds: dict[str, str] = {}
    t0 = time.perf_counter()
    for i, p in enumerate(planned):
        text = ticket_text(p.ticket)
        v = embedder.encode([text])[0]
        pred = clf.predict(v[None, :], [text])[0]
        s, _ = urgency.score("", p.ticket.get("body", ""), pred.team, pred.confidence)
        _urgent = s > urgent_threshold  # same per-ticket work as enrich; routing itself is not modelled
        lo = bisect.bisect_left(times, p.at_s - window_s)
        g = p.ticket["id"]
        if i > lo:
            sims = vecs[lo:i] @ v
            j = int(np.argmax(sims))
            if sims[j] >= tau:
                g = gid[lo + j]
        vecs[i] = v
        times.append(p.at_s)
        gid.append(g)
        preds[p.ticket["id"]] = pred.label
        if time.perf_counter() - t0 > budget_s:
            n = i + 1
            break
    dt = time.perf_counter() - t0
    planned = planned[:n]
    truth = {p.ticket["id"]: p.truth for p in planned}
    return {
        "tickets_per_s": round(n / dt, 1), "n": n, "seconds": round(dt, 2),
        "accuracy": fr.accuracy(preds, {t: x["category"] for t, x in truth.items()})["accuracy"],
        "budget_s": budget_s if budget_s != float("inf") else None,
        "grouping": fr.pair_scores(dict(zip([p.ticket["id"] for p in planned], gid)),
                                   {t: x["storm"] for t, x in truth.items()}),
    }


def unseen_rows(model_path: Path) -> tuple[set[str] | None, str]:
    """Texts the model never trained on: the holdout of its own split, when it was trained on the very file
    the scenario draws from (BANKING77 train). Accuracy on the other texts is in-sample."""
    from routing_engine.models.data import read_labelled
    from routing_engine.models.data import stratified_split as _split

    meta = json.loads((model_path / "meta.json").read_text())
    src = meta.get("training_data")
    if not src or not Path(src).is_file():
        return None, "model's training data unknown"
    if hashlib.sha256(Path(src).read_bytes()).hexdigest() != meta.get("training_data_sha256"):
        return None, "training data changed since the model was trained"
    texts, labels = read_labelled(src)
    if meta.get("limit") or len(texts) != meta.get("rows"):
        return None, "model trained on a subset"
    if meta.get("metrics", {}).get("refit_on_all_rows"):
        return set(), "model refit on all rows"
    names = sorted(set(labels))
    y = np.array([names.index(x) for x in labels], dtype=np.int32)
    split = _split(y, float(meta.get("holdout") or 0), int(meta.get("seed") or 0))
    if split is None:
        return set(), "no holdout"
    tr, ho = split
    seen = {texts[i].strip() for i in tr}
    return {texts[i].strip() for i in ho} - seen, f"holdout of {Path(src).name}"


# ---------------------------------------------------------------- the engine under test

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """The pipeline for one run: N `routing-engine worker` processes (or the stages in this process), plus
    the HTTP API when the door is http."""

    def __init__(self, settings, r, opts: Options):
        self.s, self.r, self.o = settings, r, opts
        self.procs: list[subprocess.Popen] = []
        self.names: list[str] = []  # each process's name ("bench-w0", "api"), as procs
        self.logs = []
        self.url = None
        self._task = None
        self._inproc = None  # service.running(...) when the stages and API run in this process
        self.stages_of: dict[str, list[str]] = {}  # worker name -> the stages it runs
        self.metrics_ports: list[int] = []  # each worker's --metrics-port (per-step timings are read from there)

    def _env(self, threads: int | None) -> dict:
        env = dict(os.environ)
        env.update({
            "REDIS_URL": self.s.redis_url, "ROUTING_PREFIX": self.s.prefix,
            "ROUTING_MODELS_DIR": str(self.s.models_path),
            "ROUTING_BATCH_SIZE": str(self.s.batch_size), "ROUTING_DEDUP_TAU": str(self.s.dedup_tau),
            "ROUTING_INCIDENT_K": str(self.s.incident_k), "ROUTING_DEDUP_WINDOW_S": str(self.s.dedup_window_s),
            "ROUTING_LOG_FORMAT": "json", "ROUTING_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1",
            "ROUTING_ALERT_URL": "",
        })
        if threads:
            # N workers on few cores: torch's and ONNX Runtime's default (all cores each) makes them fight (calm
            # 20,000 --fast --workers 2 on 2 cores: 462-482 tickets/s with two embedder threads each, 507-510 with
            # one); an explicit ROUTING_EMBED_THREADS wins
            env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
            env.setdefault("ROUTING_EMBED_THREADS", str(threads))
        return env

    def _spawn(self, args: list[str], name: str, threads: int | None) -> None:
        self.o.out_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.o.out_dir / f"flood-{name}.log", "wb")
        self.logs.append(log)
        self.names.append(name)
        self.procs.append(subprocess.Popen([sys.executable, "-m", "routing_engine.cli", *args],
                                           env=self._env(threads), stdout=log, stderr=subprocess.STDOUT))

    async def __aenter__(self):
        from routing_engine import service
        from routing_engine.infra.agents import load_agents_file
        from routing_engine.infra.keys import Keys

        k = Keys(self.s.prefix)
        self.agents = await load_agents_file(self.r, k, self.o.agents_file)
        n = self.o.workers
        http = self.o.door == "http"
        if n == 0:
            self._inproc = service.running(self.s, self.r, stages=stage_names(), consumer="bench-inproc", api=http,
                                           host="127.0.0.1", port=0, agents_file=self.o.agents_file)
            run = await self._inproc.__aenter__()
            self._task = run.task
            names = ["bench-inproc"]
            self.stages_of = {"bench-inproc": stage_names()}
            if http:
                self.url = f"http://127.0.0.1:{run.port}"
        else:
            if self.o.split:  # stages apart: each process its own set, every core's threads to each
                threads = None
                self.stages_of = {f"bench-w{i}": part.split(",") for i, part in enumerate(self.o.split)}
            else:
                threads = max(1, (os.cpu_count() or 1) // n) if n > 1 else None
                self.stages_of = {f"bench-w{i}": stage_names() for i in range(n)}
            names = list(self.stages_of)
            for name in names:
                port = _free_port()
                self.metrics_ports.append(port)
                self._spawn(["worker", "--stages", ",".join(self.stages_of[name]), "--name", name,
                             "--metrics-port", str(port)], name, threads)
            if http:
                port = _free_port()
                self.url = f"http://127.0.0.1:{port}"
                self._spawn(["api", "--host", "127.0.0.1", "--port", str(port)], "api", None)
        await self._wait_ready(k, names)
        return self

    async def _wait_ready(self, k, names: list[str]) -> None:
        """Every worker has joined every stage's consumer group and set every stage up (its models loaded), the API
        answers."""
        deadline = time.monotonic() + self.o.join_timeout_s
        streams = stage_streams(self.s)
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    tail = Path(self.logs[self.procs.index(p)].name).read_text(errors="replace")[-2000:]
                    raise SystemExit(f"a bench process exited with {p.returncode} during start:\n{tail}")
            if self._inproc is not None and self._task is not None and self._task.done():
                self._task.result()
            joined, want = 0, 0
            for stream, group in streams:
                try:
                    cons = await self.r.xinfo_consumers(stream, group)
                except Exception:
                    cons = []
                have = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in cons}
                mine = [n for n in names if group in self.stages_of[n]]
                want += len(mine)
                joined += sum(1 for n in mine if n in have)
            api_ok = self.url is None or await _http_ok(self.url + "/healthz")
            # joined is not enough: a consumer is registered before its stage's setup (the fallback loads ~5 s
            # more); tickets sent before that waited for it and tripped the breaker at every start
            if joined == want and api_ok and await self._stages_ready(names):
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"workers not ready after {self.o.join_timeout_s:.0f}s "
                                 f"({joined}/{want} stage consumers joined); "
                                 f"logs in {self.o.out_dir}")
            await asyncio.sleep(0.25)

    async def _stages_ready(self, names: list[str]) -> bool:
        """Every worker says routing_stage_ready 1 for every stage (set once its setup is done)."""
        from prometheus_client.parser import text_string_to_metric_families

        want = {(n, st) for n in names for st in self.stages_of[n]}
        seen = {(smp.labels.get("consumer"), smp.labels.get("stage"))
                for text in await self.metrics_texts(quiet=True)
                for fam in text_string_to_metric_families(text) if fam.name == "routing_stage_ready"
                for smp in fam.samples if smp.value == 1.0}
        return want <= seen

    async def metrics_texts(self, quiet: bool = False) -> list[str]:
        """The Prometheus exposition of every worker (of this process when the stages run in it)."""
        if self._inproc is not None:
            from prometheus_client import REGISTRY, generate_latest

            return [generate_latest(REGISTRY).decode()]
        import aiohttp

        out = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            for port in self.metrics_ports:
                try:
                    async with s.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        out.append(await resp.text())
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    if not quiet:
                        print(f"metrics of the worker on port {port} not read: {exc}", file=sys.stderr)
        return out

    async def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each process of the run: this bench process (the stages too,
        when they run in it), each worker and the API, and the Redis server (INFO cpu: also when it is remote)."""
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out = {"bench" if self._inproc is None else "bench + stages": ru.ru_utime + ru.ru_stime}
        tick = os.sysconf("SC_CLK_TCK")
        for name, p in zip(self.names, self.procs):
            try:  # fields 14 and 15 (utime, stime) in clock ticks; the name in field 2 may hold spaces
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        try:
            info = await self.r.info("cpu")
            out["redis"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        except Exception:
            pass
        return out

    async def __aexit__(self, *exc):
        if self._inproc is not None:
            await asyncio.wait_for(self._inproc.__aexit__(*exc), 30)
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                await asyncio.to_thread(p.wait, 30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in self.logs:
            log.close()


async def _http_ok(url: str) -> bool:
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            async with s.get(url) as resp:
                return resp.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


# ---------------------------------------------------------------- replay and watch

class Replayer:
    def __init__(self, r, keys, settings, opts: Options, url: str | None):
        self.r, self.k, self.s, self.o, self.url = r, keys, settings, opts, url
        self.published = 0
        self.http_errors: list[str] = []
        self.done = False
        self._session = None
        self._sem = asyncio.Semaphore(opts.http_concurrency)
        self._inflight: set[asyncio.Task] = set()
        self._lanes: dict[str, str] = {}
        from routing_engine.infra.scripts import Scripts

        self.scripts = Scripts(r, settings, keys)

    def lane(self, ticket: dict) -> str:
        """The ingest lane, chosen as the webhook chooses it (Scripts.lane: the text's urgency alone)."""
        from routing_engine.domain.ticket import Ticket

        return self.scripts.lane(Ticket("-", subject=ticket.get("subject") or "", body=ticket.get("body") or ""))

    async def _send_stream(self, chunk: list) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            for p in chunk:
                # never MAXLEN an ingest lane
                pipe.xadd(self._lanes.get(p.ticket["id"], self.k.ingest), {"data": orjson.dumps(p.ticket)})
            await pipe.execute()
        self.published += len(chunk)

    async def _post(self, path: str, payload, n: int) -> None:
        async with self._sem:
            for attempt in range(3):
                try:
                    async with self._session.post(self.url + path, data=orjson.dumps(payload),
                                                  headers={"Content-Type": "application/json"}) as resp:
                        body = await resp.read()
                        if resp.status == 202:
                            if path.endswith("batch"):
                                bad = [x for x in orjson.loads(body)["results"] if "error" in x]
                                self.http_errors += [str(x["error"])[:200] for x in bad]
                            self.published += n
                            return
                        err = f"HTTP {resp.status}: {body[:200]!r}"
                except Exception as exc:  # connection reset under overload: retry, then count it
                    err = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.2 * (attempt + 1))
            self.http_errors.append(err)

    def _send_http(self, chunk: list) -> None:
        b = self.o.http_batch
        if b <= 1:
            jobs = [self._post("/v1/tickets", p.ticket, 1) for p in chunk]
        else:
            jobs = [self._post("/v1/tickets/batch", [p.ticket for p in chunk[i:i + b]], len(chunk[i:i + b]))
                    for i in range(0, len(chunk), b)]
        for j in jobs:
            t = asyncio.create_task(j)
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)

    async def _send(self, chunk: list) -> None:
        if self.o.door == "http":
            self._send_http(chunk)
            if len(self._inflight) > 4 * self.o.http_concurrency:  # backpressure when the API falls behind
                await asyncio.wait(list(self._inflight), return_when=asyncio.FIRST_COMPLETED)
        else:
            await self._send_stream(chunk)

    async def run(self, planned: list) -> None:
        import aiohttp

        if self.o.door == "http":
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                                  connector=aiohttp.TCPConnector(limit=self.o.http_concurrency))
        if self.o.fast and planned:
            # as fast as possible is a producer replaying its backlog: each ticket says when it was created (its
            # planned time, ending now), so storm detection judges the scenario's rates, not the replay's
            base = time.time() - planned[-1].at_s - 1.0
            for p in planned:
                p.ticket["created_at"] = datetime.fromtimestamp(base + p.at_s, UTC).isoformat()
        if self.o.door == "stream":  # the stream door's producer picks the lane as the webhook would
            self._lanes = {p.ticket["id"]: self.lane(p.ticket) for p in planned}
        try:
            t0 = time.perf_counter()
            i, n = 0, len(planned)
            step = 500 if self.o.door == "stream" else self.o.http_batch * self.o.http_concurrency
            while i < n:
                if self.o.fast:
                    j = min(n, i + step)
                else:
                    now = time.perf_counter() - t0
                    j = i
                    while j < n and planned[j].at_s <= now and j - i < step:
                        j += 1
                    if j == i:
                        await asyncio.sleep(min(0.005, max(0.0, planned[i].at_s - now)))
                        continue
                await self._send(planned[i:j])
                i = j
            while self._inflight:
                await asyncio.wait(list(self._inflight))
        finally:
            self.done = True
            if self._session is not None:
                await self._session.close()


async def watch(r, k, rep: Replayer, total: int, opts: Options, samples: list[dict],
                streams: list[tuple[str, str]]) -> None:
    """Sample backlog per stage twice a second and drive the progress bar, until every ticket is routed or
    dead-lettered (or nothing moves for stall_timeout_s)."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="tkt", desc="routed", file=sys.stderr, disable=not opts.progress,
               dynamic_ncols=True, mininterval=0.5)
    last_change, last_done = time.monotonic(), -1
    try:
        while True:
            async with r.pipeline(transaction=False) as pipe:
                pipe.xlen(k.routed)
                pipe.xlen(k.dead)
                routed, dead = await pipe.execute()
            sample = {"ms": int(time.time() * 1000), "routed": routed, "dead": dead, "published": rep.published}
            backlog = {}
            for stream, group in streams:
                try:
                    g = next((x for x in await r.xinfo_groups(stream)
                              if (x["name"].decode() if isinstance(x["name"], bytes) else x["name"]) == group), None)
                except Exception:
                    g = None
                # entries not yet read by the group + read but not acked = work waiting for that stage (all lanes)
                backlog[group] = backlog.get(group, 0) + (((g.get("lag") or 0) + g["pending"]) if g else 0)
            sample["stages"] = backlog
            sample["backlog"] = sum(backlog.values())
            samples.append(sample)
            done = routed + dead
            bar.update(min(done, total) - bar.n)
            bar.set_postfix(sent=rep.published, backlog=sample["backlog"], refresh=False)
            if done != last_done:
                last_change, last_done = time.monotonic(), done
            if rep.done and done >= total:
                return
            if time.monotonic() - last_change > opts.stall_timeout_s and rep.done:
                print(f"\nno progress for {opts.stall_timeout_s:.0f}s: stopping with {total - done} tickets "
                      "unaccounted for", file=sys.stderr)
                return
            await asyncio.sleep(0.5)
    finally:
        bar.close()


async def _xrange_all(r, stream: str, fields: tuple[bytes, ...] | None) -> list[dict]:
    out, start = [], "-"
    while True:
        rows = await r.xrange(stream, min=start, count=5000)
        if not rows:
            return out
        out += [v if fields is None else {f: v.get(f) for f in fields} for _, v in rows]
        start = "(" + rows[-1][0].decode()


async def collect(r, k, ids: list[str]) -> dict:
    routed = await _xrange_all(r, k.routed, (b"ticket_id", b"status"))
    dead = await _xrange_all(r, k.dead, (b"ticket_id", b"reason"))
    events = await _xrange_all(r, k.events, None)  # capped at ~100k entries: early ones of a huge run may be gone
    records = {}
    for i in range(0, len(ids), 1000):
        async with r.pipeline(transaction=False) as pipe:
            for tid in ids[i:i + 1000]:
                pipe.hmget(k.ticket(tid), *REC_FIELDS)
            for tid, vals in zip(ids[i:i + 1000], await pipe.execute()):
                records[tid] = {f: (v.decode() if v is not None else None) for f, v in zip(REC_FIELDS, vals)}
    return {
        "routed": [x[b"ticket_id"].decode() for x in routed],
        "routed_status": Counter(x[b"status"].decode() for x in routed),
        "dead": [x[b"ticket_id"].decode() for x in dead if x[b"ticket_id"]],
        "records": records,
        "incidents": {g.decode() for g in await r.zrange(k.incidents, 0, -1)},
        # when each incident opened (ms): time-to-detect per storm
        "opened_at": {g.decode(): int(s) for g, s in await r.zrange(k.incidents, 0, -1, withscores=True)},
        "stats": {a.decode(): b.decode() for a, b in (await r.hgetall(k.stats)).items()},
        "alerts_len": await r.xlen(k.alerts),
        "breaker": [{kk.decode(): vv.decode(errors="replace") for kk, vv in e.items()} for e in events
                    if e.get(b"type") == b"breaker.state"],
    }


async def _delete_keys(r, prefix: str) -> None:
    batch = []
    async for key in r.scan_iter(match="{" + prefix + "}*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            await r.delete(*batch)
            batch = []
    if batch:
        await r.delete(*batch)


# ---------------------------------------------------------------- one run

def build_report(scenario, planned: list, got: dict, samples: list[dict], opts: Options, settings,
                 unseen: set[str] | None, unseen_note: str, http_errors: list[str] = ()) -> dict:
    truth = {p.ticket["id"]: p.truth for p in planned}
    ids = set(truth)
    routed_set, dead_set = set(got["routed"]), set(got["dead"])
    recs, groups, preds, decided = [], {}, {}, Counter()
    escalated = degraded = abstained = 0
    urgent_lat: list[int] = []
    urgent_set: set[str] = set()
    single_lat: list[int] = []  # urgent by the score and not a member of an incident when grouped
    single_rows: list[dict] = []  # the same tickets' rows: where they waited, stage by stage
    lane_lat: list[int] = []  # came to the route stage on the urgent lane
    door_lat: list[int] = []  # came in on the urgent ingest lane (the text read urgent) and not an incident member
    bg_lat: list[int] = []  # urgent by the score and, by the scenario's truth, in no storm
    bg_rows: list[dict] = []
    lanes = {"enrich_urgent": 0, "enrich_demoted": 0, "route_urgent": 0}
    breaker_fields = Counter()
    late_at: list[int] = []  # when each escalation answered later than the budget became late (epoch ms)
    for tid, h in got["records"].items():
        if h["group"]:
            groups[tid] = h["group"]
        preds[tid] = h["category"]
        enrich = json.loads(h["enrich"]) if h["enrich"] else {}
        if enrich:
            decided[enrich.get("decided_by")] = decided.get(enrich.get("decided_by"), 0) + 1
            # escalated = sent to the slower fallback model, whatever then decided it; abstain is not escalation
            escalated += bool(enrich.get("escalated_at")) or enrich.get("decided_by") == "transformer"
            degraded += bool(enrich.get("degraded"))
            esc_at = enrich.get("escalated_at")
            if esc_at and h["t_enrich"] and int(h["t_enrich"]) - int(esc_at) > settings.breaker_budget_ms:
                late_at.append(int(esc_at) + int(settings.breaker_budget_ms))
            abstained += bool(enrich.get("abstain")) or enrich.get("decided_by") == "abstain"
        if h["breaker"]:
            breaker_fields[h["breaker"]] += 1
        if tid in routed_set and h["t_route"] and h["received_at"]:
            row = {"id": tid, "received_at": int(h["received_at"]), "t_route": int(h["t_route"])}
            row["latency"] = row["t_route"] - row["received_at"]
            row["total"] = row["latency"]
            if h["t_enrich_start"]:
                row["queue_wait"] = int(h["t_enrich_start"]) - row["received_at"]
                if h["t_enrich"]:
                    row["enrich"] = int(h["t_enrich"]) - int(h["t_enrich_start"])
            if h["t_dedup"] and h["t_enrich"]:
                row["dedup"] = int(h["t_dedup"]) - int(h["t_enrich"])
            if h["t_dedup"]:
                row["route"] = row["t_route"] - int(h["t_dedup"])
            recs.append(row)
            dedup = json.loads(h["dedup"]) if h["dedup"] else {}
            if enrich.get("urgent"):
                urgent_lat.append(row["latency"])
                urgent_set.add(tid)
                if h["incident"] != "1":
                    single_lat.append(row["latency"])
                    single_rows.append(row)
                if tid in truth and not truth[tid]["storm"]:
                    bg_lat.append(row["latency"])
                    bg_rows.append(row)
            if dedup.get("lane") == "urgent":
                lane_lat.append(row["latency"])
            if enrich.get("ingest_lane") == "urgent" and h["incident"] != "1":
                door_lat.append(row["latency"])
            lanes["enrich_urgent"] += enrich.get("lane") == "urgent"
            lanes["enrich_demoted"] += bool(enrich.get("lane_reason"))
            lanes["route_urgent"] += dedup.get("lane") == "urgent"
    lat = [x["latency"] for x in recs]
    t0 = min((x["received_at"] for x in recs), default=0)
    t_end = max((x["t_route"] for x in recs), default=0)
    t_last_in = max((x["received_at"] for x in recs), default=0)
    n_routed = len(routed_set & ids)
    per_storm = fr.storm_groups(groups, {t: x["storm"] for t, x in truth.items()}, got["incidents"])
    for s in scenario.storms:
        if s.id in per_storm:
            per_storm[s.id]["intent"] = s.intent
    # time-to-detect: from the K-th storm ticket reaching ingest to the opening of the incident holding most of
    # the storm (an incident folded into it by a merge keeps its opening time)
    for sid, info in per_storm.items():
        tids = [t for t, x in truth.items() if x["storm"] == sid]
        main = Counter(groups[t] for t in tids if t in groups).most_common(1)
        arrived = sorted(int(got["records"][t]["received_at"]) for t in tids if got["records"][t]["received_at"])
        opened = got["opened_at"].get(main[0][0]) if main else None
        kth = arrived[settings.incident_k - 1] if len(arrived) >= settings.incident_k else None
        info["detect_s"] = round((opened - kth) / 1000, 2) if opened is not None and kth is not None else None
        info["main_share"] = round(main[0][1] / len(tids), 4) if main else 0.0
        info["main_group"] = main[0][0] if main else None
    windows = {}
    for sid in per_storm:
        rs = [x["received_at"] for x in recs if truth[x["id"]]["storm"] == sid]
        if rs:
            windows[sid] = [round((min(rs) - t0) / 1000, 2), round((max(rs) - t0) / 1000, 2)]
    for s in samples:
        s["t"] = round((s["ms"] - t0) / 1000, 2) if t0 else 0
    for b in got["breaker"]:  # seconds since the first ticket, on the same clock as storm_windows
        if b.get("at") and t0:
            b["t"] = round((int(b["at"]) - t0) / 1000, 2)
    # tickets that arrived while a storm was arriving (any kind): the latency that matters under load
    in_storm = [x for x in recs if any(w[0] <= (x["received_at"] - t0) / 1000 <= w[1] for w in windows.values())]
    storm_lat = [x["latency"] for x in in_storm]
    storm_urgent_lat = [x["latency"] for x in in_storm if x["id"] in urgent_set]
    truth_cat = {t: x["category"] for t, x in truth.items()}
    acc_all = fr.accuracy(preds, truth_cat)
    unseen_ids = {t for t, x in truth.items() if unseen and x["row"] in unseen}
    acc_unseen = fr.accuracy(preds, truth_cat, only=unseen_ids) if unseen is not None else {"accuracy": None, "n": 0}
    acc_unseen["note"] = unseen_note
    grouping = fr.pair_scores(groups, {t: x["storm"] for t, x in truth.items()})
    grouping["per_storm"] = per_storm
    grouping["incidents_per_storm"] = {k: v["incidents"] for k, v in per_storm.items()}
    grouping["tau"], grouping["k"] = settings.dedup_tau, settings.incident_k
    grouping.update(fr.background_in_storms(groups, truth, per_storm, got["incidents"]))
    span = (t_end - t0) / 1000 if recs else 0
    return {
        "scenario": scenario.name, "door": opts.door, "fast": opts.fast,
        "mode": ("stages in the bench process" if opts.workers == 0 else
                 f"{opts.workers} worker processes, stages split {' | '.join(opts.split)}" if opts.split else
                 f"{opts.workers} worker process(es)"),
        "split": opts.split,
        "workers": opts.workers,
        "tickets": len(planned), "routed": n_routed, "dead_letters": len(dead_set & ids),
        "lost": len(ids - routed_set - dead_set), "duplicates": fr.duplicates(got["routed"], ids),
        "http_errors": len(http_errors),
        "tickets_per_s": round(n_routed / span, 1) if span > 0 else None,
        "peak_tickets_per_s": fr.peak_rate(recs),
        "offered_per_s": round(len(recs) / ((t_last_in - t0) / 1000), 1) if t_last_in > t0 else None,
        "latency_ms": {
            "p50": fr.pct(lat, 50), "p95": fr.pct(lat, 95), "p99": fr.pct(lat, 99), "max": max(lat, default=None),
            "urgent_p50": fr.pct(urgent_lat, 50), "urgent_p95": fr.pct(urgent_lat, 95),
            "urgent_p99": fr.pct(urgent_lat, 99), "urgent_n": len(urgent_lat),
            "during_storms_p99": fr.pct(storm_lat, 99), "urgent_during_storms_p99": fr.pct(storm_urgent_lat, 99),
            "urgent_during_storms_n": len(storm_urgent_lat),
            "urgent_single_p50": fr.pct(single_lat, 50), "urgent_single_p99": fr.pct(single_lat, 99),
            "urgent_single_n": len(single_lat),
            "urgent_lane_p50": fr.pct(lane_lat, 50), "urgent_lane_p99": fr.pct(lane_lat, 99),
            "urgent_lane_n": len(lane_lat),
            "urgent_door_p50": fr.pct(door_lat, 50), "urgent_door_p99": fr.pct(door_lat, 99),
            "urgent_door_n": len(door_lat),
            "urgent_background_p50": fr.pct(bg_lat, 50), "urgent_background_p99": fr.pct(bg_lat, 99),
            "urgent_background_n": len(bg_lat),
        },
        "lanes": lanes,
        "stages_ms": fr.stage_summary(recs),
        "stages_ms_urgent_single": fr.stage_summary(single_rows),
        "stages_ms_urgent_background": fr.stage_summary(bg_rows),
        "lag": {"max_backlog": {g: max((s["stages"].get(g, 0) for s in samples), default=0)
                                for g in (samples[0]["stages"] if samples else {})},
                "samples": [{k2: s[k2] for k2 in ("t", "stages", "backlog", "routed", "published")}
                            for s in samples]},
        "accuracy": acc_all["accuracy"],
        "accuracy_detail": {"all": acc_all, "unseen": acc_unseen,
                            "note": "texts come from the model's training file; 'unseen' = its holdout rows"},
        "grouping": grouping,
        "alerts_sent": int(got["stats"].get("alerts_queued", 0)),
        "alerts_suppressed": int(got["stats"].get("alerts_suppressed", 0)),
        "alerts_stream_len": got["alerts_len"],
        "routing": dict(got["routed_status"]),
        "escalation_rate": round(escalated / max(1, len(got["records"])), 4),
        "abstain_rate": round(abstained / max(1, len(got["records"])), 4),
        "decided_by": {str(k2): v for k2, v in decided.items()}, "degraded": degraded,
        "breaker_transitions": got["breaker"], "breaker_field": dict(breaker_fields),
        "breaker": fr.breaker_summary(got["breaker"], windows, recs, t0, t_end, late_at),
        "storm_windows": windows,
        "timeline": fr.timeline(recs, t0, samples) if recs else [],
        "config": {"batch_size": settings.batch_size, "tau": settings.dedup_tau, "incident_k": settings.incident_k,
                   "dedup_window_s": settings.dedup_window_s, "seed": scenario.seed, "cpus": os.cpu_count(),
                   "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
    }


async def run_flood(scenario, planned: list, settings, opts: Options, embedder=None) -> dict:
    """Publish `planned` into a fresh pipeline, wait until all are routed or dead, score against the truth,
    then measure the naive baseline on the same tickets. Returns the report dict."""
    import redis.asyncio as aioredis

    from routing_engine.infra.keys import Keys
    from routing_engine.models.classifier import Classifier, latest_model

    k = Keys(settings.prefix)
    model_path = latest_model(settings.models_path)
    anchors: dict = {}
    if opts.ceiling or opts.baseline:
        if embedder is None:
            from routing_engine.models.embedder import pipeline_embedder

            embedder = pipeline_embedder(settings.embedder, settings.models_path,
                                         min_cosine=settings.embedder_min_cosine, threads=settings.embed_threads)
    if opts.ceiling:
        step = max(1, len(planned) // opts.ceiling_max)
        texts = [ticket_text(p.ticket) for p in planned[::step]][: opts.ceiling_max]
        anchors["ceiling"] = measure_ceiling(embedder, texts)
    r = aioredis.from_url(settings.redis_url)
    samples: list[dict] = []
    try:
        async with Engine(settings, r, opts) as eng:
            rep = Replayer(r, k, settings, opts, eng.url)
            cpu0 = await eng.cpu_seconds()
            t_wall = time.perf_counter()
            await asyncio.gather(rep.run(planned),
                                 watch(r, k, rep, len(planned), opts, samples, stage_streams(settings)))
            wall = time.perf_counter() - t_wall
            cpu1 = await eng.cpu_seconds()
            metrics = await eng.metrics_texts()
            got = await collect(r, k, [p.ticket["id"] for p in planned])
            agents = eng.agents
    finally:
        if not opts.keep_keys:
            await _delete_keys(r, settings.prefix)
        await r.aclose()
    unseen, note = unseen_rows(model_path) if model_path else (None, "no model")
    report = build_report(scenario, planned, got, samples, opts, settings, unseen, note, rep.http_errors)
    report["wall_s"] = round(wall, 2)
    report["cpu"] = fr.cpu_summary(cpu0, cpu1, wall, len(planned), os.cpu_count() or 1)
    report["lanes"]["door_urgent"] = sum(v == k.ingest_urgent for v in rep._lanes.values()) if rep._lanes else None
    report["steps"] = fr.step_summary(metrics)
    report["agents"] = agents
    report["model"] = model_path.name if model_path else None
    report["http_error_samples"] = rep.http_errors[:5]
    if opts.baseline:
        clf = Classifier.load(model_path)
        sub = planned[: opts.baseline_max]
        anchors["baseline"] = naive_baseline(sub, embedder, clf, settings.dedup_tau, settings.dedup_window_s,
                                             settings.urgent_threshold, opts.baseline_budget_s)
    report["ceiling_texts_per_s"] = anchors.get("ceiling", {}).get("texts_per_s")
    report["embedder"] = getattr(embedder, "name", None)
    report["ceiling"] = anchors.get("ceiling")
    report["baseline"] = anchors.get("baseline")
    report["baseline_tickets_per_s"] = anchors.get("baseline", {}).get("tickets_per_s")
    tps = report["tickets_per_s"]
    report["ratios"] = {
        "engine_vs_ceiling": round(tps / report["ceiling_texts_per_s"], 3)
                             if tps and report["ceiling_texts_per_s"] else None,
        "engine_vs_baseline": round(tps / report["baseline_tickets_per_s"], 3)
                              if tps and report["baseline_tickets_per_s"] else None,
    }
    return report


# ---------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="single-storm",
                   help="calm, single-storm, two-storms, overload, or a YAML/JSON path")
    p.add_argument("--door", choices=("stream", "http"), default="stream",
                   help="stream: pipelined XADD to the ingest stream; http: the API's webhook door")
    p.add_argument("--workers", type=int, default=1, help="worker processes (0 = stages in the bench process)")
    p.add_argument("--split", action="append", default=[], metavar="STAGES",
                   help="a worker process running only these stages (comma list); repeat for each process, e.g. "
                        "--split enrich --split enrich,fallback,dedup,route (every stage in at least one); "
                        "overrides --workers")
    p.add_argument("--tickets", "--n", type=int, dest="tickets",
                   help="exactly N tickets: the scenario is stretched or cut in time to hold N")
    p.add_argument("--fast", action="store_true",
                   help="send as fast as possible instead of at the scenario's timing (a backlog replay: each "
                        "ticket's created_at is its planned time, ending now)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="multiply every rate by this (e.g. calm --speed 20 = 1,000/s)")
    p.add_argument("--capacity", type=float,
                   help="tickets/s that rates like '10x' refer to (default: the measured ceiling)")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    p.add_argument("--batch-size", type=int, help="ROUTING_BATCH_SIZE for the workers")
    p.add_argument("--http-batch", type=int, default=50,
                   help="tickets per POST /v1/tickets/batch (1 = POST /v1/tickets)")
    p.add_argument("--http-concurrency", type=int, default=16)
    p.add_argument("--agents", help="agents YAML (default: the shipped config/agents.yaml)")
    p.add_argument("--json", help="write the report here (default bench/out/flood-<scenario>.json)")
    p.add_argument("--plot", help="write the PNG here (default bench/out/flood-<scenario>.png)")
    p.add_argument("--no-baseline", action="store_true", help="skip the naive one-at-a-time baseline")
    p.add_argument("--baseline-max", type=int, default=2000, help="run the baseline on the first N tickets at most")
    p.add_argument("--baseline-budget", type=float, default=20.0, help="...and for this many seconds at most")
    p.add_argument("--no-ceiling", action="store_true", help="skip the raw embedding rate")
    p.add_argument("--stall-timeout", type=float, default=60.0, help="give up after this long without progress")
    p.add_argument("--keep-keys", action="store_true", help="leave the run's Redis keys in place")
    p.add_argument("--no-progress", action="store_true")
    return p


def plan(args, scenario, rows, embedder) -> tuple[list, float | None]:
    capacity = args.capacity
    if scenario.relative and capacity is None:
        texts = [t for t, _ in rows[:: max(1, len(rows) // 512)]][:512]
        capacity = measure_ceiling(embedder, texts)["texts_per_s"]
        print(f"capacity for relative rates: {capacity:.0f} tickets/s (embedding ceiling)", file=sys.stderr)
    if args.tickets:
        planned, stretched = sc_mod.stretched(scenario, rows, args.tickets, capacity, args.speed)
        for s, used in zip(scenario.storms, stretched.storms):
            s.intent = used.intent
        return planned, capacity
    return sc_mod.generate(scenario, rows, capacity, args.speed), capacity


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.split:
        given = [st for part in args.split for st in part.split(",")]
        if set(given) != set(stage_names()):  # a stage in two processes is two consumers of its group
            raise SystemExit(f"--split must name every stage: {', '.join(stage_names())} (got {', '.join(given)})")
    os.environ.setdefault("ROUTING_LOG_LEVEL", "warning")
    from routing_engine.config import Settings
    from routing_engine.logs import setup_logging
    from routing_engine.service import ensure_model

    setup_logging("console", "warning")
    prefix = "flood-" + uuid.uuid4().hex[:8]
    settings = Settings.from_env(redis_url=args.redis_url, prefix=prefix, batch_size=args.batch_size)
    scenario = sc_mod.load_scenario(args.scenario)
    if args.seed is not None:
        scenario.seed = args.seed
    rows = sc_mod.load_rows(scenario.data)
    ensure_model(settings)  # trains the default model on first use (and says so)
    from routing_engine.models.embedder import pipeline_embedder

    # the ceiling and the baseline use the embedder the workers use (ROUTING_EMBEDDER)
    embedder = pipeline_embedder(settings.embedder, settings.models_path, min_cosine=settings.embedder_min_cosine,
                                 threads=settings.embed_threads)  # as the workers: the ceiling is theirs
    planned, capacity = plan(args, scenario, rows, embedder)
    opts = Options(door=args.door, workers=len(args.split) or args.workers, split=args.split, fast=args.fast,
                   http_batch=args.http_batch,
                   http_concurrency=args.http_concurrency, baseline=not args.no_baseline,
                   baseline_max=args.baseline_max, baseline_budget_s=args.baseline_budget, ceiling=not args.no_ceiling,
                   stall_timeout_s=args.stall_timeout, progress=not args.no_progress, agents_file=args.agents,
                   keep_keys=args.keep_keys)
    out = opts.out_dir
    out.mkdir(parents=True, exist_ok=True)
    sc_mod.write_files(planned, out / f"flood-{scenario.name}-tickets.jsonl",
                       out / f"flood-{scenario.name}-truth.jsonl")
    storms = ", ".join(f"{s.id}={s.intent}" for s in scenario.storms) or "none"
    print(f"scenario {scenario.name}: {len(planned):,} tickets over {planned[-1].at_s:.1f}s (storms: {storms}); "
          f"door {opts.door}, {opts.workers} worker(s), prefix {prefix} on {settings.redis_url}", file=sys.stderr)
    report = asyncio.run(run_flood(scenario, planned, settings, opts, embedder))
    report["capacity_for_relative_rates"] = capacity
    report["speed"] = args.speed
    print(fr.table(report))
    jpath = Path(args.json) if args.json else out / f"flood-{scenario.name}.json"
    ppath = Path(args.plot) if args.plot else out / f"flood-{scenario.name}.png"
    jpath.parent.mkdir(parents=True, exist_ok=True)
    jpath.write_text(json.dumps(report, indent=1, default=str))
    try:
        fr.plot(report, ppath)
        print(f"report: {jpath}  plot: {ppath}", file=sys.stderr)
    except ImportError:
        print(f"report: {jpath}  (no plot: pip install matplotlib)", file=sys.stderr)
    return 0 if report["lost"] == 0 and report["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
