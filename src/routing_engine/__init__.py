"""Real-time support-ticket routing engine on Redis Streams."""

__version__ = "0.1.0"
