"""`routing-engine demo` as a newcomer runs it: a real process replays its built-in flood through its own
webhook, the live monitor in headless Chromium shows the incident the storm opens, and Ctrl-C stops it cleanly.

With DASHBOARD_SCREENSHOT=docs/dashboard.png it also writes the README's screenshot, mid-flood, from this real
run (nothing injected). DEMO_MODELS_DIR points it at another model (the README's shot uses the BANKING77 one).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")


def _read(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def _wait_output(proc, log: Path, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, _read(log))
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in the demo's output:\n{_read(log)[-3000:]}")


async def test_demo_floods_the_dashboard_opens_an_incident_and_stops_on_ctrl_c(settings, models_dir, tmp_path):
    from playwright.async_api import async_playwright

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "ROUTING_"))}
    env.update({"REDIS_URL": settings.redis_url, "ROUTING_PREFIX": settings.prefix, "ROUTING_PORT": str(port),
                "ROUTING_MODELS_DIR": os.environ.get("DEMO_MODELS_DIR") or str(models_dir),
                "ROUTING_STATE_DIR": str(tmp_path / "state"), "ROUTING_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    log = tmp_path / "demo.log"
    # card_arrival is one of the tiny test model's intents: a card-delivery outage
    cmd = [sys.executable, "-m", "routing_engine.cli", "demo", "--duration", "26", "--rate", "2",
           "--storm-rate", "25", "--storm-intent", "card_arrival", "--linger", "120"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        _wait_output(proc, log, r"demo +open http://127\.0\.0\.1:\d+/", 120)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
            # the storm (from 12 s at 25/s) turns the flood meter and opens an incident on the page
            await page.wait_for_selector('#flood-state[data-state="flood"]', timeout=40_000)
            await page.wait_for_function("Number(document.querySelector('#inc-count').textContent) >= 1",
                                         timeout=40_000)
            shot = os.environ.get("DASHBOARD_SCREENSHOT")
            if shot:
                Path(shot).parent.mkdir(parents=True, exist_ok=True)
                await page.wait_for_timeout(2000)  # mid-flood: the storm is still arriving
                await page.screenshot(path=shot)
            rows = await page.evaluate("document.querySelectorAll('#tickets tbody tr').length")
            assert rows > 20
            await browser.close()
        assert not errors, errors
        m = _wait_output(proc, log, r"demo +(\d+) sent, (\d+) routed, (\d+) incident\(s\)", 120)
        sent, routed, incidents = (int(x) for x in m.groups())
        assert sent > 100 and routed == sent and incidents >= 1, _read(log)[-2000:]
        _wait_output(proc, log, r"still serving", 30)
        proc.send_signal(signal.SIGINT)  # Ctrl-C while it lingers
        assert proc.wait(timeout=30) == 0, _read(log)[-3000:]
        assert "shutdown.complete" in _read(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
