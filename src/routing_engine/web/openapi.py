"""The OpenAPI 3.1 document served at /openapi.json (the ticket schema is the one in streams/)."""

from __future__ import annotations

import functools

import orjson

from .. import __version__
from ..resources import streams_dir

_ERR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _err(desc: str) -> dict:
    return {**_ERR, "description": desc}


def _json(desc: str, schema: dict | None = None) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


_SCOPES = ("A token's scope: ingest (ROUTING_INGEST_TOKEN) may POST /v1/tickets and /batch only; read "
           "(ROUTING_READ_TOKEN) the GET endpoints, the SSE feed, the dashboard and /metrics; operate "
           "(ROUTING_OPERATE_TOKEN, or ROUTING_API_TOKEN) everything. With no token configured (loopback only) the "
           "API is open.")
_INGEST_SECURITY = [{"bearer": []}, {"cookie": []}, {"webhookSignature": []}]


def _secured(paths: dict) -> dict:
    """Each guarded operation gets its 401 (no or wrong token, bad signature) and 403 (wrong scope, named)."""
    for path, ops in paths.items():
        for method, op in ops.items():
            if op.get("security") == [] or path in ("/login", "/openapi.json", "/healthz"):
                continue
            scope = "ingest" if path in ("/v1/tickets", "/v1/tickets/batch") and method == "post" else \
                "read" if method == "get" else "operate"
            op["description"] = (op.get("description", "") + f" Needs the {scope} scope.").strip()
            op.setdefault("responses", {})
            op["responses"].setdefault("401", _err("unauthorized: no or wrong token"
                                                   + ("; or a missing, malformed, expired or mismatched webhook "
                                                      "signature (signature_*)" if scope == "ingest" else "")))
            op["responses"].setdefault("403", _err(f"forbidden: the token lacks the {scope} scope (`scope` in the "
                                                   "error names it)"))
            if scope == "ingest":
                op["security"] = _INGEST_SECURITY
    return paths


