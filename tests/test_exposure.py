"""Secure by default at the command line: serving beyond loopback with no token configured refuses to start (exit 2,
the reason on stderr) for api, up and demo, before training or starting anything; loopback stays open. Printed
Redis URLs never show the password."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from routing_engine.config import Settings, is_loopback
from routing_engine.logs import redact_url

from fixtures import REDIS_URL


@pytest.mark.parametrize("host, loop", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
                                        ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False),
                                        ("10.0.0.5", False), ("example.com", False)])
def test_loopback(host, loop):
    assert is_loopback(host) is loop


def test_any_token_allows_a_public_bind():
    assert Settings(host="0.0.0.0").bind_refusal()
    assert Settings(host="127.0.0.1").bind_refusal() is None
    for name in ("api_token", "operate_token", "read_token", "ingest_token"):
        assert Settings(host="0.0.0.0", **{name: "t"}).bind_refusal() is None


@pytest.mark.parametrize("argv", [["api", "--host", "0.0.0.0"], ["up", "--host", "0.0.0.0"],
                                  ["demo", "--host", "192.0.2.10"]])
def test_a_public_bind_without_a_token_refuses_to_start(argv, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "ROUTING_"))}
    # an empty models dir: were the check late, `up` would start training and time out here
    env.update({"REDIS_URL": REDIS_URL, "ROUTING_STATE_DIR": str(tmp_path), "ROUTING_LOG_FORMAT": "json"})
    proc = subprocess.run([sys.executable, "-m", "routing_engine.cli", *argv], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "refusing to serve" in proc.stderr and "ROUTING_OPERATE_TOKEN" in proc.stderr


@pytest.mark.parametrize("url, shown", [
    ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
    ("rediss://app:hunter2@db.example:6380/1?ssl_cert_reqs=none", "rediss://app:***@db.example:6380/1?ssl_cert_reqs=none"),
    ("redis://app:p%40ss@host:6379", "redis://app:***@host:6379"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("", ""),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert "hunter2" not in redact_url(url) and "p%40ss" not in redact_url(url)
