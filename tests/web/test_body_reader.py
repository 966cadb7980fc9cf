"""The webhook reads the whole body, however it arrives (several TCP segments, chunked), up to the limit; a body
over the limit is 413 with a JSON error naming the limit, whether or not it announced its length."""

from __future__ import annotations

import asyncio

import orjson
import pytest

TICKET = {"id": "seg-1", "subject": "Card not arrived", "body": "It has been two weeks and no card " * 20}


async def _raw_post(api, path: str, head: dict, parts: list[bytes], delay: float = 0.05) -> tuple[int, dict]:
    """POST over a plain socket, writing the body in `parts` with a pause between them (one TCP segment each)."""
    reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    lines = [f"POST {path} HTTP/1.1", f"Host: {api.client.host}", "Content-Type: application/json",
             "Connection: close", *(f"{k}: {v}" for k, v in head.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    for part in parts:
        await asyncio.sleep(delay)
        writer.write(part)
        await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head_raw, _, body = raw.partition(b"\r\n\r\n")
    status = int(head_raw.split(b" ", 2)[1])
    if b"chunked" in head_raw.lower():
        body = _unchunk(body)
    return status, orjson.loads(body)


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if not n:
            break
        out, body = out + rest[:n], rest[n + 2:]
    return out


def _split(raw: bytes, n: int) -> list[bytes]:
    step = -(-len(raw) // n)
    return [raw[i:i + step] for i in range(0, len(raw), step)]


def _chunked(parts: list[bytes]) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]


async def test_a_body_in_several_segments_is_read_whole(api):
    raw = orjson.dumps(TICKET)
    status, body = await _raw_post(api, "/v1/tickets", {"Content-Length": len(raw)}, _split(raw, 4))
    assert status == 202, body
    assert body["ticket_id"] == "seg-1"


async def test_a_chunked_body_in_several_segments_is_read_whole(api):
    raw = orjson.dumps(TICKET)
    status, body = await _raw_post(api, "/v1/tickets", {"Transfer-Encoding": "chunked"}, _chunked(_split(raw, 5)))
    assert status == 202, body


async def test_a_chunked_body_from_the_aiohttp_client(api):
    raw = orjson.dumps(TICKET)

    async def gen():
        for part in _split(raw, 6):
            await asyncio.sleep(0.02)
            yield part

    resp = await api.client.post("/v1/tickets", data=gen(), headers={"Content-Type": "application/json"})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["ticket_id"] == "seg-1"


async def test_a_large_batch_split_in_two_is_read_whole(api):
    items = [{"id": f"b-{i}", "subject": "Transfer missing", "body": f"my transfer {i} has not arrived yet " * 4}
             for i in range(1000)]
    raw = orjson.dumps(items)
    assert len(raw) > 2 * 65536  # bigger than what one read of the socket buffers
    status, body = await _raw_post(api, "/v1/tickets/batch", {"Content-Length": len(raw)}, _split(raw, 2), 0.1)
    assert status == 202, body
    assert [x["ticket_id"] for x in body["results"]] == [f"b-{i}" for i in range(1000)]


@pytest.mark.parametrize("chunked", [False, True])
async def test_over_the_limit_is_413_naming_the_limit(api, chunked):
    limit = api.s.max_body_bytes
    raw = orjson.dumps({"subject": "x", "body": "a" * limit})
    parts = _split(raw, 3)
    head = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": len(raw)}
    status, body = await _raw_post(api, "/v1/tickets", head, _chunked(parts) if chunked else parts)
    assert status == 413, body
    err = body["error"]
    assert err["code"] == "payload_too_large" and err["limit"] == limit and str(limit) in err["message"], err
