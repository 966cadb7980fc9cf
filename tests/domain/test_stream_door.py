"""The stream door turns every malformed entry into InvalidTicket (which the runtime dead-letters with the reason):
unsafe ids, the HTTP door's `ticket_id` field forged with one, and bytes that are not UTF-8 anywhere."""

from __future__ import annotations

import orjson
import pytest

from routing_engine.domain.ticket import from_stream_entry
from routing_engine.errors import InvalidTicket

ENTRY = "1795641656466-0"
TEXT = {"subject": "card lost", "body": "I lost my card"}


def _fields(**kw) -> dict[bytes, bytes]:
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in kw.items()}


def test_good_entries_still_decode():
    assert from_stream_entry(ENTRY, _fields(data=orjson.dumps({**TEXT, "id": "ext-42"}))).ticket_id == "ext-42"
    assert from_stream_entry(ENTRY, _fields(data=orjson.dumps(TEXT), ticket_id="T-1002")).ticket_id == "T-1002"
    assert from_stream_entry(ENTRY, _fields(**TEXT)).ticket_id == "s1795641656466_0"
    assert from_stream_entry(ENTRY, _fields(**TEXT), id_prefix="u").ticket_id == "u1795641656466_0"


@pytest.mark.parametrize("fields, field", [
    (_fields(data=orjson.dumps({**TEXT, "id": "X:m"})), "id"),
    (_fields(data=orjson.dumps({**TEXT, "id": ".."})), "id"),
    (_fields(**TEXT, id="X:m"), "id"),
    (_fields(data=orjson.dumps(TEXT), ticket_id="X:m"), "ticket_id"),
    (_fields(data=orjson.dumps(TEXT), ticket_id="a/../b"), "ticket_id"),
    (_fields(data=orjson.dumps(TEXT), ticket_id=""), "ticket_id"),
    (_fields(data=orjson.dumps(TEXT), ticket_id="x" * 65), "ticket_id"),
])
def test_unsafe_ids_are_invalid(fields, field):
    with pytest.raises(InvalidTicket) as exc:
        from_stream_entry(ENTRY, fields)
    assert field in {p["field"] for p in exc.value.problems}, exc.value.problems


@pytest.mark.parametrize("fields, field", [
    (_fields(data=orjson.dumps(TEXT), ticket_id=b"T-\xff\xfe"), "ticket_id"),
    (_fields(data=b'{"subject": "caf\xe9 card lost"}'), "data"),
    (_fields(data=b'{"subject": "x", "id": "\xc3"}'), "data"),
    (_fields(subject=b"caf\xe9", body="lost card"), "subject"),
    (_fields(subject="card lost", id=b"\xff"), "id"),
    ({b"subject": b"card lost", b"\xff\xfe": b"x"}, "(entry)"),
    (_fields(subject="card lost", metadata=b'{"a": "\xff"}'), "metadata"),
])
def test_bytes_that_are_not_utf8_are_invalid(fields, field):
    with pytest.raises(InvalidTicket) as exc:
        from_stream_entry(ENTRY, fields)
    problems = exc.value.problems
    assert field in {p["field"] for p in problems} and "UTF-8" in str(exc.value), problems
