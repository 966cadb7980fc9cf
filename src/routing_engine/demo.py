"""`routing-engine demo`: the service as `up` runs it, plus a small built-in flood replayed through its own webhook.

Background tickets arrive at a calm rate; a storm of one intent (an "outage": many customers reporting the same
thing, reworded) starts a few seconds in and peaks above the dashboard's flood floor, so a newcomer sees, on the
live monitor, the ticket table filling, the flood state turning to FLOOD, an incident opening for the storm,
agents loading up, and the breaker card. Texts come from the shipped BANKING77 train set (CC BY 4.0).
"""

from __future__ import annotations

import asyncio
import csv
import random
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from .models.data import default_training_data
from .web.signatures import sign

# Customer details appended to some tickets, so a storm is not only exact repeats.
DETAILS = ("Customer {n}.", "Account ending {d4}.", "Sent from my phone.", "Reference R{n}.", "Card ending {d4}.")
URGENT = ("URGENT: ", "Please help ASAP! ")


@dataclass
class DemoPlan:
    """A small flood: `background_rate` tickets/s throughout, plus `storm_rate`/s of one intent for a while.

    The storm's default rate (30/s on top of 3/s) is above the dashboard's flood floor (20/s) and well within
    what one worker on 2 cores routes, so the demo shows a flood without building a backlog."""

    duration_s: float = 45.0
    background_rate: float = 3.0
    storm_intent: str = "declined_cash_withdrawal"
    storm_start_s: float = 12.0
    storm_duration_s: float = 15.0
    storm_rate: float = 30.0
    seed: int = 7


def read_rows(path: Path) -> dict[str, list[str]]:
    by_intent: dict[str, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = (row.get("text") or "").strip()
            if text:
                by_intent.setdefault(row["category"].strip(), []).append(text)
    return by_intent


def plan_tickets(by_intent: dict[str, list[str]], plan: DemoPlan) -> list[tuple[float, dict]]:
    """(seconds from start, ticket) in arrival order; Poisson arrivals, seeded."""
    if plan.storm_intent not in by_intent:
        raise ValueError(f"no rows for storm intent {plan.storm_intent!r}; choose from {', '.join(sorted(by_intent))}")
    rng = random.Random(plan.seed)
    others = [i for i in by_intent if i != plan.storm_intent]
    out: list[tuple[float, dict]] = []

    def arrivals(rate: float, start: float, end: float):
        t = start
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= end:
                return
            yield t

    def ticket(kind: str, text: str) -> dict:
        n = len(out)
        body = text
        if rng.random() < 0.3:
            body = f"{text} {rng.choice(DETAILS).format(n=10_000 + n, d4=rng.randint(1000, 9999))}"
        subject = text if len(text) <= 70 else text[:67] + "..."
        if rng.random() < 0.05:
            subject = rng.choice(URGENT) + subject
        return {"id": f"demo-{kind}-{n:05d}", "subject": subject, "body": body,
                "customer": f"cust-{rng.randint(1, 5000)}", "channel": rng.choice(("email", "chat", "web", "app"))}

    for t in arrivals(plan.background_rate, 0.0, plan.duration_s):
        out.append((t, ticket("bg", rng.choice(by_intent[rng.choice(others)]))))
    storm_end = min(plan.duration_s, plan.storm_start_s + plan.storm_duration_s)
    for t in arrivals(plan.storm_rate, plan.storm_start_s, storm_end):
        out.append((t, ticket("storm", rng.choice(by_intent[plan.storm_intent]))))
    out.sort(key=lambda x: x[0])
    return out


async def replay(base_url: str, planned: list[tuple[float, dict]], stop: asyncio.Event, *, token: str = "",
                 secret: str = "", say=print) -> dict:
    """POST each ticket to the webhook at its time (signed with the first of `secret`'s comma list when set);
    returns counts. Stops early when `stop` is set."""

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    sent = errors = 0
    t0 = time.monotonic()
    next_report = 5.0
    async with aiohttp.ClientSession(base_url, headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as http:
        for at, doc in planned:
            if stop.is_set():
                break
            delay = at - (time.monotonic() - t0)
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            try:
                body = orjson.dumps(doc)
                signed = {"X-Routing-Signature": sign(secret.split(",")[0].strip(), body)} if secret else {}
                async with http.post("/v1/tickets", data=body, headers=signed) as resp:
                    if resp.status == 202:
                        sent += 1
                    else:
                        errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            if at >= next_report:
                say(f"demo     {at:4.0f}s  {sent} tickets sent")
                next_report += 5.0
    return {"sent": sent, "errors": errors, "seconds": round(time.monotonic() - t0, 1)}


def demo_data() -> Path:
    path = default_training_data()
    if path is None:
        raise SystemExit("no ticket texts for the demo: the shipped BANKING77 data is missing")
    return path
