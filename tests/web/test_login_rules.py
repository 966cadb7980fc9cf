"""The login form: no token in the URL, failures throttled per client address (429 + Retry-After, even for the
right token meanwhile), and a cookie that is HttpOnly, SameSite=Strict and Secure when the request came over TLS
(X-Forwarded-Proto counts only with ROUTING_TRUST_PROXY)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from routing_engine.infra.keys import Keys

from fixtures import InProcessPipeline

TOKEN = "rd-tok"


async def _guarded(settings, r, **extra):
    return InProcessPipeline(replace(settings, read_token=TOKEN, ingest_token="in-tok", **extra), r, stages=[])


async def _login(p, token: str, **headers):
    return await p.client.post("/login", data={"token": token}, headers=headers, allow_redirects=False)


async def test_a_token_in_the_url_is_refused(settings, r):
    async with await _guarded(settings, r) as p:
        resp = await p.client.get("/login", params={"token": TOKEN}, allow_redirects=False)
        assert resp.status == 400 and "routing_token" not in resp.cookies
        assert (await p.client.get("/login")).status == 200  # the form itself


async def test_five_failures_then_429_with_retry_after(settings, r):
    async with await _guarded(settings, r) as p:
        for _ in range(5):
            assert (await _login(p, "guess")).status == 401
        resp = await _login(p, TOKEN)  # even the right token waits: otherwise guessing goes on
        assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
        assert "routing_token" not in resp.cookies


async def test_the_throttle_is_per_client_address_behind_a_trusted_proxy(settings, r):
    async with await _guarded(settings, r, trust_proxy=True) as p:
        for _ in range(5):
            await _login(p, "guess", **{"X-Forwarded-For": "203.0.113.7"})
        assert (await _login(p, "guess", **{"X-Forwarded-For": "203.0.113.7"})).status == 429
        assert (await _login(p, TOKEN, **{"X-Forwarded-For": "198.51.100.2"})).status == 303


async def test_an_ingest_token_cannot_log_in(settings, r):
    async with await _guarded(settings, r) as p:
        assert (await _login(p, "in-tok")).status == 401


@pytest.mark.parametrize("trust, proto, secure", [(False, None, False), (False, "https", False),
                                                  (True, "https", True), (True, "http", False)])
async def test_cookie_flags(settings, r, trust, proto, secure):
    async with await _guarded(settings, r, trust_proxy=trust) as p:
        resp = await _login(p, TOKEN, **({"X-Forwarded-Proto": proto} if proto else {}))
        assert resp.status == 303
        raw = resp.headers["Set-Cookie"]
        assert "HttpOnly" in raw and "SameSite=Strict" in raw
        assert ("Secure" in raw) is secure, raw


async def test_a_login_form_aiohttp_cannot_parse_is_a_400_page_not_a_500(settings, r):
    """Found by the HTTP fuzz: multipart/form-data without a boundary made request.post() raise (500)."""
    s = replace(settings, read_token="r-token")
    async with InProcessPipeline(s, r, stages=[]) as p:
        resp = await p.client.post("/login", data=b"token=x", headers={"Content-Type": "multipart/form-data"})
        assert resp.status == 400
        assert "could not be read" in await resp.text()


async def test_failures_count_across_api_processes_and_restarts(settings, r):
    """Behind a load balancer each API process counted alone (5 x N tries a minute) and a restart forgot: the
    count is in Redis now, so 3 failures on one process and 2 on another exhaust the address's five."""
    async with await _guarded(settings, r) as a, await _guarded(settings, r) as b:
        for _ in range(3):
            assert (await _login(a, "guess")).status == 401
        for _ in range(2):
            assert (await _login(b, "guess")).status == 401
        resp = await _login(a, TOKEN)
        assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
    async with await _guarded(settings, r) as restarted:
        assert (await _login(restarted, TOKEN)).status == 429
    k = Keys(settings.prefix)
    keys = [x async for x in r.scan_iter(match=k.login_failures("*"))]
    assert len(keys) == 1 and 0 < await r.pttl(keys[0]) <= 61_000  # one hashed address, gone after the window
    assert b"127.0.0.1" not in keys[0]


async def test_with_redis_away_the_process_still_counts_its_own_failures(prefix):
    """Redis refusing connections must neither open the form to guessing nor fail the login page: each process's
    own count holds meanwhile."""
    import redis.asyncio as aioredis

    from routing_engine.web.throttle import SharedThrottle

    away = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    t, k = SharedThrottle(limit=5, window_s=60.0), Keys(prefix)
    try:
        for _ in range(5):
            assert await t.retry_after(away, k, "198.51.100.9") == 0.0
            await t.failed(away, k, "198.51.100.9")
        assert 59 <= await t.retry_after(away, k, "198.51.100.9") <= 60
        assert await t.retry_after(away, k, "198.51.100.10") == 0.0  # per address still
    finally:
        await away.aclose()
