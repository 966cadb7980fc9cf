"""Webhook signatures: with ROUTING_WEBHOOK_SECRET set, the ticket doors need X-Routing-Signature, an HMAC-SHA256 of
"<t>.<raw body>" with t within the tolerance; a valid one stands in for the ingest token. Two secrets verify during
a rotation. Refusals are 401 naming the problem."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import replace

import pytest

from routing_engine.web.signatures import SignatureError, sign, verify

from fixtures import InProcessPipeline

# Odd spacing and key order on purpose: the MAC is over the bytes as sent, not a re-serialisation.
BODY = b'{ "subject":"ATM ate my card",   "body" : "twice",  "id":"sig-1" }'


@pytest.fixture
async def signed(settings, r):
    s = replace(settings, webhook_secret="new-secret, old-secret", ingest_token="in-tok", read_token="rd-tok",
                webhook_tolerance_s=300)
    async with InProcessPipeline(s, r, stages=[]) as p:
        yield p


async def _post(p, body: bytes, signature: str | None, path: str = "/v1/tickets", **headers):
    if signature is not None:
        headers["X-Routing-Signature"] = signature
    return await p.client.post(path, data=body, headers={"Content-Type": "application/json", **headers})


def test_sign_matches_the_documented_recipe():
    t = 1_700_000_000
    expected = hmac.new(b"k", f"{t}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign("k", BODY, t) == f"t={t},v1={expected}"
    verify(sign("k", BODY, t), BODY, [b"k"], 300, now=t + 299)
    with pytest.raises(SignatureError) as exc:
        verify(sign("k", BODY, t), BODY, [b"k"], 300, now=t + 301)
    assert exc.value.code == "signature_expired"


async def test_a_valid_signature_stands_in_for_the_ingest_token(signed):
    resp = await _post(signed, BODY, sign("new-secret", BODY))
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["ticket_id"] == "sig-1"
    batch = b"[" + BODY + b"]"
    resp = await _post(signed, batch, sign("new-secret", batch), path="/v1/tickets/batch")
    assert resp.status == 202 and (await resp.json())["results"][0]["duplicate"] is True


async def test_the_old_secret_still_verifies_during_rotation(signed):
    resp = await _post(signed, BODY, sign("old-secret", BODY))
    assert resp.status == 202


@pytest.mark.parametrize("case, code", [
    ("missing", "signature_missing"), ("malformed", "signature_malformed"), ("stale", "signature_expired"),
    ("future", "signature_expired"), ("other_secret", "signature_mismatch"), ("body_changed", "signature_mismatch"),
])
async def test_a_bad_signature_is_401_naming_the_problem(signed, case, code):
    now = int(time.time())
    header = {
        "missing": None, "malformed": "v1=abc", "stale": sign("new-secret", BODY, now - 301),
        "future": sign("new-secret", BODY, now + 400), "other_secret": sign("nope", BODY),
        "body_changed": sign("new-secret", BODY.replace(b"twice", b"once")),
    }[case]
    resp = await _post(signed, BODY, header)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == code
    assert await signed.r.exists(signed.k.ticket("sig-1")) == 0  # nothing got in


async def test_with_a_secret_the_ingest_token_alone_is_not_enough(signed):
    resp = await _post(signed, BODY, None, Authorization="Bearer in-tok")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "signature_missing"
    # the signature replaces the ingest token on the ticket doors only: reads still need the read token
    resp = await signed.client.get("/v1/tickets", headers={"X-Routing-Signature": sign("new-secret", b"")})
    assert resp.status == 401
