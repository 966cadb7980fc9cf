"""The API token check shared by the Bearer/cookie middleware and the dashboard's login form.

hmac.compare_digest refuses str holding anything but ASCII (TypeError, a 500), so both sides are compared as
UTF-8 bytes; surrogates a client smuggled in (undecodable header bytes) are encoded as they are, never raised on.
"""

from __future__ import annotations

import hmac


def token_matches(given: str, token: str) -> bool:
    if not given or not token:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))