@functools.cache
def openapi_doc() -> dict:
    ticket = orjson.loads((streams_dir() / "ticket.schema.json").read_bytes())
    for k in ("$schema", "$id"):
        ticket.pop(k, None)
    tid = {"name": "ticket_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "routing-engine", "version": __version__,
                 "description": "Support-ticket routing on Redis Streams: classify, score urgency, group, assign."},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": _SCOPES},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "routing_token",
                           "description": "set by the login form (POST /login) from a read or operate token"},
                "webhookSignature": {"type": "apiKey", "in": "header", "name": "X-Routing-Signature",
                                     "description": "with ROUTING_WEBHOOK_SECRET set, required on POST /v1/tickets and "
                                                    "/v1/tickets/batch (and enough there): t=<unix seconds>,v1=<hex "
                                                    "HMAC-SHA256 of '<t>.<raw body>'>, t within "
                                                    "ROUTING_WEBHOOK_TOLERANCE_S (300 s)"}},
            "schemas": {
                "Ticket": ticket,
                "Accepted": {"type": "object", "required": ["ticket_id", "stream_id"], "properties": {
                    "ticket_id": {"type": "string"}, "stream_id": {"type": "string"}, "duplicate": {"type": "boolean"}}},
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"},
                    "problems": {"type": "array", "items": {"type": "object", "properties": {
                        "field": {"type": "string"}, "problem": {"type": "string"}}}},
                    "limit": {"type": "integer", "description": "413: the byte limit; 422 too_deep: the nesting limit"},
                    "ticket_id": {"type": "string", "description": "409 id_conflict: the id"},
                    "accepted_sha256": {"type": "string", "description": "409 id_conflict: sha256 hex of the canonical "
                                        "JSON (keys sorted) of the body first accepted under this id"},
                    "posted_sha256": {"type": "string", "description": "409 id_conflict: the same, of the body posted"},
                    "status": {"type": "integer", "description": "batch items only: the status this item alone "
                               "would get (409, 422)"},
                    "scope": {"type": "string", "enum": ["ingest", "read", "operate"],
                              "description": "401/403: the scope the route needs"}}}}},
                "Agent": {"type": "object", "properties": {
                    "name": {"type": "string"}, "capacity": {"type": "integer", "minimum": 0},
                    "skills": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1}},
                    "active": {"type": "boolean"}}},
            },
        },
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": _secured({
            "/v1/tickets": {
                "post": {"summary": "Submit a ticket (webhook door). `id` is an idempotency key: the same id and body "
                                    "again is 202 with duplicate=true, the same id with another body is 409.",
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ticket"}}}},
                         "responses": {"202": _json("Accepted", {"$ref": "#/components/schemas/Accepted"}),
                                       "400": _ERR, "409": _err("id_conflict: the id was accepted with another body "
                                                                "(both bodies' sha256 in the error)"),
                                       "413": _err("body over ROUTING_MAX_BODY_BYTES (`limit` in the error)"),
                                       "415": _ERR, "422": _err("breaks the schema (the field is named), metadata "
                                                                "nested deeper than 32, or JSON deeper than 1024")}},
                "get": {"summary": "Newest tickets, optionally by status",
                        "parameters": [{"name": "status", "in": "query", "schema": {"type": "string"}},
                                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                        "responses": {"200": _json("Tickets"), "400": _ERR}},
            },
            "/v1/tickets/batch": {"post": {
                "summary": "Submit up to 1000 tickets; each is accepted, a duplicate, or rejected (its own error with "
                           "its status: 422 invalid, 409 id conflict) on its own",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "array", "items": {"$ref": "#/components/schemas/Ticket"}, "maxItems": 1000}}}},
                "responses": {"202": _json("Per-ticket results: at least one ticket accepted or a duplicate"),
                              "400": _ERR, "409": _json("Per-ticket results: every item was an id conflict"),
                              "413": _err("body over 1000 x ROUTING_MAX_BODY_BYTES (`limit` in the error)"),
                              "415": _ERR, "422": _json("Per-ticket results with none accepted; or an Error "
                                                        "(too_deep: JSON deeper than 1024)")}}},
            "/v1/tickets/{ticket_id}": {"get": {"summary": "A ticket with its whole decision trail", "parameters": [tid],
                                                "responses": {"200": _json("Ticket record"), "404": _ERR}}},
            "/v1/tickets/{ticket_id}/resolve": {"post": {
                "summary": "Resolve: frees the agent's slot and hands out the next queued ticket", "parameters": [tid],
                "responses": {"200": _json("Resolved"), "404": _ERR, "409": _ERR}}},
            "/v1/incidents": {"get": {"summary": "Master incidents, newest first",
                                      "responses": {"200": _json("Incidents")}}},
            "/v1/incidents/{incident_id}": {"get": {
                "summary": "One incident with its members (an incident merged into another one of the same storm: "
                           "status `merged`, `merged_into` names the surviving incident)",
                "parameters": [{"name": "incident_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json("Incident"), "404": _ERR}}},
            "/v1/incidents/{incident_id}/resolve": {"post": {
                "summary": "Resolve a master incident and every routed ticket in it (frees their agents' slots); a "
                           "merged incident's id resolves the incident it was merged into",
                "parameters": [{"name": "incident_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json("Resolved"), "404": _ERR, "409": _ERR}}},
            **_regroup_paths(),
            "/v1/events": {"get": {
                "summary": "Live event feed (Server-Sent Events). Each event's id is its events-stream id; send it back "
                           "as Last-Event-ID (or ?last_event_id=) to resume without gaps. Events without an id "
                           "(snapshot, flood.state, queue.depths) are derived state sent once a second. A client "
                           "that falls too far behind is disconnected and should reconnect with Last-Event-ID.",
                "parameters": [
                    {"name": "types", "in": "query", "schema": {"type": "string"}, "example": "incident,breaker",
                     "description": "comma-separated type prefixes: `incident` matches incident.*"},
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string", "pattern": "^\\d+-\\d+$"}},
                    {"name": "last_event_id", "in": "query", "schema": {"type": "string", "pattern": "^\\d+-\\d+$"}}],
                "responses": {"200": {"description": "text/event-stream", "content": {"text/event-stream": {}}},
                              "400": _ERR, "401": _ERR}}},
            "/": {"get": {"summary": "Live monitor dashboard (HTML); a login form when a token is required",
                          "responses": {"200": {"description": "text/html"}, "401": {"description": "login form"}}}},
            "/login": {"get": {"summary": "The login form (HTML). A token in the URL is refused (400): use the form",
                               "security": [],
                               "responses": {"200": {"description": "login form"},
                                             "400": {"description": "a ?token= in the URL (never accepted)"}}},
                       "post": {"summary": "Login form (field `token`): sets the cookie and redirects to /", "security": [],
                                "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {
                                    "type": "object", "properties": {"token": {"type": "string"}}}}}},
                                "responses": {"303": {"description": "cookie set (HttpOnly, SameSite=Strict, Secure "
                                                                      "over TLS)"},
                                              "401": {"description": "wrong token, or one without the read scope"},
                                              "429": {"description": "5 failures from this address within a minute; "
                                                                     "see Retry-After"}}}},
            "/v1/agents": {"get": {"summary": "Agents with load and capacity", "responses": {"200": _json("Agents")}}},
            "/v1/agents/{agent_id}": {"put": {
                "summary": "Create or update an agent (load is kept)",
                "parameters": [{"name": "agent_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Agent"}}}},
                "responses": {"200": _json("Agent"), "400": _ERR, "415": _ERR, "422": _ERR}}},
            "/healthz": {"get": {"summary": "Anyone: {status, redis}. With a read token (or no token configured): "
                                            "also streams, consumer groups, consumers and lag",
                                 "security": [{"bearer": []}, {}],
                                 "responses": {"200": _json("Healthy"), "503": _json("Unavailable")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (read scope once any token is configured)",
                                 "responses": {"200": {"description": "text/plain exposition"}}}},
        }),
    }


