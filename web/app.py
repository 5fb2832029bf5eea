"""The aiohttp application: the factory, its resources, and the process entry point."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from tracker.runner import require, stop_on_signals
from tracker.settings import Settings

from .auth import auth_middleware, load_tokens
from .cache import ResponseCache
from .errors import error_middleware
from .keys import CACHE, METRICS, OPENAPI, POOL, REDIS, SETTINGS, TOKENS
from .metrics import Metrics, metrics_middleware
from .openapi import encode_document
from .routes import setup_dashboard, setup_routes

log = logging.getLogger("web")

POOL_SIZE = 10
CONNECT_TIMEOUT = 5.0
QUERY_TIMEOUT = 10.0
#: The API's queries touch a few hundred rows each: a parallel worker or a JIT
#: compilation would cost more (milliseconds) than the query itself.
SESSION_SETTINGS = {"max_parallel_workers_per_gather": "0", "jit": "off", "application_name": "recap-status web"}
#: The API takes no request bodies; anything bigger than this is refused.
MAX_REQUEST_BYTES = 64 * 1024


def create_app(settings: Settings) -> web.Application:
    """The whole web server: REST routes, the push WebSocket (when web.ws is
    installed) and the dashboard. Postgres and Redis are opened at startup and
    closed at cleanup. Raises ConfigError on a bad token entry."""
    require(settings, "database_url", "redis_url")
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, auth_middleware], client_max_size=MAX_REQUEST_BYTES
    )
    app[SETTINGS] = settings
    app[TOKENS] = load_tokens(settings)
    app[METRICS] = Metrics()
    app[CACHE] = ResponseCache(ttl=settings.poll_cache_ms / 1000)
    app.cleanup_ctx.append(postgres_pool)
    app.cleanup_ctx.append(redis_client)
    setup_routes(app)
    _setup_push(app)
    setup_dashboard(app)
    app.on_response_prepare.append(_dashboard_headers)
    app[OPENAPI] = encode_document(app)
    if not len(app[TOKENS]):
        log.warning("web: no tokens configured (RECAP_TOKENS / RECAP_TOKENS_FILE): every API call will get 401")
    return app


async def postgres_pool(app: web.Application) -> AsyncIterator[None]:
    # min_size=0: the server starts (and /health/ready reports it) while Postgres is down.
    pool = await asyncpg.create_pool(
        app[SETTINGS].database_url,
        min_size=0,
        max_size=POOL_SIZE,
        timeout=CONNECT_TIMEOUT,
        command_timeout=QUERY_TIMEOUT,
        server_settings=SESSION_SETTINGS,
        reset=_keep_session,
    )
    app[POOL] = pool
    yield
    try:
        await asyncio.wait_for(pool.close(), QUERY_TIMEOUT)
    except TimeoutError:
        pool.terminate()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release (a round trip per request): nothing here
    changes session state (no SET, LISTEN, advisory locks or cursors), and asyncpg
    still rolls back a transaction left open."""


async def redis_client(app: web.Application) -> AsyncIterator[None]:
    client = aioredis.from_url(app[SETTINGS].redis_url, socket_timeout=5.0, socket_connect_timeout=CONNECT_TIMEOUT)
    app[REDIS] = client
    yield
    await client.aclose()


async def _dashboard_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The page and its files: only this origin's scripts (none inline), styles and socket;
    no Referer (the first request's URL may hold ?token=); revalidate files after a deploy."""
    if request.match_info.route.name not in ("index", "static"):
        return
    socket = f"ws://{request.host} wss://{request.host}"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self' {socket}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "no-cache")


def _setup_push(app: web.Application) -> None:
    """GET /v1/dashboard/ws, from web/ws.py when it is there."""
    if importlib.util.find_spec("web.ws") is None:
        log.info("web: web.ws is not installed; no live push, the dashboard polls")
        return
    importlib.import_module("web.ws").setup(app)


class AccessLogger(AbstractAccessLogger):
    """Method, path (never the query string: it may hold a token), status and time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %.1fms', request.remote, request.method, request.path, response.status, time * 1000
        )


async def run_web(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then close connections and resources."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log_class=AccessLogger)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        log.info("web: listening on http://%s:%d/", host, settings.port)
        stop = stop or asyncio.Event()
        stop_on_signals(stop)
        await stop.wait()
        log.info("web: stopping")
    finally:
        await runner.cleanup()
