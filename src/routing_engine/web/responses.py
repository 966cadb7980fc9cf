"""JSON responses and request parsing shared by the route tables: one error shape, bodies read whole."""

from __future__ import annotations

import orjson
from aiohttp import web

from ..domain.ticket import MAX_METADATA_DEPTH
from ..errors import BadRequest, PayloadTooLarge, TooDeep, UnsupportedMediaType
from .state import state

MAX_BATCH = 1000
PARSER_DEPTH = 1024  # orjson's own limit: deeper JSON is refused while parsing


def jresponse(data, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def error_body(code: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, **{k: v for k, v in extra.items() if v is not None}}}


RAW_BODY = web.RequestKey("raw_body", bytes)  # the body once read (the signature check reads it before the handler)


async def read_body(request: web.Request) -> bytes:
    """The whole body (in however many segments or chunks it arrives) up to the door's limit, exactly as received;
    read once and kept on the request."""
    if RAW_BODY in request:
        return request[RAW_BODY]
    s = state(request).settings
    ctype = request.content_type
    if ctype != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {ctype or 'none'}")
    limit = s.max_body_bytes * (MAX_BATCH if request.path.endswith("/batch") else 1)
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body is {request.content_length} bytes; the limit is {limit}", limit=limit)
    raw = bytearray()
    # content.read(n) returns only what is buffered now; iterating waits for the rest, chunked or not
    async for chunk in request.content.iter_any():
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", limit=limit)
    request[RAW_BODY] = bytes(raw)
    return request[RAW_BODY]


async def read_json(request: web.Request):
    """The body (read_body), parsed."""
    raw = await read_body(request)
    if not raw.strip():
        raise BadRequest("empty body: expected a JSON object", field="(body)")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise TooDeep(f"JSON nested deeper than {PARSER_DEPTH} levels (ticket metadata may nest "
                          f"{MAX_METADATA_DEPTH})", field="(body)", limit=PARSER_DEPTH) from None
        raise BadRequest(f"invalid JSON: {exc}", field="(body)") from None


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer", field=name) from None
    if not lo <= v <= hi:
        raise BadRequest(f"{name} must be in {lo}..{hi}", field=name)
    return v
