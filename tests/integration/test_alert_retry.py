"""Alerts are retried for minutes without holding others up: each try is one delivery, a failed one parks the
alert in the delay zset (backoff or Retry-After) and the due-mover brings it back with its alert_id; a 4xx
rejection and a spent retry window dead-letter it, and `replay-alerts` (the real CLI) re-queues it once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import replace

import orjson
import pytest
from aiohttp import web

from routing_engine.config import Settings
from routing_engine.infra.keys import Keys
from routing_engine.infra.runtime import run_stages
from routing_engine.stages.alerts import AlertStage, retry_after_s

from fixtures import cli_env, free_port, wait_for


class Receiver:
    """A webhook on 127.0.0.1: per alert group, a script of answers (status, headers) then 200 for good."""

    def __init__(self):
        self.script: dict[str, list[tuple[int, dict]]] = {}
        self.always: dict[str, int] = {}  # group -> status answered every time (until removed)
        self.got: list[tuple[float, dict, int]] = []  # (monotonic time, payload, status answered)

    async def hook(self, request: web.Request) -> web.Response:
        payload = await request.json()
        group = payload["group"]
        status, headers = 200, {}
        if group in self.always:
            status = self.always[group]
        elif self.script.get(group):
            status, headers = self.script[group].pop(0)
        self.got.append((time.monotonic(), payload, status))
        return web.Response(status=status, headers=headers)

    def tries(self, group: str) -> list[tuple[float, dict, int]]:
        return [g for g in self.got if g[1]["group"] == group]

    def delivered(self, group: str) -> list[dict]:
        return [p for _, p, status in self.tries(group) if status < 300]


@pytest.fixture
async def receiver():
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/alert", rec.hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    rec.url = f"http://127.0.0.1:{port}/alert"
    yield rec
    await runner.cleanup()


@pytest.fixture
def alert_settings(redis_url, prefix, receiver, tmp_path):
    # no model: the alerts stage needs none; small backoffs so a test takes seconds
    return Settings(redis_url=redis_url, prefix=prefix, state_dir=str(tmp_path), block_ms=100, claim_idle_ms=1500,
                    claim_every_ms=500, alert_url=receiver.url, alert_timeout_s=2.0, alert_backoff_s=0.2,
                    alert_backoff_max_s=0.5, alert_retry_for_s=60.0)


class Running:
    """The alerts stage driven by run_stages, as a worker runs it."""

    def __init__(self, s: Settings, r):
        self.s, self.r, self.k = s, r, Keys(s.prefix)

    async def __aenter__(self):
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(run_stages(self.r, [AlertStage(self.s, self.k)], "w1", self.stop))
        return self

    async def __aexit__(self, *exc):
        self.stop.set()
        await asyncio.wait_for(self.task, 10)

    async def raise_alert(self, group: str) -> str:
        data = {"ticket_id": f"t-{group}", "category": "card", "team": "cards", "urgency": 0.9, "group": group}
        eid = await self.r.xadd(self.k.alerts, {"type": "ticket.urgent", "group": group, "size": "1",
                                                "data": orjson.dumps(data)})
        return eid.decode()

    async def dead(self) -> list[dict]:
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in await self.r.xrange(self.k.dead)]


async def test_flaky_receiver_gets_the_alert_once_after_backoff_without_holding_up_another(alert_settings, r,
                                                                                           receiver):
    receiver.script["flaky"] = [(503, {})] * 3
    async with Running(alert_settings, r) as run:
        flaky_id = await run.raise_alert("flaky")
        await wait_for(lambda: _true(len(receiver.tries("flaky")) >= 1), 10)
        calm_id = await run.raise_alert("calm")
        await wait_for(lambda: _true(receiver.delivered("flaky")), 15)
        await asyncio.sleep(0.5)  # nothing more comes
        assert await r.zcard(run.k.alerts_delayed) == 0
    tries = receiver.tries("flaky")
    assert [status for *_, status in tries] == [503, 503, 503, 200]
    assert {p["alert_id"] for _, p, _ in tries} == {flaky_id}  # the first id on every try: receivers dedupe on it
    gaps = [b[0] - a[0] for a, b in zip(tries, tries[1:])]
    assert gaps[0] >= 0.2 - 0.02 and gaps[1] >= 0.4 - 0.02 and gaps[2] >= 0.5 - 0.02, gaps  # 0.2, 0.4, capped 0.5
    calm = receiver.tries("calm")
    assert [p["alert_id"] for _, p, _ in calm] == [calm_id]
    assert calm[0][0] < tries[-1][0]  # delivered while the flaky one waited, not after it
    assert await run.dead() == []


async def test_429_retry_after_is_honoured(alert_settings, r, receiver):
    receiver.script["slow"] = [(429, {"Retry-After": "1"})]
    s = replace(alert_settings, alert_backoff_s=0.05)  # the header, not the backoff, sets the wait
    async with Running(s, r) as run:
        await run.raise_alert("slow")
        await wait_for(lambda: _true(receiver.delivered("slow")), 10)
    first, second = receiver.tries("slow")
    assert first[2] == 429 and second[2] == 200
    assert second[0] - first[0] >= 1.0, second[0] - first[0]


def test_retry_after_reads_seconds_and_http_dates():
    from email.utils import formatdate

    assert retry_after_s("7") == 7.0
    assert 25 <= retry_after_s(formatdate(time.time() + 30, usegmt=True)) <= 31
    assert retry_after_s("soon") is None and retry_after_s(None) is None


async def test_400_is_dead_lettered_at_once_with_the_reason(alert_settings, r, receiver):
    receiver.always["bad"] = 400
    async with Running(alert_settings, r) as run:
        eid = await run.raise_alert("bad")
        dead = await wait_for(run.dead, 5)
        await asyncio.sleep(0.8)  # longer than two backoffs: a retry would have come by now
        assert await r.zcard(run.k.alerts_delayed) == 0
    assert len(receiver.tries("bad")) == 1
    assert dead[0]["stage"] == "alerts" and dead[0]["entry_id"] == eid
    assert "HTTP 400" in dead[0]["reason"] and "rejected" in dead[0]["reason"]


async def test_spent_window_dead_letters_and_replay_alerts_requeues_it_once(alert_settings, r, receiver):
    receiver.always["down"] = 503
    s = replace(alert_settings, alert_retry_for_s=1.5)
    async with Running(s, r) as run:
        eid = await run.raise_alert("down")
        dead = await wait_for(run.dead, 10)
        assert "ROUTING_ALERT_RETRY_FOR_S" in dead[0]["reason"] and "HTTP 503" in dead[0]["reason"], dead
        assert len(receiver.tries("down")) >= 3  # retried meanwhile, every try with the first id
        assert {p["alert_id"] for _, p, _ in receiver.tries("down")} == {eid}
        del receiver.always["down"]  # the receiver is healthy again
        xlen = await r.xlen(run.k.alerts)

        listed = await _cli(s, "--dry-run")
        assert "would replay" in listed and eid in listed
        assert await r.xlen(run.k.alerts) == xlen  # a dry run writes nothing

        out = await _cli(s)
        assert "1 alert(s) replayed" in out, out
        await wait_for(lambda: _true(receiver.delivered("down")), 10)
        assert [p["alert_id"] for p in receiver.delivered("down")] == [eid]

        again = await _cli(s)
        assert "0 alert(s) replayed, 1 replayed before" in again, again
        await asyncio.sleep(0.8)
        assert await r.xlen(run.k.alerts) == xlen + 1
    assert len(receiver.delivered("down")) == 1


async def _cli(s: Settings, *args: str) -> str:
    """`routing-engine replay-alerts` as a real process (in a thread: the stage keeps running on this loop)."""
    env = cli_env(replace(s, models_dir=""))
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "routing_engine.cli", "replay-alerts",
                                                    *args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _true(value) -> bool:
    return bool(value)
