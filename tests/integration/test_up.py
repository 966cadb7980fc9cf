"""`routing-engine up` as a newcomer runs it: no REDIS_URL, no model yet; it must come up healthy and route."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fixtures import FIXTURE, free_port


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def _post(url, doc):
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_up_starts_embedded_redis_trains_and_routes(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "ROUTING_"))}
    # first start trains the model; the small fixture keeps that to seconds (the default is BANKING77)
    env.update({"ROUTING_STATE_DIR": str(tmp_path / "state"), "ROUTING_PORT": str(port),
                "ROUTING_TRAIN_DATA": str(FIXTURE), "ROUTING_LOG_FORMAT": "json"})
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "routing_engine.cli", "up"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, health = _get(f"{base}/healthz")
                if status == 200 and "enrich" in health["streams"]["ingest"]["groups"]:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        out = Path(log.name).read_text()
        assert health and health["status"] == "ok" and health["redis"] is True, out[-3000:]
        assert "(embedded, data in" in out and f"http://127.0.0.1:{port}/v1/tickets" in out
        assert list((tmp_path / "state" / "models").iterdir()), "first start should have trained a model"

        status, acc = _post(f"{base}/v1/tickets", {"subject": "Lost card", "body": "I lost my card this morning"})
        assert status == 202
        rec = {}
        while time.monotonic() < deadline and rec.get("status") not in ("assigned", "queued"):
            time.sleep(0.3)
            rec = _get(f"{base}/v1/tickets/{acc['ticket_id']}")[1]
        assert rec["status"] in ("assigned", "queued") and rec["team"] and rec["enrich"]["model"]
        assert (tmp_path / "state" / "redis" / "appendonlydir").is_dir()  # AOF on: accepted tickets survive
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0, Path(log.name).read_text()[-3000:]
