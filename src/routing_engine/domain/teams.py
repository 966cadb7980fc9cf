"""Maps classifier labels (intents) to the team that handles them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..resources import data_dir

DEFAULT_TEAMS_PATH = data_dir() / "teams.yaml"


@dataclass
class Teams:
    intent_to_team: dict[str, str]
    descriptions: dict[str, str]
    default_team: str = "general"
    path: Path | None = None
    _names: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        names = list(self.descriptions)
        if self.default_team not in names:
            names.append(self.default_team)
        self._names = names

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def team_of(self, label: str) -> str:
        team = self.intent_to_team.get(label)
        if team is not None:
            return team
        # A model trained directly on team names (a user's own label set) routes to itself.
        if label in self.descriptions:
            return label
        return self.default_team

    def description(self, team: str) -> str:
        if team == self.default_team and team not in self.descriptions:
            return "Anything no other team claims."
        return self.descriptions.get(team, "")


def load_teams(path: str | Path | None = None) -> Teams:
    p = Path(path) if path else DEFAULT_TEAMS_PATH
    doc = yaml.safe_load(p.read_text()) or {}
    mapping: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    for team, spec in (doc.get("teams") or {}).items():
        spec = spec or {}
        descriptions[team] = str(spec.get("description", ""))
        for intent in spec.get("intents") or []:
            intent = str(intent)
            if intent in mapping:
                raise ValueError(f"{p}: intent {intent!r} is mapped to both {mapping[intent]!r} and {team!r}")
            mapping[intent] = team
    return Teams(mapping, descriptions, str(doc.get("default_team", "general")), p)
