"""Settings from the environment: a value of the wrong type or range is refused naming its variable, and the CLI says
so in one line (exit 2), not with a traceback."""

from __future__ import annotations

import pytest

from routing_engine import cli
from routing_engine.config import Settings


@pytest.mark.parametrize("env, value, says", [
    ("ROUTING_BATCH_SIZE", "abc", "ROUTING_BATCH_SIZE='abc': expected int"),
    ("ROUTING_BATCH_SIZE", "0", "ROUTING_BATCH_SIZE=0: must be at least 1"),
    ("ROUTING_ENRICH_RUNNERS", "0", "ROUTING_ENRICH_RUNNERS=0: must be at least 1"),
    ("ROUTING_EMBED_THREADS", "-1", "ROUTING_EMBED_THREADS=-1: must be at least 0"),
    ("ROUTING_BLAS_THREADS", "two", "ROUTING_BLAS_THREADS='two': expected int"),
    ("ROUTING_STORM_PRIOR", "-2", "ROUTING_STORM_PRIOR=-2.0: must be at least 0.0"),
    ("ROUTING_STORM_LABEL_FIRST", "flase", "ROUTING_STORM_LABEL_FIRST='flase': expected bool"),
])
def test_a_bad_setting_is_refused_by_name(monkeypatch, capsys, env, value, says):
    monkeypatch.setenv(env, value)
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        Settings.from_env()
    assert cli.main(["worker"]) == 2
    assert capsys.readouterr().err.strip() == f"configuration: {says}"


def test_the_defaults_and_a_good_value_pass(monkeypatch):
    for env in ("ROUTING_BLAS_THREADS", "ROUTING_EMBED_THREADS", "ROUTING_BATCH_SIZE"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("ROUTING_ENRICH_RUNNERS", "2")
    s = Settings.from_env()
    assert s.enrich_runners == 2 and s.blas_threads == 1 and s.embed_threads == 0 and s.batch_size == 512
    with pytest.raises(ValueError, match="ROUTING_BLAS_THREADS=-2"):  # replay --set goes through the same check
        s.overridden({"ROUTING_BLAS_THREADS": "-2"})
