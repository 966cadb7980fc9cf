"""Webhook signatures in the Stripe/GitHub style: `X-Routing-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`,
the HMAC of "<t>.<raw body>" under ROUTING_WEBHOOK_SECRET (a comma list: during a rotation both secrets verify).

The timestamp inside the signed text bounds replays to the tolerance window; comparisons are constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Routing-Signature"


class SignatureError(Exception):
    """Why a signature was refused; `code` names the problem in the 401 body."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def secrets_of(raw: str) -> list[bytes]:
    return [s.strip().encode() for s in raw.split(",") if s.strip()]


def _mac(secret: bytes, t: str, body: bytes) -> str:
    return hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    """The header value a sender puts on `body` (what the README's example computes)."""
    ts = str(int(time.time()) if t is None else t)
    return f"t={ts},v1={_mac(secret.encode(), ts, body)}"


def verify(header: str | None, body: bytes, secrets: list[bytes], tolerance_s: int, now: float | None = None) -> None:
    """Raise SignatureError unless `header` holds a timestamp within tolerance and a v1 MAC of `body` under one of
    `secrets`. Several v1 entries are allowed (a sender mid-rotation signs with both)."""
    if not header:
        raise SignatureError("signature_missing", f"{HEADER} header is required (t=<unix seconds>,v1=<hex hmac>)")
    ts, macs = None, []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            ts = value
        elif key == "v1" and value:
            macs.append(value.strip().lower())
    if ts is None or not ts.isdigit() or not macs:
        raise SignatureError("signature_malformed", f"{HEADER} must be t=<unix seconds>,v1=<hex hmac>")
    now = time.time() if now is None else now
    if abs(now - int(ts)) > tolerance_s:
        raise SignatureError("signature_expired", f"signature timestamp is more than {tolerance_s} s from the "
                                                  "server's clock (replayed, or the sender's clock is off)")
    expected = [_mac(secret, ts, body).encode() for secret in secrets]
    # every pair is compared (no early exit) so the time taken does not say which secret or MAC came close
    ok = False
    for given in macs:
        g = given.encode("utf-8", "surrogatepass")
        for e in expected:
            ok |= hmac.compare_digest(g, e)
    if not ok:
        raise SignatureError("signature_mismatch", "signature does not match the body under any configured secret")
