"""The REST routes: thin handlers that parse parameters, pick a connection and
encode what `api.py` builds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path

import asyncpg
import msgspec
from aiohttp import web
from redis.exceptions import RedisError

from tracker.events import event_json_schema
from tracker.migrate import pending

from . import api
from .auth import authenticate, effective_user, require_admin
from .errors import UNAVAILABLE_ERRORS, json_response
from .keys import CACHE, METRICS, OPENAPI, POOL, REDIS, SETTINGS
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .params import (
    DEFAULT_EVENTS,
    DEFAULT_LIMIT,
    MAX_EVENTS,
    MAX_LIMIT,
    int_param,
    path_uuid,
    progress_params,
    stats_params,
)
from .shapes import ErrorDetail, Health

#: How long a request waits for a pooled connection, and a readiness check for each service.
ACQUIRE_TIMEOUT = 5.0
READY_TIMEOUT = 2.0
STATIC_DIR = Path(__file__).resolve().parent / "static"


@asynccontextmanager
async def connection(app: web.Application) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, waiting at most ACQUIRE_TIMEOUT for one."""
    async with app[POOL].acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        yield conn


async def job_progress(request: web.Request) -> web.Response:
    principal = authenticate(request)
    params = progress_params(request.query, request.app[SETTINGS])
    user = effective_user(principal, params.user_id)  # a 403 before any cached answer

    async def compute() -> bytes:
        async with connection(request.app) as conn:
            return msgspec.json.encode(await api.job_progress_response(conn, principal, params))

    body = await request.app[CACHE].get(("job-progress", user, params), compute)
    return web.Response(body=body, content_type="application/json")


async def job_stats(request: web.Request) -> web.Response:
    principal = authenticate(request)
    params = stats_params(request.query, request.app[SETTINGS])
    user = effective_user(principal, params.user_id)

    async def compute() -> bytes:
        async with connection(request.app) as conn:
            return msgspec.json.encode(await api.job_stats_response(conn, principal, params))

    body = await request.app[CACHE].get(("job-stats", user, params), compute)
    return web.Response(body=body, content_type="application/json")


async def me(request: web.Request) -> web.Response:
    return json_response(api.me_response(authenticate(request)))


async def job_detail(request: web.Request) -> web.Response:
    params = api.DetailParams(
        job_id=path_uuid(request.match_info["job_id"], "job_id"),
        events=int_param(request.query, "events", DEFAULT_EVENTS, 0, MAX_EVENTS),
        stall_after=request.app[SETTINGS].stall_after,
    )
    async with connection(request.app) as conn:
        body = await api.job_detail_response(conn, authenticate(request), params)
    return json_response(body)


async def dead_letters(request: web.Request) -> web.Response:
    principal = authenticate(request)
    require_admin(principal)  # before parsing: a user token learns nothing about the parameters
    limit = int_param(request.query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    async with connection(request.app) as conn:
        body = await api.dead_letters_response(conn, principal, limit)
    return json_response(body)


async def event_schema(request: web.Request) -> web.Response:
    return web.Response(body=_event_schema_json(), content_type="application/json")


@cache
def _event_schema_json() -> bytes:
    return msgspec.json.encode(event_json_schema())


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def health_live(request: web.Request) -> web.Response:
    return json_response(Health(status="ok"))


async def health_ready(request: web.Request) -> web.Response:
    """Ready when Postgres answers with every migration applied and Redis answers PING."""
    checks = {"postgres": "ok", "migrations": "ok", "redis": "ok"}
    try:
        async with asyncio.timeout(READY_TIMEOUT), connection(request.app) as conn:
            missing = await pending(conn)
        if missing:
            checks["migrations"] = f"pending: {', '.join(missing)}"
    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
        checks["postgres"] = checks["migrations"] = "unreachable"
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await request.app[REDIS].ping()
    except (*UNAVAILABLE_ERRORS, RedisError):
        checks["redis"] = "unreachable"
    failing = [name for name, state in checks.items() if state != "ok"]
    if not failing:
        return json_response(Health(status="ready", checks=checks))
    error = ErrorDetail(code="not_ready", message=f"not ready: {', '.join(failing)}")
    return json_response(Health(status="unavailable", checks=checks, error=error), status=503)


async def metrics(request: web.Request) -> web.Response:
    app_metrics = request.app[METRICS]
    await app_metrics.refresh(request.app[POOL], request.app[REDIS], request.app[SETTINGS].events_stream)
    return web.Response(body=app_metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def setup_routes(app: web.Application) -> None:
    """Register the REST routes; their names decide authentication (see auth.py)."""
    r = app.router
    r.add_get("/v1/dashboard/job-progress", job_progress, name="job_progress")
    r.add_get("/v1/dashboard/job-stats", job_stats, name="job_stats")
    r.add_get("/v1/dashboard/jobs/{job_id}", job_detail, name="job_detail")
    r.add_get("/v1/dashboard/dead-letters", dead_letters, name="dead_letters")
    r.add_get("/v1/me", me, name="me")
    r.add_get("/v1/schema/events", event_schema, name="event_schema")
    r.add_get("/v1/openapi.json", openapi, name="openapi")
    r.add_get("/health/live", health_live, name="health_live")
    r.add_get("/health/ready", health_ready, name="health_ready")
    r.add_get("/metrics", metrics, name="metrics")



def setup_dashboard(app: web.Application, static_dir: Path = STATIC_DIR) -> None:
    """The dashboard page at / and its files at /static/ (public: they hold no data)."""
    root = static_dir.resolve()

    async def index(request: web.Request) -> web.StreamResponse:
        return _file(root / "index.html", {"Cache-Control": "no-cache"})

    async def static_file(request: web.Request) -> web.StreamResponse:
        return _file(root / request.match_info["path"], {})

    def _file(path: Path, headers: dict[str, str]) -> web.StreamResponse:
        path = path.resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise web.HTTPNotFound(reason="no such file")  # answered as JSON like every error
        return web.FileResponse(path, headers=headers)

    app.router.add_get("/", index, name="index")
    app.router.add_get("/static/{path:.+}", static_file, name="static")
