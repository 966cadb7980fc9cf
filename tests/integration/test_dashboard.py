"""The live monitor in a real headless Chromium against the API on a real port and every stage in-process."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from fixtures import free_port, wait_for

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")

STORM = [f"Card payment declined at every shop, app shows error 503{' !' * (i % 3)} (try {i % 4})" for i in range(12)]


class Live:
    """The API on a real port, restartable (a new app and hub each time); the stages keep running throughout."""

    def __init__(self, settings, r):
        self.s, self.r = settings, r
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runner = None

    async def start_api(self):
        from routing_engine.web.app import make_app

        self.app = make_app(self.s, self.r)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop_api(self):
        await self.runner.cleanup()
        self.runner = None

    async def __aenter__(self):
        from routing_engine import service
        from routing_engine.infra.agents import load_agents_file
        from routing_engine.infra.keys import Keys

        self.k = Keys(self.s.prefix)
        await load_agents_file(self.r, self.k)
        await self.start_api()
        self._stages = service.running(self.s, self.r, stages=["enrich", "dedup", "route"], consumer="test-worker")
        await self._stages.__aenter__()
        headers = {"Authorization": f"Bearer {self.s.api_token}"} if self.s.api_token else {}
        self.http = aiohttp.ClientSession(self.url, headers=headers)
        return self

    async def __aexit__(self, *exc):
        await asyncio.wait_for(self._stages.__aexit__(*exc), 30)
        await self.http.close()
        if self.runner:
            await self.stop_api()

    async def post(self, subject: str, body: str = "", **extra) -> str:
        async with self.http.post("/v1/tickets", json={"subject": subject, "body": body or subject, **extra}) as resp:
            assert resp.status == 202, await resp.text()
            return (await resp.json())["ticket_id"]

    async def post_batch(self, texts: list[str]) -> list[str]:
        async with self.http.post("/v1/tickets/batch", json=[{"subject": t, "body": t} for t in texts]) as resp:
            assert resp.status == 202, await resp.text()
            return [x["ticket_id"] for x in (await resp.json())["results"]]


@pytest.fixture
async def live(settings, r):
    async with Live(replace(settings, incident_k=5, sse_heartbeat_s=2), r) as lv:
        yield lv


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


async def open_page(browser, url, **ctx):
    page = await (await browser.new_context(**ctx)).new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(url)
    await page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
    return page, errors


async def row_status(page, tid):
    return await page.evaluate(
        "id => document.querySelector(`tr[data-id='${id}'] td:nth-child(3)`)?.textContent", tid)


async def test_dashboard_shows_tickets_incidents_and_breaker(live, browser, r):
    """Loads without console errors; a posted ticket appears within 2 s and opens its trail; a storm shows up as
    an incident that can be resolved from the page; the breaker card follows `breaker.state` events. The breaker
    itself is built elsewhere, so this test simulates it opening by XADDing its event to the events stream."""
    page, errors = await open_page(browser, live.url + "/")

    t0 = time.monotonic()
    tid = await live.post("Card never arrived", "I ordered my card two weeks ago and it still has not arrived")
    await page.wait_for_selector(f'tr[data-id="{tid}"]', timeout=2000)
    assert time.monotonic() - t0 < 2
    await wait_for(lambda: _is(row_status(page, tid), "assigned"), timeout=20)
    row = await page.inner_text(f'tr[data-id="{tid}"]')
    assert "card_arrival" in row and "ana" in row and "lightgbm" in row
    await page.click(f'tr[data-id="{tid}"]')
    await page.wait_for_selector("#trail:not([hidden])", timeout=5000)
    trail = await page.inner_text("#trail-body")
    assert "max skill x spare capacity" in trail and "confidence" in trail
    await page.click("#trail-close")

    await live.post_batch(STORM)
    item = await page.wait_for_selector("#inc-list li", timeout=20_000)
    gid = await item.get_attribute("data-gid")
    await page.wait_for_function("() => document.querySelector('#inc-list li .sample')"
                                 ".textContent.includes('error 503')",
                                 timeout=5000)  # sample text comes from GET /v1/incidents
    # the storm's end and its return, as the dedup stage's tick and group.lua say them (tested there)
    badge = f'#inc-list li[data-gid="{gid}"] .badge.calm'
    assert await page.query_selector(badge) is None
    await r.xadd(live.k.events, {"type": "incident.storm_ended", "group": gid, "size": "12", "peak_rate": "40"})
    await page.wait_for_selector(badge, timeout=3000)
    assert await page.inner_text(badge) == "storm over"
    await r.xadd(live.k.events, {"type": "incident.storm_resumed", "group": gid, "size": "14", "rate": "30"})
    await page.wait_for_selector(badge, state="detached", timeout=3000)
    await page.click(f'button[data-resolve="{gid}"]')
    await page.wait_for_selector(f'#inc-list li[data-gid="{gid}"]', state="detached", timeout=5000)
    async with live.http.get(f"/v1/incidents/{gid}") as resp:
        assert (await resp.json())["status"] == "resolved"

    assert await page.get_attribute("#brk-state", "data-state") != "open"
    await r.xadd(live.k.events, {"type": "breaker.state", "state": "open", "reason": "p95 latency over budget",
                                 "latency_ms": "412", "budget_ms": "150"})
    await page.wait_for_selector('#brk-state[data-state="open"]', timeout=2000)
    card = await page.inner_text("#breaker")
    assert "OPEN" in card and "412 ms" in card
    # The escalation rate comes from the ticket events the server tails: nothing escalated yet, then some.
    await page.wait_for_function("() => /escalation 0\\.0%/.test(document.querySelector('#brk-nums').textContent)",
                                 timeout=3000)
    for i in range(5):
        await r.xadd(live.k.events, {"type": "ticket.escalated", "ticket_id": f"esc-{i}"})
    await page.wait_for_function(
        "() => /escalation ([1-9]\\d*|0\\.[1-9])/.test(document.querySelector('#brk-nums').textContent)", timeout=3000)

    # 500 events/s for 2 s (synthetic ticket events): frames keep coming, the table stays capped
    await page.evaluate("""() => { window.maxGap = 0; let last = performance.now();
        const f = (t) => { window.maxGap = Math.max(window.maxGap, t - last); last = t; requestAnimationFrame(f); };
        requestAnimationFrame(f); }""")
    for n in range(20):
        async with r.pipeline(transaction=False) as pipe:
            for i in range(25):
                tid = f"load-{n}-{i}"
                pipe.xadd(live.k.events, {"type": "ticket.received", "ticket_id": tid})
                pipe.xadd(live.k.events, {"type": "ticket.classified", "ticket_id": tid, "data":
                          '{"category":"card_arrival","confidence":0.9,"urgency":0.2,"decided_by":"lightgbm"}'})
            await pipe.execute()
        await asyncio.sleep(0.1)
    await page.wait_for_selector('tr[data-id="load-19-24"]', timeout=2000)
    assert await page.evaluate("document.querySelectorAll('#rows tr').length") == 150
    gap = await page.evaluate("window.maxGap")
    print(f"\nlongest frame gap at 500 events/s: {gap:.0f} ms")
    assert gap < 400  # generous: this machine runs the pipeline and other tests on 2 cores
    assert errors == []


async def _is(coro, want):
    return (await coro) == want


async def test_page_resumes_after_server_restart_without_gaps_or_duplicates(live, browser, r):
    """Stop the API (connections drop), let the pipeline keep working, start a new API process-equivalent on the
    same port: the browser reconnects with Last-Event-ID and receives exactly the stream's events, once each."""
    from routing_engine.web.tickets import _accept

    page, _ = await open_page(browser, live.url + "/")
    a = await live.post("My card payment was declined at the supermarket")
    await page.wait_for_selector(f'tr[data-id="{a}"]', timeout=5000)

    await live.stop_api()
    await page.wait_for_function("document.querySelector('#conn').dataset.state !== 'live'", timeout=5000)
    down = []
    for text in ("I want to close my account", "The ATM swallowed my card"):
        ticket, _, _ = await _accept(live.app, {"subject": text, "body": text})
        down.append(ticket.ticket_id)
    await wait_for(lambda: _all_routed(r, live.k, down), timeout=20)

    await live.start_api()
    for tid in down:
        await page.wait_for_selector(f'tr[data-id="{tid}"]', timeout=10_000)
    b = await live.post("Transfer to my friend never arrived")
    await page.wait_for_selector(f'tr[data-id="{b}"]', timeout=5000)
    await wait_for(lambda: _is(row_status(page, b), "assigned"), timeout=20)

    seen = await page.evaluate("monitor.seen")
    stream = [eid.decode() for eid, _ in await r.xrange(live.k.events, min=seen[0], max=seen[-1])]
    assert seen == stream, "the page's events differ from the stream's (gap or duplicate)"
    assert await page.evaluate("monitor.connects") >= 2


