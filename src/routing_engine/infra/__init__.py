"""The only code that knows Redis keys, Lua scripts and consumer groups: the stage runtime, scripts, keys, the
breaker's shared state, the agents store, read-side queries and the embedded Redis server."""
