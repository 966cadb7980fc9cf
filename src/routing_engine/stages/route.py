"""Route stage: give each ticket to the free agent with the best skill x spare capacity, atomically in Redis."""

from __future__ import annotations

import time

from ..domain.messages import Deduped, Routed
from ..infra.agents import agent_ids
from ..infra.operations import fill_after
from ..infra.runtime import Entry, Outcome, Stage, StageContext
from ..metrics import END_TO_END


class RouteStage(Stage):
    name = "route"

    def __init__(self, settings, keys):
        super().__init__(settings, keys)

    async def setup(self, ctx: StageContext) -> None:
        self.r = ctx.r
        self.scripts = ctx.scripts

    def decode(self, entry: Entry) -> Deduped:
        return Deduped.from_fields(entry.fields)

    async def process(self, entries: list[Entry]) -> list[Outcome]:
        # the agents known now, read once per batch: route.lua gets each agent's key (a new agent joins at the
        # next batch)
        agents = await agent_ids(self.r, self.keys)
        # the ticket's group now: a merge after dedup re-pointed the record to the surviving group
        async with self.r.pipeline(transaction=False) as pipe:
            for e in entries:
                pipe.hget(self.keys.ticket(e.value.ticket_id), "group")
            current = await pipe.execute()
        outcomes = []
        for e, now_in in zip(entries, current):
            msg: Deduped = e.value
            gid = now_in.decode() if now_in else msg.group
            write = self.scripts.route(ticket_id=msg.ticket_id, team=msg.team, gid=gid, urgency=msg.urgency,
                                       summary=Routed.summary_of(msg), agent_ids=agents)
            outcomes.append(Outcome(e, writes=[write], info={"received_at": msg.received_at}))
        return outcomes

    async def after_commit(self, outcomes, results) -> None:
        now = time.time()
        fill = False
        for o, (reply,) in zip(outcomes, results):
            _status, _assignee, fresh, needs_fill = reply
            fill = fill or needs_fill == 1
            if fresh == 1 and o.info.get("received_at"):
                END_TO_END.observe(max(0.0, now - o.info["received_at"] / 1000))
        if fill:
            # a ticket was queued behind waiting ones while an agent was free: the queue heads take those slots
            await fill_after(self.r, self.keys, self.scripts, "route")
