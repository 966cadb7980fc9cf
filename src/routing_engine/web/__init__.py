"""The aiohttp app: webhook door, JSON API, SSE live feed, dashboard, health, metrics and OpenAPI."""
