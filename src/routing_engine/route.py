"""Route stage: give each ticket to the free agent with the best skill x spare capacity, atomically in Redis."""

from __future__ import annotations

import time

import orjson

from .metrics import END_TO_END
from .runtime import Entry, Outcome, Stage
from .scripts import Scripts, now_ms


class RouteStage(Stage):
    name = "route"

    def __init__(self, settings, keys):
        super().__init__(settings, keys)
        self.input = keys.deduped

    async def setup(self, r) -> None:
        self.scripts = Scripts(r)

    def decode(self, entry: Entry):
        return orjson.loads(entry.fields[b"data"])

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        return [Outcome(e, apply=self._committer(e), info={"received_at": e.value.get("received_at")}) for e in entries]

    def _committer(self, entry: Entry):
        data = entry.value
        tid = data["ticket"]["ticket_id"]
        team = data["enrich"]["team"]
        gid = data["dedup"]["group"]
        summary = {"ticket_id": tid, "category": data["enrich"]["category"], "team": team,
                   "urgency": data["enrich"]["urgency"], "group": gid, "received_at": data.get("received_at")}

        def apply(pipe):
            return self.scripts.route(
                keys=[entry.stream, self.keys.routed, self.keys.ticket(tid), self.keys.agents, self.keys.queue(team),
                      self.keys.group(gid), self.keys.events],
                args=[self.name, entry.id, tid, team, data["enrich"]["urgency"], now_ms(), self.settings.stream_maxlen,
                      self.settings.ticket_ttl_s, self.keys.base, orjson.dumps(summary)],
                client=pipe,
            )
        return apply

    async def after_commit(self, outcomes, results) -> None:
        now = time.time()
        for o, res in zip(outcomes, results):
            if res and res[0][2] == 1 and o.info.get("received_at"):
                END_TO_END.observe(max(0.0, now - o.info["received_at"] / 1000))
