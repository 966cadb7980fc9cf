"""The ticket contract: validate input from either door (HTTP or stream) into one Ticket shape."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from ..errors import InvalidTicket
from .schemas import schema, validator

# Client ids become Redis key names ({re}:t:<id>) and URL path segments, so they keep to a safe alphabet; the
# pattern is the schema's (the wire truth), matched whole here: jsonschema's search lets `$` pass a final newline.
ID_PATTERN = re.compile(schema("ticket")["properties"]["id"]["pattern"])
ID_MAX = schema("ticket")["properties"]["id"]["maxLength"]
ID_RULE = f"letters, digits, '.', '_', '-'; 1-{ID_MAX} characters; not starting with '.' and no '..'"
# orjson reads 1024 levels but writes only 255: deeper metadata would fail later, on the way to Redis
MAX_METADATA_DEPTH = 32

# Every status a ticket record can hold, in pipeline order (each has its own index for GET /v1/tickets?status=).
STATUSES = ("received", "escalated", "enriched", "grouped", "assigned", "queued", "attached", "resolved", "dead")


@dataclass
class Ticket:
    ticket_id: str
    subject: str = ""
    body: str = ""
    customer: str | None = None
    channel: str | None = None
    created_at: str | None = None
    metadata: dict = field(default_factory=dict)
    client_id: bool = False  # True when the id came from the client (an idempotency key)

    @property
    def text(self) -> str:
        return f"{self.subject}\n{self.body}".strip()

    def created_s(self) -> float | None:
        """`created_at` as seconds since the epoch (no UTC offset: read as UTC), None when absent or not a date."""
        dt = parse_datetime(self.created_at) if self.created_at else None
        if dt is None:
            return None
        return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # orjson writes a dataclass as asdict would, without the deep copy

    @classmethod
    def from_json(cls, raw: bytes | str) -> Ticket:
        return cls(**orjson.loads(raw))


def _field(err) -> str:
    path = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "required":
        return err.message.split("'")[1]
    if err.validator == "additionalProperties":
        extra = err.message.split("'")
        return extra[1] if len(extra) > 1 else path or "(root)"
    return path or "(root)"


def valid_id(value: str) -> bool:
    return len(value) <= ID_MAX and ID_PATTERN.fullmatch(value) is not None


def _deeper_than(obj, limit: int) -> bool:
    """Whether containers nest more than `limit` levels ({} alone is 1); stops at the first one too deep."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_datetime(value: str) -> datetime | None:
    """An ISO 8601 date-time (a trailing Z included), or None."""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _is_datetime(value: str) -> bool:
    # jsonschema only checks "format" when an optional package is present; check it here either way
    return parse_datetime(value) is not None and ("T" in value or " " in value)


def validate(obj, max_text_chars: int = 20_000, ticket_id: str | None = None) -> Ticket:
    """Check one decoded JSON value against streams/ticket.schema.json plus the rules JSON Schema can't say."""
    if not isinstance(obj, dict):
        raise InvalidTicket([{"field": "(root)", "problem": f"expected a JSON object, got {type(obj).__name__}"}])
    errors = sorted(validator("ticket").iter_errors(obj), key=lambda e: list(e.absolute_path))
    problems = []
    for err in errors:
        if err.validator == "anyOf" and not err.absolute_path:
            problems.append({"field": "subject", "problem": "missing text: give a non-empty subject or body"})
        else:
            problems.append({"field": _field(err), "problem": err.message})
    cid = obj.get("id")
    if isinstance(cid, str) and cid and not valid_id(cid) and not any(p["field"] == "id" for p in problems):
        problems.append({"field": "id", "problem": f"{cid!r} is not a valid id ({ID_RULE})"})
    metadata = obj.get("metadata")
    if isinstance(metadata, dict) and _deeper_than(metadata, MAX_METADATA_DEPTH):
        problems.append({"field": "metadata", "problem": f"nested deeper than {MAX_METADATA_DEPTH} levels"})
    created = obj.get("created_at")
    if isinstance(created, str) and not _is_datetime(created):
        problems.append({"field": "created_at", "problem": f"{created!r} is not an ISO 8601 date-time"})
    if not problems:
        subject, body = obj.get("subject", ""), obj.get("body", "")
        if not (subject.strip() or body.strip()):
            problems.append({"field": "subject", "problem": "missing text: subject and body are both blank"})
        elif len(subject) + len(body) > max_text_chars:
            problems.append({"field": "body", "problem": f"text longer than {max_text_chars} characters"})
    if problems:
        raise InvalidTicket(problems)
    client_id = obj.get("id")
    return Ticket(
        ticket_id=client_id or ticket_id or uuid.uuid4().hex[:16],
        subject=obj.get("subject", ""),
        body=obj.get("body", ""),
        customer=obj.get("customer"),
        channel=obj.get("channel"),
        created_at=obj.get("created_at"),
        metadata=obj.get("metadata") or {},
        client_id=bool(client_id),
    )


def _text(name: str, raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise InvalidTicket([{"field": name, "problem": f"not UTF-8 text (byte {exc.start})"}]) from None


def from_stream_entry(entry_id: str, fields: dict[bytes, bytes], max_text_chars: int = 20_000,
                      id_prefix: str = "s") -> Ticket:
    """Stream door. Accepts `data=<ticket JSON>` (the contract) or flat fields (handy from redis-cli).

    An entry without a client id gets one derived from its stream id, so a redelivery maps to the same ticket.
    Anything malformed (not UTF-8 included) raises InvalidTicket, which the runtime dead-letters with the reason.
    """
    derived = id_prefix + entry_id.replace("-", "_")
    door_id = None
    if b"ticket_id" in fields:
        # written by our HTTP door, but anyone can XADD it: it must be as safe as a client id
        door_id = _text("ticket_id", fields[b"ticket_id"])
        if not valid_id(door_id):
            raise InvalidTicket([{"field": "ticket_id", "problem": f"{door_id!r} is not a valid id ({ID_RULE})"}])
    if b"data" in fields:
        try:
            obj = orjson.loads(fields[b"data"])
        except orjson.JSONDecodeError as exc:
            raise InvalidTicket([{"field": "data", "problem": f"not valid JSON: {exc}"}]) from None
    else:
        names = {k: _text("(entry)", k) for k in fields if k != b"ticket_id"}
        obj = {name: _text(name, fields[k]) for k, name in names.items()}
        if "metadata" in obj:
            try:
                obj["metadata"] = orjson.loads(obj["metadata"])
            except orjson.JSONDecodeError:
                raise InvalidTicket([{"field": "metadata", "problem": "not valid JSON"}]) from None
    ticket = validate(obj, max_text_chars, ticket_id=derived)
    if door_id is not None and not ticket.client_id:
        ticket.ticket_id = door_id
    return ticket
