"""Metadata may nest 32 levels; deeper is 422 naming `metadata` (never 5xx), and JSON deeper than the parser takes
is 422 naming the limit: nothing a producer sends can make the API fail."""

from __future__ import annotations

import orjson
import pytest

from routing_engine.domain.ticket import MAX_METADATA_DEPTH


def _nested(depth: int) -> dict:
    """An object `depth` levels deep: {} is 1, {"a": {}} is 2."""
    m: dict = {}
    for _ in range(depth - 1):
        m = {"a": m}
    return m


def _nested_list(depth: int) -> dict:
    """The same through lists: {"a": [[...]]}."""
    inner: list = []
    for _ in range(depth - 2):
        inner = [inner]
    return {"a": inner}


async def test_metadata_at_the_limit_is_accepted(api):
    assert MAX_METADATA_DEPTH == 32
    resp = await api.client.post("/v1/tickets", json={"subject": "card lost", "metadata": _nested(32)})
    assert resp.status == 202, await resp.text()


@pytest.mark.parametrize("depth", [33, 40, 300, 1000])
@pytest.mark.parametrize("shape", [_nested, _nested_list])
async def test_deeper_metadata_is_422_naming_metadata(api, r, depth, shape):
    raw = orjson.dumps({"subject": "card lost", "metadata": shape(depth)}) if depth < 255 else \
        b'{"subject": "card lost", "metadata": ' + _deep_raw(shape, depth) + b"}"
    resp = await api.client.post("/v1/tickets", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 422, await resp.text()
    err = (await resp.json())["error"]
    assert [p["field"] for p in err["problems"]] == ["metadata"], err
    assert "32" in err["problems"][0]["problem"]
    assert await r.xlen(api.k.ingest) == 0


def _deep_raw(shape, depth: int) -> bytes:
    # orjson will not write more than 255 levels, so deep bodies are written by hand
    if shape is _nested:
        return b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1)
    return b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


async def test_deep_metadata_in_a_batch_is_that_items_error(api):
    raw = b'[{"subject": "card lost"}, {"subject": "card lost", "metadata": ' + _deep_raw(_nested, 300) + b"}]"
    resp = await api.client.post("/v1/tickets/batch", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 202, await resp.text()
    ok, bad = (await resp.json())["results"]
    assert "ticket_id" in ok and [p["field"] for p in bad["error"]["problems"]] == ["metadata"]


@pytest.mark.parametrize("path", ["/v1/tickets", "/v1/tickets/batch"])
async def test_json_deeper_than_the_parser_takes_is_422_naming_the_limit(api, path):
    raw = b'{"subject": "card lost", "metadata": ' + _deep_raw(_nested, 2000) + b"}"
    resp = await api.client.post(path, data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 422, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == "too_deep" and err["limit"] == 1024 and "1024" in err["message"], err
