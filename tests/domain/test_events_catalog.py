"""The event catalog is the one list of event types: the events schema says the same, and no code, Lua script or
dashboard handler uses a type it lacks."""

from __future__ import annotations

import re

from routing_engine.domain.events import ALERT_TYPES, ALL_EVENTS, DERIVED_EVENTS, STREAM_EVENTS
from routing_engine.domain.schemas import schema

from fixtures import ROOT

# an event or alert type as a literal: ticket.x, incident.x, agent.x, breaker.x, flood.x, queue.x
TYPE_LITERAL = re.compile(r"""["'](?:ticket|incident|agent|breaker|flood|queue)\.[a-z_]+["']""")
# a type built as a prefix + a status, as in route.lua's 'ticket.' .. status
TYPE_PREFIX = re.compile(r"""'ticket\.' \.\. (\w+)""")


def test_schema_lists_exactly_the_stream_events():
    assert schema("events")["properties"]["type"]["enum"] == list(STREAM_EVENTS)
    assert not set(STREAM_EVENTS) & set(DERIVED_EVENTS)


def test_alert_schema_lists_the_alert_types():
    assert schema("alerts")["properties"]["type"]["enum"] == list(ALERT_TYPES)


def _literals(path) -> set[str]:
    return {m.group(0)[1:-1] for m in TYPE_LITERAL.finditer(path.read_text())}


def test_every_type_used_anywhere_is_in_the_catalog():
    known = set(ALL_EVENTS) | set(ALERT_TYPES)
    files = [*(ROOT / "src" / "routing_engine").rglob("*.py"), *(ROOT / "streams").glob("*.lua"),
             *(ROOT / "dashboards").glob("*.js")]
    used: dict[str, list[str]] = {}
    for f in files:
        for t in _literals(f):
            used.setdefault(t, []).append(f.name)
    unknown = {t: where for t, where in used.items() if t not in known}
    assert not unknown, f"event types missing from domain/events.py: {unknown}"
    # route.lua names its event after the route status: each status it can give must be a known type
    route = (ROOT / "streams" / "route.lua").read_text()
    assert TYPE_PREFIX.search(route)
    for status in ("assigned", "queued", "attached"):
        assert f"ticket.{status}" in STREAM_EVENTS
