"""`routing-engine up` as a newcomer runs it, on a fresh clone with nothing beside it: no REDIS_URL, no model,
no ../shared. It must train its first model on the data that ships with the package, come up healthy, and route.

The clone's own package runs (PYTHONPATH=<clone>/src), so a file missing from the repository fails here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fixtures import ROOT, free_port

FIRST_START_S = 420  # the README's first-start time (about 2 minutes here) with room for a slow CI box


def _get(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def _post(url, doc):
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_fresh_clone_up_trains_on_shipped_data_and_routes(tmp_path):
    clone = tmp_path / "routing-engine"  # nothing beside it: no ../shared
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{ROOT}", str(clone)], check=True)
    assert not (tmp_path / "shared").exists()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "ROUTING_"))}
    env.update({"ROUTING_PORT": str(port), "ROUTING_LOG_FORMAT": "json", "PYTHONPATH": str(clone / "src")})
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "routing_engine.cli", "up"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=clone)
    base = f"http://127.0.0.1:{port}"
    state = clone / "state"
    try:
        deadline = time.monotonic() + FIRST_START_S
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
        models = [d for d in (state / "models").iterdir() if (d / "meta.json").is_file()]
        assert models, "first start should have trained a model"
        meta = json.loads((models[0] / "meta.json").read_text())
        shipped = clone / "src" / "routing_engine" / "data" / "banking77" / "train.csv"
        assert meta["training_data"] == str(shipped.resolve()) and meta["rows"] == 10_003
        assert f"training the default one first on {shipped}" in out

        status, acc = _post(f"{base}/v1/tickets", {"subject": "Lost card", "body": "I lost my card this morning"})
        assert status == 202
        rec = {}
        while time.monotonic() < deadline and rec.get("status") not in ("assigned", "queued"):
            time.sleep(0.3)
            rec = _get(f"{base}/v1/tickets/{acc['ticket_id']}")[1]
        assert rec["status"] in ("assigned", "queued") and rec["team"] and rec["enrich"]["model"]
        assert (state / "redis" / "appendonlydir").is_dir()  # AOF on: accepted tickets survive
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0, Path(log.name).read_text()[-3000:]
