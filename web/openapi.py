"""The OpenAPI 3.1 document of the server, built in code.

Response schemas come from the msgspec structs that encode the responses
(shapes.py), parameters from the limits in params.py. The document lists the
routes registered in the application that are described in OPERATIONS; a test
checks that every registered route is described and every description is
registered.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import msgspec
from aiohttp import web

from .params import (
    DEFAULT_EVENTS,
    DEFAULT_LIMIT,
    DEFAULT_WINDOW,
    KINDS,
    MAX_EVENTS,
    MAX_LIMIT,
    MAX_WINDOW,
    STATUS_FILTERS,
    TRIGGER_SOURCES,
)
from .shapes import RESPONSE_SHAPES

Json = dict[str, Any]

STATIC_PATH = "/static/{path}"


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: Json) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: Json, description: str, **extra: Any) -> Json:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **extra}


_ERRORS: dict[int, str] = {
    400: "A query or path parameter is not valid; `error.parameter` names it.",
    401: "No bearer token, or an unknown one.",
    403: "The token may not see this (a user token asking for another user, or an admin-only endpoint).",
    404: "No such job, or not one this token may see.",
    503: "Postgres or Redis is unreachable.",
}


def _errors(*statuses: int) -> Json:
    return {str(s): _json(_ERRORS[s], _ref("ErrorBody")) for s in statuses}


def _operation(operation_id: str, summary: str, ok: Json, errors: tuple[int, ...], **extra: Any) -> Json:
    return {"operationId": operation_id, "summary": summary, "responses": {"200": ok, **_errors(*errors)}, **extra}


_USER_ID = _query(
    "user_id",
    {"type": "string", "format": "uuid"},
    "Show this user's jobs and add `user_context`. A user token may only give its own id (else 403); "
    "an admin may give any.",
)
_WINDOW = _query(
    "window",
    {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW, "default": DEFAULT_WINDOW},
    "The window in seconds: jobs kicked off within it count.",
)
_KIND = _query("kind", {"type": "string", "enum": list(KINDS)}, "Job kind.")
_LIMIT = _query(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    "How many rows at most.",
)

_TRIGGER_SOURCE = _query(
    "trigger_source", {"type": "string", "enum": list(TRIGGER_SOURCES)}, "Only jobs started so (default: every source)."
)

_PUBLIC: Json = {"security": []}

#: Every documented operation (all GET), by path.
OPERATIONS: dict[str, Json] = {
    "/v1/dashboard/job-progress": _operation(
        "getJobProgress",
        "The running jobs, the recent jobs with their status history, the stats and the user context.",
        _json("Progress of the jobs this token may see.", _ref("JobProgress")),
        (400, 401, 403, 503),
        parameters=[
            _USER_ID,
            _WINDOW,
            _LIMIT,
            {**_KIND, "description": "Only jobs of this kind; also the kind of `stats` (default recap)."},
            _query(
                "status",
                {"type": "array", "items": {"type": "string", "enum": list(STATUS_FILTERS)}},
                "Only recent jobs with one of these statuses (repeat the parameter); `stalled` is a running job "
                "that has reported nothing for RECAP_STALL_AFTER seconds.",
                style="form",
                explode=True,
            ),
            {**_TRIGGER_SOURCE, "description": "Only jobs started so; also the trigger source of `stats`."},
        ],
    ),
    "/v1/dashboard/job-stats": _operation(
        "getJobStats",
        "Success rate, counts and durations of one kind's jobs in the window (finished jobs only for durations), "
        "the same figures for the window before it (`previous`), and the stall threshold.",
        _json("The stats.", _ref("JobStats")),
        (400, 401, 403, 503),
        parameters=[_USER_ID, _WINDOW, {**_KIND, "description": "Job kind (default recap)."}, _TRIGGER_SOURCE],
    ),
    "/v1/dashboard/jobs/{job_id}": _operation(
        "getJob",
        "One job: stages, genres, status history, articles and its newest events.",
        _json("The job.", _ref("JobDetail")),
        (400, 401, 404, 503),
        parameters=[
            {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
            _query(
                "events",
                {"type": "integer", "minimum": 0, "maximum": MAX_EVENTS, "default": DEFAULT_EVENTS},
                "How many of the newest events to include.",
            ),
        ],
    ),
    "/v1/dashboard/dead-letters": _operation(
        "getDeadLetters",
        "The newest stream entries the tracker rejected, with the reason (admin only).",
        _json("Dead letters, newest first.", _ref("DeadLetters")),
        (400, 401, 403, 503),
        parameters=[_LIMIT],
    ),
    "/v1/me": _operation(
        "getMe",
        "Who the token belongs to: an admin, or one user (its `user_id`).",
        _json("The token's role.", _ref("Me")),
        (401,),
    ),
    "/v1/schema/events": _operation(
        "getEventSchema",
        "JSON Schema of the events the pipeline emits.",
        _json("A JSON Schema.", {"type": "object"}),
        (401,),
    ),
    "/v1/openapi.json": _operation(
        "getOpenApi", "This document.", _json("An OpenAPI 3.1 document.", {"type": "object"}), (401,)
    ),
    "/health/live": _operation(
        "getLive", "The process is up.", _json("Alive.", _ref("Health")), (), **_PUBLIC
    ),
    "/health/ready": {
        "operationId": "getReady",
        "summary": "Postgres and Redis answer and every migration is applied.",
        "responses": {
            "200": _json("Ready.", _ref("Health")),
            "503": _json("Not ready; `checks` says what fails.", _ref("Health")),
        },
        **_PUBLIC,
    },
    "/metrics": {
        "operationId": "getMetrics",
        "summary": "Prometheus metrics. Takes RECAP_METRICS_TOKEN or an admin token.",
        "responses": {
            "200": {
                "description": "Prometheus text format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **_errors(401, 403),
        },
    },
    "/v1/dashboard/ws": {
        "operationId": "dashboardSocket",
        "summary": "WebSocket of live deltas (see the push protocol); the token may be given as ?token=.",
        "responses": {"101": {"description": "Switching to the WebSocket protocol."}, **_errors(400, 401, 403)},
    },
    "/": {
        "operationId": "getDashboard",
        "summary": "The dashboard page (it holds no data; `?token=` is kept in the browser session).",
        "responses": {"200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}},
        **_PUBLIC,
    },
    STATIC_PATH: {
        "operationId": "getStatic",
        "summary": "The dashboard's scripts and styles.",
        "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "A file."}, **_errors(404)},
        **_PUBLIC,
    },
}


def registered_operations(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route of the app, HEAD left out (aiohttp adds it to each GET)."""
    found = set()
    for route in app.router.routes():
        if route.method != "HEAD" and route.resource is not None:
            found.add((route.method, route.resource.canonical))
    return found


def build_document(app: web.Application) -> Json:
    """The OpenAPI document of the operations registered in `app`."""
    paths: Json = {}
    for method, path in sorted(registered_operations(app)):
        if path in OPERATIONS and method == "GET":
            paths.setdefault(path, {})[method.lower()] = OPERATIONS[path]
    _, schemas = msgspec.json.schema_components(RESPONSE_SHAPES, ref_template="#/components/schemas/{name}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "recap-status",
            "version": _version(),
            "description": "Job progress of the recap pipeline. Every endpoint but /health/*, / and "
            "/static/ needs a bearer token (RECAP_TOKENS).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "queryToken": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
        "security": [{"bearer": []}, {"queryToken": []}],
    }


def _version() -> str:
    try:
        return metadata.version("recap-status")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def encode_document(app: web.Application) -> bytes:
    """The document as JSON; build it once every route is registered."""
    return msgspec.json.encode(build_document(app))
