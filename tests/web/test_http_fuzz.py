"""HTTP fuzz: thousands of generated requests against the real app and the real Redis, over every route in
/openapi.json plus unknown ones: random methods, hostile ids ('..', unicode, very long, ':' and key-like), query
strings, JSON bodies of every shape (deep nesting, huge strings, wrong types, arrays for objects, not JSON at all),
Content-Type, tokens (non-ASCII too), cookies and X-Routing-Signature garbage, both with no token configured and
with scoped tokens plus a webhook secret. Every answer must be < 500, a JSON error on the JSON routes' 4xx, and
arrive within a timeout. Runs are reproducible (derandomize): a failure here fails the same way in CI."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
from dataclasses import dataclass, field, replace

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from yarl import URL

from fixtures import InProcessPipeline

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 2000))  # per mode (two modes); sized for ~60 s on 2 cores
TIMEOUT_S = 10.0  # one request; a hang fails the test instead of stalling the suite
TOKENS = {"ingest": "fz-in", "read": "fz-rd", "operate": "fz-op"}
SECRET = "fz-secret"
# documented in /openapi.json (each with its method); test_routes_cover_the_openapi_doc keeps this list honest
ROUTES = [("POST", "/v1/tickets"), ("GET", "/v1/tickets"), ("POST", "/v1/tickets/batch"),
          ("GET", "/v1/tickets/{ticket_id}"), ("POST", "/v1/tickets/{ticket_id}/resolve"), ("GET", "/v1/incidents"),
          ("GET", "/v1/incidents/{incident_id}"), ("POST", "/v1/incidents/{incident_id}/resolve"),
          ("POST", "/v1/incidents/{incident_id}/split"), ("POST", "/v1/incidents/{incident_id}/move-out"),
          ("POST", "/v1/incidents/{incident_id}/move"), ("POST", "/v1/incidents/{incident_id}/merge"),
          ("GET", "/v1/events"), ("GET", "/"), ("GET", "/login"), ("POST", "/login"), ("GET", "/v1/agents"),
          ("PUT", "/v1/agents/{agent_id}"), ("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/openapi.json")]
LOOSE = ":.@!$&'()*+,;=~-_"  # left raw in a path segment by the loose escaping
NOT_JSON = ("/", "/login", "/logout", "/dashboard/")  # HTML pages: their 4xx is a page for a person


@dataclass
class Req:
    method: str
    path: str  # already percent-encoded
    query: list = field(default_factory=list)
    headers: dict = field(default_factory=dict)
    body: bytes | None = None
    auth: str = ""  # none, garbage, or a scope whose token to send
    sign: str = ""  # "", "valid" or a garbage header value


# -- values ---------------------------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_header_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=60)  # a client cannot send CR/LF
_huge = st.builds(lambda ch, n: ch * n, st.sampled_from(["a", "é", "😀", "\\", '"', " "]),
                  st.integers(0, 70_000))  # straddles the 64 KiB body limit
_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True),  # valid
    st.sampled_from(["..", ".", "../..", "a..b", ".hidden", "a:b", "{re}:ingest", "re}:x{", "*", "?", "%", "%00",
                     "\x00", "é", "😀", "-", "_", "a/b", "t1", "nope", " ", "null", "0", "-1", "ticket:1"]),
    # very long, yet within aiohttp's 8 KiB request line (escaped 'é' is 6 bytes; test_over_long_url covers beyond)
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", ":", "."]), st.integers(60, 1300)),
    _text.filter(bool),
)
_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), _text, _huge)
_json = st.recursive(_json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                           st.dictionaries(_text, inner, max_size=5)), max_leaves=20)


def _field(good):
    """A ticket or agent field: mostly of the right kind (so requests get past the schema), often not."""
    return st.one_of(good, good, good, _json)


_ticket = st.fixed_dictionaries({"subject": _field(_text), "body": _field(st.one_of(_text, _text, _huge))}, optional={
    "id": _field(_ids),
    "customer": _field(_text), "channel": _field(st.sampled_from(["email", "chat", "phone", "web"])),
    "created_at": _field(st.one_of(st.floats(0, 2e9), st.sampled_from(["2024-01-01T00:00:00Z", "yesterday"]))),
    "metadata": _json,
})
_agent = st.fixed_dictionaries({}, optional={
    "name": _field(_text), "capacity": _field(st.integers(-5, 10**12)), "active": _field(st.booleans()),
    "skills": _field(st.dictionaries(_text, st.one_of(st.floats(-2, 2, allow_nan=False), _json_scalar), max_size=4)),
})


def _nested(n: int, kind: str) -> bytes:
    """JSON nested n deep, built as text (json.dumps would hit its own recursion limit first)."""
    if kind == "list":
        return b"[" * n + b"]" * n
    if kind == "dict":
        return b'{"a":' * n + b"1" + b"}" * n
    return b'{"subject":"s","body":"b","metadata":' + b'{"a":' * n + b"1" + b"}" * n + b"}"  # in the ticket


_bodies = st.one_of(
    st.none(),
    _ticket.map(lambda d: json.dumps(d).encode()),
    st.lists(_ticket, max_size=8).map(lambda d: json.dumps(d).encode()),  # a batch, or an array for an object
    _agent.map(lambda d: json.dumps(d).encode()),
    _json.map(lambda v: json.dumps(v).encode()),  # any JSON: wrong types at the top
    st.builds(_nested, st.integers(1, 3000), st.sampled_from(["list", "dict", "ticket"])),
    st.binary(max_size=300),  # not JSON, maybe not UTF-8
    st.sampled_from([b"", b"{", b"[1,", b'{"subject": "s", "body": "b"', b"\xff\xfe", b"NaN", b"1e999",
                     b'{"subject": "s", "body": "b", "subject": 1}', b'"\\ud800"']),
)
# a ticket the contract accepts (ids from a small pool, so duplicates and 409 conflicts turn up too)
_good_ticket = st.fixed_dictionaries({"subject": _text.filter(str.strip), "body": _text}, optional={
    "id": st.sampled_from([f"fz-{i}" for i in range(20)]), "customer": _text,
    "channel": st.sampled_from(["email", "chat"]), "created_at": st.just("2024-01-01T00:00:00Z"),
    "metadata": st.dictionaries(_text, _json_scalar, max_size=3)})
_some_ticket = st.integers(0, 2).flatmap(lambda i: _ticket if i == 0 else _good_ticket)
_regroup = st.fixed_dictionaries({}, optional={"ticket_ids": st.one_of(st.lists(_ids, max_size=4), _json_scalar),
                                              "to": st.one_of(_ids, _json_scalar),
                                              "into": st.one_of(_ids, _json_scalar)})
_FITTING = {"/v1/tickets": _some_ticket.map(lambda d: json.dumps(d).encode()),
            "/v1/tickets/batch": st.lists(_some_ticket, min_size=1, max_size=8).map(lambda d: json.dumps(d).encode()),
            "/v1/agents/{agent_id}": _agent.map(lambda d: json.dumps(d).encode()),
            **{f"/v1/incidents/{{incident_id}}/{op}": _regroup.map(lambda d: json.dumps(d).encode())
               for op in ("split", "move-out", "move", "merge")}}
_content_types = st.one_of(st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                            "application/x-www-form-urlencoded", "multipart/form-data", "",
                                            "application/json; charset=latin-1", "APPLICATION/JSON"]), _header_text)


@st.composite
def requests(draw) -> Req:
    if draw(st.integers(0, 9)) == 0:  # an unknown route, or a known one with hostile segments
        segments = draw(st.lists(st.one_of(_ids, st.sampled_from(["v1", "tickets", "..", "", "batch"])), max_size=5))
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]))
        path = template = "/v1/" + "/".join(urllib.parse.quote(s, safe="") for s in segments)  # "//x": a host
    else:
        method, template = draw(st.sampled_from(ROUTES))
        if draw(st.integers(0, 7)) == 0:
            method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]))  # wrong method
        path = template
        for name in ("{ticket_id}", "{incident_id}", "{agent_id}"):
            if name in path:
                raw = draw(_ids)
                # fully escaped, or as loose as a client can send it (':' '..' '*' literal; bytes beyond ASCII and
                # controls are never legal raw on the request line, so a real client escapes those)
                path = path.replace(name, urllib.parse.quote(raw, safe=draw(st.sampled_from(["", LOOSE]))))
    query = draw(st.lists(st.tuples(st.sampled_from(["status", "limit", "types", "token", "x", ""]) | _text,
                                    st.sampled_from(["assigned", "queued", "dead", "-1", "0", "100000", "abc"])
                                    | _text), max_size=3))
    # within aiohttp's 8,190-byte request line, query included (beyond it the protocol answers before the app, in
    # plain text: test_over_long_url); a long escaped id with a long query crossed it with hypothesis 6.170
    line = f"{method} {URL(path, encoded=True).with_query(query) if query else path} HTTP/1.1"
    assume(len(line.encode()) < 8000)
    headers = {}
    # mostly JSON, so bodies reach the schema and Redis (an explicit coin: one_of's branches are not drawn evenly)
    ct = draw(st.integers(0, 3))
    if ct:
        headers["Content-Type"] = "application/json" if ct > 1 else draw(_content_types)
    if draw(st.integers(0, 4)) == 0:
        headers["Last-Event-ID"] = draw(_header_text)
    if draw(st.integers(0, 4)) == 0:
        headers["Cookie"] = "routing_token=" + urllib.parse.quote(draw(_header_text))
    auth = draw(st.sampled_from(["", "garbage", "ingest", "read", "operate", "operate", "operate"]))
    if auth == "garbage":
        headers["Authorization"] = draw(st.one_of(_header_text, _header_text.map(lambda t: "Bearer " + t)))
    sign = draw(st.one_of(st.just(""), st.just("valid"), st.just("valid"), _header_text,
                          st.builds(lambda t, v: f"t={t},v1={v}", st.integers(-(2**40), 2**40), _header_text)))
    fitting = _FITTING.get(template, _bodies)  # half the time the body the route expects, so it gets past the door
    return Req(method, path, query, headers, draw(fitting if draw(st.booleans()) else _bodies), auth, sign)


# -- the app --------------------------------------------------------------------------------------------------------

@pytest.fixture(params=["open", "guarded"])
def app(request, settings):
    """The API on its own event loop (hypothesis drives the test synchronously, one example at a time)."""
    s = settings
    if request.param == "guarded":
        s = replace(settings, ingest_token=TOKENS["ingest"], read_token=TOKENS["read"],
                    operate_token=TOKENS["operate"], webhook_secret=SECRET)
    runner = asyncio.Runner()
    r = aioredis.from_url(s.redis_url)
    pipe = InProcessPipeline(s, r, stages=[])
    runner.run(pipe.__aenter__())
    try:
        yield runner, pipe.client, request.param
    finally:
        runner.run(pipe.__aexit__(None, None, None))
        runner.run(r.aclose())
        runner.close()


async def _send(client, req: Req, mode: str):
    from routing_engine.web import signatures

    headers = dict(req.headers)
    if req.auth in TOKENS:
        headers["Authorization"] = f"Bearer {TOKENS[req.auth]}"
    if req.sign == "valid":
        headers[signatures.HEADER] = signatures.sign(SECRET, req.body or b"")
    elif req.sign:
        headers[signatures.HEADER] = req.sign
    url = URL(req.path, encoded=True)
    if req.query:
        url = url.with_query(req.query)
    resp = await client.request(req.method, url, data=req.body, headers=headers, allow_redirects=False)
    try:
        if resp.content_type == "text/event-stream":  # the SSE feed never ends: its headers are the answer
            return resp.status, resp.headers, None
        return resp.status, resp.headers, await resp.read()
    finally:
        resp.close()


def _resolved(raw: str) -> str:
    """The path the server routes: dot segments removed (RFC 3986 5.2.4, as aiohttp does), then unescaped."""
    out: list[str] = []
    segments = raw.split("/")[1:]
    for i, seg in enumerate(segments):
        if seg == "..":
            out = out[:-1]
        elif seg != ".":
            out.append(seg)
        if seg in (".", "..") and i == len(segments) - 1:
            out.append("")  # "/a/.." is "/"
    return urllib.parse.unquote("/" + "/".join(out))


def _is_json_route(path: str) -> bool:
    return not any(path == p or (p.endswith("/") and p != "/" and path.startswith(p)) for p in NOT_JSON)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(req=requests())
def test_no_request_gets_a_5xx_or_hangs(app, req):
    runner, client, mode = app
    try:
        status, headers, body = runner.run(asyncio.wait_for(_send(client, req, mode), TIMEOUT_S))
    except TimeoutError:
        pytest.fail(f"no answer within {TIMEOUT_S} s: {req.method} {req.path[:200]}")
    event(f"status {status // 100}xx" if status not in (202, 401, 403, 404, 405, 413, 415, 422) else f"status {status}")
    where = f"{req.method} {req.path[:200]} ({mode}) -> {status}: {(body or b'')[:300]!r}"
    assert status < 500, where
    path = _resolved(req.path)
    if 400 <= status < 500 and req.method != "HEAD" and _is_json_route(path):
        assert headers.get("Content-Type", "").startswith("application/json"), where
        doc = json.loads(body)
        # the one error shape, {"error": {"code", "message", ...}}; a batch none of whose items got in answers
        # each item's own error instead (documented: {"results": [{"index", "error"}, ...]})
        errors = [item["error"] for item in doc["results"]] if "results" in doc else [doc["error"]]
        for err in errors:
            assert isinstance(err["code"], str) and isinstance(err["message"], str), where


async def test_over_long_url_is_a_4xx_not_a_5xx(api):
    """Past the 8 KiB request line aiohttp's parser answers before the app (plain text, from the protocol)."""
    resp = await api.client.get("/v1/tickets/" + "a" * 9000)
    assert resp.status in (400, 414)


def test_routes_cover_the_openapi_doc():
    """The fuzz covers every documented route: a route added to the doc and not here fails this test."""
    from routing_engine.web.openapi import openapi_doc

    documented = {(m.upper(), p) for p, ops in openapi_doc()["paths"].items() for m in ops}
    assert documented <= set(ROUTES), documented - set(ROUTES)