async def _all_routed(r, k, ids):
    st = [await r.hget(k.ticket(t), "status") for t in ids]
    return all(s in (b"assigned", b"queued", b"attached") for s in st)


async def test_token_login_sets_cookie_and_feed_works_on_a_phone(settings, r, browser):
    """With ROUTING_API_TOKEN set: / is a login form, the feed is 401 without the token; the form sets an HttpOnly
    cookie the EventSource rides on. Run at a phone-sized viewport: nothing overflows sideways."""
    async with Live(replace(settings, api_token="s3cret-token"), r) as lv:
        async with aiohttp.ClientSession() as anon:
            async with anon.get(lv.url + "/v1/events") as resp:
                assert resp.status == 401
            async with anon.get(lv.url + "/") as resp:
                assert resp.status == 401 and 'name="token"' in await resp.text()
        ctx = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
        page = await ctx.new_page()
        await page.goto(lv.url + "/")
        await page.fill("#token", "s3cret-token")
        await page.click("button[type=submit]")
        await page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
        cookie = next(c for c in await ctx.cookies() if c["name"] == "routing_token")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        tid = await lv.post("Someone used my card in another country")
        await page.wait_for_selector(f'tr[data-id="{tid}"]', timeout=5000)
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


async def test_an_operator_splits_an_incident_and_merges_it_back_from_the_page(settings, r, browser):
    """The incident's Members panel: check two members, split them off (a new incident appears in the list), then
    merge the new one back; a refused request shows the API's reason. Hand-made vectors, dedup and route only."""
    import numpy as np

    from routing_engine.domain.messages import Enriched
    from routing_engine.domain.ticket import Ticket

    from fixtures import InProcessPipeline

    def msg(tid, *xs):
        v = np.zeros(8, dtype=np.float32)
        v[: len(xs)] = xs
        enrich = {"category": "atm", "team": "desk", "urgency": 0.2, "urgent": False, "confidence": 0.9,
                  "fast": {"top": [["atm", 0.9]]}}
        return Enriched(Ticket(tid, subject=f"subject {tid}", body="b"), int(time.time() * 1000), enrich,
                        v / np.linalg.norm(v))

    s = replace(settings, dedup_tau=0.99, dedup_tau_category=0.95, dedup_tau_centroid=0.99,
                dedup_tau_centroid_category=0.95, dedup_tau_merge=0.7, incident_k=10, storm_burst=0.0)
    async with InProcessPipeline(s, r, stages=("dedup", "route")) as p:
        await p.client.put("/v1/agents/desk1", json={"capacity": 30, "skills": {"desk": 1.0}})
        storm = [msg(f"l{i}", 1, 0.2, 0.03 * i) for i in range(10)]
        storm += [msg(f"r{i}", 1, -0.6, 0.03 * i) for i in range(4)]
        async with r.pipeline(transaction=True) as pipe:
            for m in storm:
                pipe.xadd(p.k.enriched, m.to_fields())
            await pipe.execute()
        await wait_for(lambda: _is(r.llen(p.k.members("l0")), 14), 30)
        page, errors = await open_page(browser, str(p.client.make_url("/")))
        await page.click('button[data-members="l0"]')
        await page.wait_for_selector('#trail-body input[value="r0"]')
        await page.check('#trail-body input[value="r0"]')
        await page.check('#trail-body input[value="r1"]')
        await page.click('#trail-body button[data-op="split"]')
        await page.wait_for_function("document.querySelector('#regroup-msg')?.textContent.includes('l0.split1')")
        assert sorted(m.decode() for m in await r.lrange(p.k.members("l0.split1"), 0, -1)) == ["r0", "r1"]
        await page.wait_for_selector('#inc-list li[data-gid="l0.split1"]')
        # every member checked: refused with the API's reason, nothing moved
        for box in await page.query_selector_all('#trail-body input[name="t"]'):
            await box.check()
        await page.click('#trail-body button[data-op="move-out"]')
        await page.wait_for_function("document.querySelector('#regroup-msg')?.textContent.includes('every member')")
        assert await r.llen(p.k.members("l0")) == 12
        # merge the split one back from its own panel
        await page.click("#trail-close")
        await page.click('button[data-members="l0.split1"]')
        await page.wait_for_selector('#trail-body select[name="into"]')
        await page.select_option('#trail-body select[name="into"]', "l0")
        await page.click('#trail-body button[data-op="merge"]')
        await page.wait_for_function("document.querySelector('#regroup-msg')?.textContent.includes('merge')")
        assert await r.llen(p.k.members("l0")) == 14
        assert (await r.hget(p.k.group("l0.split1"), "merged_into")) == b"l0"
        await page.wait_for_selector('#inc-list li[data-gid="l0.split1"]', state="detached")
        # the browser logs the refused request's 400 itself; nothing else went wrong on the page
        assert [e for e in errors if "status of 400" not in e] == [], errors
