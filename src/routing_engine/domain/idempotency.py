"""The client id is an idempotency key over the ticket's body: the same id with the same body is one ticket, the
same id with another body is a conflict. Bodies compare by the sha256 of their canonical JSON (keys sorted at every
level), so a client that re-serialises its ticket in another key order still gets `duplicate`, not a conflict."""

from __future__ import annotations

import hashlib

import orjson


def canonical_json(obj) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def body_hash(canonical: bytes) -> str:
    """sha256 hex of a body's canonical JSON."""
    return hashlib.sha256(canonical).hexdigest()
