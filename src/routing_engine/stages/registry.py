"""The one stage registry: every stage by name, in pipeline order, and building them for a worker."""

from __future__ import annotations

from ..config import Settings
from ..infra.keys import Keys
from ..infra.runtime import Stage
from .alerts import AlertStage
from .dedup import DedupStage
from .enrich import EnrichStage
from .fallback import FallbackStage
from .route import RouteStage

# In the order of infra.keys.STAGE_INPUTS (the topology); a test keeps the two equal.
REGISTRY: dict[str, type[Stage]] = {
    "enrich": EnrichStage, "fallback": FallbackStage, "dedup": DedupStage, "route": RouteStage, "alerts": AlertStage,
}
STAGES = tuple(REGISTRY)
# The stages a ticket passes on its way to routed: everything but the outbound alert sender.
PIPELINE_STAGES = tuple(n for n in STAGES if n != "alerts")


class UnknownStage(ValueError):
    pass


def build_stages(names: list[str] | tuple[str, ...], s: Settings) -> list[Stage]:
    """The named stages for one worker; `alerts` only when ROUTING_ALERT_URL is set (nothing to send to else)."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UnknownStage(f"unknown stage(s): {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    k = Keys(s.prefix)
    return [REGISTRY[n](s, k) for n in names if n != "alerts" or s.alert_url]
