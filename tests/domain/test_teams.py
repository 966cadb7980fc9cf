"""The team map: every BANKING77 intent owned by exactly one team, defaults for the rest."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from routing_engine.domain.teams import DEFAULT_TEAMS_PATH, load_teams

from fixtures import SHARED


def test_teams_yaml_covers_banking77_exactly_once():
    categories = SHARED / "datasets" / "banking77" / "categories.json"
    if not categories.is_file():
        pytest.skip(f"BANKING77 categories not found at {categories} (shared datasets absent)")
    intents = json.loads(categories.read_text())
    doc = yaml.safe_load(DEFAULT_TEAMS_PATH.read_text())
    mapped = Counter(i for spec in doc["teams"].values() for i in spec["intents"])
    assert sorted(mapped) == sorted(intents)
    assert set(mapped.values()) == {1}


def test_team_of_defaults():
    teams = load_teams()
    assert teams.team_of("lost_or_stolen_card") == "security"
    assert teams.team_of("reverted_card_payment?") == "payments"
    assert teams.team_of("no_such_intent") == "general"
    # A user's label set made of team names routes to itself.
    assert teams.team_of("cards") == "cards"
    assert "general" in teams.names and "security" in teams.names
    assert teams.description("security")
