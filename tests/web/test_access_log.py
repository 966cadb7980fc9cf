"""The access log: one structlog line per request with method, path without its query string (it may carry
secrets), status, ms and client."""

from __future__ import annotations

from structlog.testing import capture_logs


async def test_one_line_per_request_without_the_query(api):
    with capture_logs() as logs:
        await api.client.get("/v1/tickets?limit=5&token=leak-me")
        await api.client.get("/v1/tickets/nope")
    lines = [x for x in logs if x["event"] == "http.request"]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [("GET", "/v1/tickets", 200),
                                                                       ("GET", "/v1/tickets/nope", 404)]
    assert all(x["ms"] >= 0 and x["client"] == "127.0.0.1" for x in lines)
    assert "leak-me" not in repr(logs)


async def test_a_redirect_is_logged_with_its_status(api):
    with capture_logs() as logs:
        await api.client.get("/logout", allow_redirects=False)
    assert [(x["path"], x["status"]) for x in logs if x["event"] == "http.request"] == [("/logout", 303)]
