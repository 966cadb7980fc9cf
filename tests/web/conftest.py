"""Fixtures for the HTTP doors: the API alone, with no stage and no model behind it."""

from __future__ import annotations

import pytest

from fixtures import InProcessPipeline


@pytest.fixture
def settings(redis_url, prefix, tmp_path):
    """The doors need no model: skip the session's model training."""
    from routing_engine.config import Settings

    return Settings(redis_url=redis_url, prefix=prefix, state_dir=str(tmp_path))


@pytest.fixture
async def api(settings, r):
    """The real aiohttp app on a real port, with no stage running: what a producer talks to."""
    async with InProcessPipeline(settings, r, stages=[]) as p:
        yield p
