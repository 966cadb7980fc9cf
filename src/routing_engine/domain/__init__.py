"""What flows through the pipeline, with no Redis and no aiohttp: the ticket, typed stream messages, the event
catalog, teams and the urgency score."""
