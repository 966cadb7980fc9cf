"""The few named errors, each mapped once to an HTTP status or a dead-letter reason."""

from __future__ import annotations


class RoutingError(Exception):
    """`details` become extra members of the JSON error (field, limit, hashes), so a client can act on them."""

    status = 500
    code = "internal"

    def __init__(self, message: str = "", **details):
        super().__init__(message)
        self.details = {k: v for k, v in details.items() if v is not None}


class InvalidTicket(RoutingError):
    """Input that breaks the ticket contract; `problems` lists {field, problem} pairs."""

    status = 422
    code = "invalid_ticket"

    def __init__(self, problems: list[dict]):
        self.problems = problems
        super().__init__("; ".join(f"{p['field']}: {p['problem']}" for p in problems), problems=problems)


class BadRequest(RoutingError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message, field=field)


class PayloadTooLarge(RoutingError):
    """A body over the limit; `limit` (bytes) is in the error."""

    status = 413
    code = "payload_too_large"


class TooDeep(RoutingError):
    """JSON nested deeper than the parser reads; `limit` (levels) is in the error."""

    status = 422
    code = "too_deep"


class UnsupportedMediaType(RoutingError):
    status = 415
    code = "unsupported_media_type"


class NotFound(RoutingError):
    status = 404
    code = "not_found"


class Conflict(RoutingError):
    status = 409
    code = "conflict"


class IdConflict(Conflict):
    """A client id already accepted with another body; the error gives both bodies' sha256."""

    code = "id_conflict"


class StageError(RoutingError):
    """A stage failed on an entry; the runtime retries it, then dead-letters it."""
