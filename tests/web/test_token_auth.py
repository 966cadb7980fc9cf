"""With ROUTING_API_TOKEN set, any token a client sends (non-ASCII included) is compared as UTF-8 bytes: a wrong
one is 401 (the login form shows its error), never 500; the right one works in each of the three places."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from fixtures import InProcessPipeline

TOKEN = "s3cret-tökén"
WRONG = ["ñope", "s3cret-token", "日本語", "s3cret-tökén\u200b", "\ud800x"]


@pytest.fixture
async def guarded(settings, r):
    async with InProcessPipeline(replace(settings, api_token=TOKEN), r, stages=[]) as p:
        yield p


async def _raw_get(p, path: str, header: bytes) -> int:
    """A GET with one raw header line (bytes exactly as given), over a plain socket."""
    reader, writer = await asyncio.open_connection(p.client.host, p.client.port)
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(raw.split(b" ", 2)[1])


@pytest.mark.parametrize("wrong", WRONG)
@pytest.mark.parametrize("where", ["bearer", "cookie"])
async def test_a_wrong_non_ascii_token_is_401(guarded, wrong, where):
    value = wrong.encode("utf-8", "surrogatepass")
    header = b"Authorization: Bearer " + value if where == "bearer" else b"Cookie: routing_token=" + value
    assert await _raw_get(guarded, "/v1/agents", header) == 401


@pytest.mark.parametrize("where", ["bearer", "cookie"])
async def test_the_right_non_ascii_token_is_accepted(guarded, where):
    value = TOKEN.encode()
    header = b"Authorization: Bearer " + value if where == "bearer" else b"Cookie: routing_token=" + value
    assert await _raw_get(guarded, "/v1/agents", header) == 200
    assert await _raw_get(guarded, "/v1/agents", b"X-None: 1") == 401


@pytest.mark.parametrize("wrong", WRONG[:4])
async def test_the_login_form_shows_its_error_for_a_wrong_non_ascii_token(guarded, wrong):
    resp = await guarded.client.post("/login", data={"token": wrong}, allow_redirects=False)
    assert resp.status == 401
    assert "wrong token" in await resp.text()
    # a token in the URL is refused outright, right or wrong (GET /login?token= is gone)
    resp = await guarded.client.get("/login", params={"token": TOKEN}, allow_redirects=False)
    assert resp.status == 400 and "routing_token" not in resp.cookies


async def test_the_login_form_takes_the_right_non_ascii_token(guarded):
    resp = await guarded.client.post("/login", data={"token": TOKEN}, allow_redirects=False)
    assert resp.status == 303
    assert resp.cookies["routing_token"].value  # the cookie the dashboard then rides on