def _regroup_paths() -> dict:
    """split / move-out / move / merge: an operator regroups an incident's tickets (infra/operations.regroup)."""
    inc = {"name": "incident_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ids = {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"type": "string", "minLength": 1}}

    def body(props: dict, required: list[str]) -> dict:
        return {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": required, "properties": props}}}}

    def op(summary: str, props: dict, required: list[str]) -> dict:
        return {"post": {"summary": summary, "parameters": [inc], "requestBody": body(props, required),
                         "responses": {"200": _json("Regrouped: {incident_id, kind, target, moved, queued, attached}"),
                                       "400": _ERR, "404": _ERR, "409": _ERR, "415": _ERR}}}

    return {
        "/v1/incidents/{incident_id}/split": op(
            "These members are another outage: they become a new incident (id `<incident_id>.split<n>`, no page), "
            "pinned apart from this one so the merge rule never joins them again; later tickets go to whichever "
            "side they are like. Riders of this incident's assignee are queued on their teams",
            {"ticket_ids": ids}, ["ticket_ids"]),
        "/v1/incidents/{incident_id}/move-out": op(
            "These members belong to no incident: a new group that is no incident (`<incident_id>.out<n>`), pinned "
            "apart; riders of this incident's assignee are queued on their teams", {"ticket_ids": ids},
            ["ticket_ids"]),
        "/v1/incidents/{incident_id}/move": op(
            "These members belong to the existing incident or group `to` (riders follow its assignee)",
            {"ticket_ids": ids, "to": {"type": "string", "minLength": 1}}, ["ticket_ids", "to"]),
        "/v1/incidents/{incident_id}/merge": op(
            "This incident is the same outage as `into`: every member moves there and this id points to it "
            "(merge back after a split; lifts the pin)", {"into": {"type": "string", "minLength": 1}}, ["into"]),
    }
