"""Alert sender stage: POST each entry of the alerts stream to the outbound webhook, one try per delivery.

Alerts are written to their stream inside the dedup commit, so a crash can't lose one; this stage delivers them
at least once (receivers de-duplicate on alert_id). A try that fails for a reason that may pass (no connection,
timeout, 5xx, 408, 429) parks the alert in the delay zset {prefix}:alerts:delayed, due after an exponential
backoff or the receiver's Retry-After; the ZADD is the entry's commit, so the runtime acks it only once the alert
is parked. A background task moves due alerts back onto the stream (streams/alerts_due.lua) with their original
alert_id and the try count, so a slow receiver never holds up the other alerts. An alert still failing
ROUTING_ALERT_RETRY_FOR_S after it was raised, or one the receiver rejects (another 4xx), is dead-lettered with
the reason; `routing-engine replay-alerts` puts dead-lettered alerts back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import aiohttp
import orjson
import structlog

from ..infra import redis_errors
from ..infra.runtime import Entry, Outcome, Stage, StageContext
from ..infra.scripts import Scripts, Write
from ..metrics import ALERTS

log = structlog.get_logger("alerts")

# How often the due-mover looks at the delay zset: the lateness a retry may have on top of its wait.
DUE_POLL_S = 0.2
DUE_BATCH = 100
# Statuses worth another try: the receiver timed out or asked us to slow down; other 4xx are final.
RETRYABLE_4XX = (408, 429)


@dataclass
class Attempt:
    """One try's result: ok, or the error and whether a later try may succeed (and when the receiver asks it)."""

    error: str | None = None
    final: bool = False
    retry_after_s: float | None = None


def stream_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def backoff_s(attempt: int, first: float, cap: float) -> float:
    """Wait after failed try number `attempt` (1-based): first, 2×first, 4×first ... up to cap."""
    return min(cap, first * 2 ** min(attempt - 1, 30))


class AlertStage(Stage):
    name = "alerts"

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        self.session: aiohttp.ClientSession | None = None
        self._mover: asyncio.Task | None = None

    async def setup(self, ctx: StageContext) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.alert_timeout_s))
        # the runtime calls process() only when entries arrive, so due alerts are moved by a task of their own
        self._mover = asyncio.create_task(self._move_due(ctx.scripts))

    async def _move_due(self, scripts: Scripts) -> None:
        while True:
            try:
                while await scripts.alerts_due(limit=DUE_BATCH) == DUE_BATCH:
                    pass  # more are due: move them before sleeping
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away or refusing: the alerts stay parked, tried again next round
                log.warning("alerts.due_move_failed", error=f"{type(exc).__name__}: {exc}",
                            trouble=redis_errors.trouble(exc))
            await asyncio.sleep(DUE_POLL_S)

    def decode(self, entry: Entry):
        f = {k.decode(): v for k, v in entry.fields.items()}
        alert_id = f.get("alert_id", b"").decode() or entry.id  # a retried alert keeps its first id
        return {"type": f["type"].decode(), "group": f.get("group", b"").decode(),
                "size": int(f.get("size", b"0")), "ticket": orjson.loads(f.get("data", b"{}")),
                **({"reason": f["reason"].decode()} if "reason" in f else {}),
                "alert_id": alert_id, "_attempt": int(f.get("attempt", b"1")),
                "_first_at": int(f.get("first_at", b"0")) or stream_ms(alert_id)}

    async def _send(self, alert: dict) -> Attempt:
        payload = {k: v for k, v in alert.items() if not k.startswith("_")}
        try:
            async with self.session.post(self.settings.alert_url, data=orjson.dumps(payload),
                                         headers={"Content-Type": "application/json"}) as resp:
                if resp.status < 300:
                    return Attempt()
                final = 400 <= resp.status < 500 and resp.status not in RETRYABLE_4XX
                return Attempt(f"HTTP {resp.status}", final, retry_after_s(resp.headers.get("Retry-After")))
        except (TimeoutError, aiohttp.ClientError) as exc:
            return Attempt(f"{type(exc).__name__}: {exc}")

    def _outcome(self, e: Entry, a: Attempt) -> Outcome:
        alert, s = e.value, self.settings
        if a.error is None:
            ALERTS.labels("sent").inc()
            return Outcome(e, writes=[Write.cmd("HINCRBY", self.keys.stats, "alerts_sent", 1)])
        tries = alert["_attempt"]
        if a.final:
            ALERTS.labels("rejected").inc()
            log.warning("alert.rejected", alert=alert["alert_id"], error=a.error)
            return Outcome(e, dead_reason=f"alert rejected by the receiver: {a.error} (not retried)")
        now = int(time.time() * 1000)
        wait = a.retry_after_s if a.retry_after_s is not None else backoff_s(tries, s.alert_backoff_s,
                                                                               s.alert_backoff_max_s)
        due = now + int(wait * 1000)
        if due > alert["_first_at"] + s.alert_retry_for_s * 1000:
            ALERTS.labels("failed").inc()
            log.warning("alert.failed", alert=alert["alert_id"], tries=tries, error=a.error)
            return Outcome(e, dead_reason=f"alert delivery failed {tries} times over "
                                          f"{(now - alert['_first_at']) / 1000:.0f} s "
                                          f"(ROUTING_ALERT_RETRY_FOR_S={s.alert_retry_for_s:g}): {a.error}")
        ALERTS.labels("retried").inc()
        log.info("alert.retry", alert=alert["alert_id"], tries=tries, error=a.error, retry_in_s=round(wait, 2))
        fields = {k.decode(): v.decode() for k, v in e.fields.items()}
        fields.update(alert_id=alert["alert_id"], attempt=str(tries + 1), first_at=str(alert["_first_at"]))
        member = orjson.dumps([x for kv in fields.items() for x in kv])
        # parking it is the entry's commit: the runtime acks the entry only once this ZADD held
        return Outcome(e, writes=[Write.cmd("ZADD", self.keys.alerts_delayed, due, member)])

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        attempts = await asyncio.gather(*(self._send(e.value) for e in entries))
        return [self._outcome(e, a) for e, a in zip(entries, attempts)]

    async def close(self) -> None:
        if self._mover:
            self._mover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mover
        if self.session:
            await self.session.close()
