"""The few named errors, each mapped once to an HTTP status or a dead-letter reason."""

from __future__ import annotations


class RoutingError(Exception):
    status = 500
    code = "internal"


class InvalidTicket(RoutingError):
    """Input that breaks the ticket contract; `problems` lists {field, problem} pairs."""

    status = 422
    code = "invalid_ticket"

    def __init__(self, problems: list[dict]):
        self.problems = problems
        super().__init__("; ".join(f"{p['field']}: {p['problem']}" for p in problems))


class BadRequest(RoutingError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)


class PayloadTooLarge(RoutingError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RoutingError):
    status = 415
    code = "unsupported_media_type"


class NotFound(RoutingError):
    status = 404
    code = "not_found"


class Conflict(RoutingError):
    status = 409
    code = "conflict"


class StageError(RoutingError):
    """A stage failed on an entry; the runtime retries it, then dead-letters it."""
