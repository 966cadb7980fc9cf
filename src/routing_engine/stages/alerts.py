"""Alert sender stage: POST each entry of the alerts stream to the outbound webhook, with timeout and retry.

Alerts are written to their stream inside the dedup commit, so a crash can't lose one; this stage
delivers them at least once and dead-letters an alert the endpoint keeps refusing.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import structlog

from ..infra.runtime import Entry, Outcome, Stage, StageContext
from ..infra.scripts import Write
from ..metrics import ALERTS

log = structlog.get_logger("alerts")


class AlertStage(Stage):
    name = "alerts"

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        self.session: aiohttp.ClientSession | None = None

    async def setup(self, ctx: StageContext) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.alert_timeout_s))

    def decode(self, entry: Entry):
        f = {k.decode(): v for k, v in entry.fields.items()}
        return {"type": f["type"].decode(), "group": f.get("group", b"").decode(),
                "size": int(f.get("size", b"0")), "ticket": orjson.loads(f.get("data", b"{}")),
                "alert_id": entry.id}

    async def _send(self, payload: dict) -> str | None:
        """Returns None on success, else the last error."""
        error = None
        for attempt in range(self.settings.alert_retries):
            try:
                async with self.session.post(self.settings.alert_url, data=orjson.dumps(payload),
                                             headers={"Content-Type": "application/json"}) as resp:
                    if resp.status < 300:
                        return None
                    error = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status != 429:
                        return error  # the receiver rejects it; retrying won't help
            except (TimeoutError, aiohttp.ClientError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        return error

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        errors = await asyncio.gather(*(self._send(e.value) for e in entries))
        outcomes = []
        for e, err in zip(entries, errors):
            ALERTS.labels("sent" if err is None else "failed").inc()
            if err is None:
                outcomes.append(Outcome(e, writes=[Write.cmd("HINCRBY", self.keys.stats, "alerts_sent", 1)]))
            else:
                log.warning("alert.failed", alert=e.id, error=err)
                outcomes.append(Outcome(e, dead_reason=f"alert delivery failed: {err}"))
        return outcomes

    async def close(self) -> None:
        if self.session:
            await self.session.close()
