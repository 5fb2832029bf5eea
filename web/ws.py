"""GET /v1/dashboard/ws: live push over WebSocket (docs/push-protocol.md).

Authenticated like the REST API before the upgrade (401 without a valid token,
403 for an Origin that is neither this server nor in RECAP_ALLOWED_ORIGINS).
After the upgrade the client sends `subscribe`; the subscription's messages are
sent by pusher.session.serve in a task of their own, while this handler reads
what the client sends.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

import msgspec
import redis.asyncio as aioredis
from aiohttp import WSMsgType, web
from prometheus_client import Gauge

from pusher.deltas import MAX_CLIENT_MESSAGE, Change, CloseCode, Subscribe, decode_client_message, encode
from pusher.hub import Frame, Hub, HubOptions, Scope, Subscriber
from pusher.session import TooSlow, serve
from tracker.projector import load_states
from tracker.settings import Settings

from . import api
from .auth import Principal, authenticate
from .errors import ApiError
from .keys import METRICS, POOL, SETTINGS
from .params import DEFAULT_LIMIT, DEFAULT_WINDOW, ProgressParams, StatsParams

log = logging.getLogger("web")

PATH = "/v1/dashboard/ws"


@dataclass
class PushState:
    """The process's hub and open sockets; filled in at startup."""

    options: HubOptions = field(default_factory=HubOptions)
    hub: Hub | None = None
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)


PUSH = web.AppKey("push", PushState)


def setup(app: web.Application, options: HubOptions | None = None) -> None:
    """Add the WebSocket route, the hub (one delta-stream reader per process) and
    closing every socket with GOING_AWAY on shutdown."""
    state = app[PUSH] = PushState(options=options or HubOptions())
    Gauge(
        "recap_push_subscribers", "WebSocket clients subscribed to this process's hub", registry=app[METRICS].registry
    ).set_function(lambda: state.hub.subscriber_count if state.hub else 0)
    app.router.add_get(PATH, handle, name="dashboard_ws")
    app.cleanup_ctx.append(_hub_context)
    app.on_shutdown.append(_close_sockets)


async def _hub_context(app: web.Application) -> AsyncIterator[None]:
    state, settings = app[PUSH], app[SETTINGS]
    # Its own connections: the reader blocks on XREAD, which must not time out.
    redis = aioredis.from_url(settings.redis_url)
    state.hub = Hub(
        redis,
        settings,
        snapshot=partial(_snapshot, app),
        stats=partial(_stats, app),
        options=state.options,
    )
    await state.hub.start()
    try:
        yield
    finally:
        await state.hub.stop()
        await redis.aclose()


async def _close_sockets(app: web.Application) -> None:
    sockets = list(app[PUSH].sockets)
    closes = [ws.close(code=CloseCode.GOING_AWAY, message=b"server shutdown") for ws in sockets]
    await asyncio.gather(*(asyncio.wait_for(c, 2.0) for c in closes), return_exceptions=True)


# --- the handler ---------------------------------------------------------------


async def handle(request: web.Request) -> web.StreamResponse:
    principal = authenticate(request)
    check_origin(request)
    state = request.app[PUSH]
    if state.hub is None or not state.hub.ready:
        raise ApiError(503, "unavailable", "live push is not available yet (Redis); try again shortly")
    ws = web.WebSocketResponse(
        heartbeat=state.options.heartbeat,
        max_msg_size=MAX_CLIENT_MESSAGE,
        compress=False,
        writer_limit=WRITER_LIMIT,
    )
    await ws.prepare(request)
    state.sockets.add(ws)
    try:
        await _session(ws, request.transport, state.hub, principal)
    finally:
        state.sockets.discard(ws)
    return ws


def check_origin(request: web.Request) -> None:
    """A browser's Origin must be this server's or in RECAP_ALLOWED_ORIGINS (other
    clients send none). Without this any page could use a visitor's token."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    origin = origin.rstrip("/").lower()
    allowed = {o.strip().rstrip("/").lower() for o in request.app[SETTINGS].allowed_origins.split(",") if o.strip()}
    if origin == f"{request.scheme}://{request.host}".lower() or origin in allowed:
        return
    raise ApiError(403, "forbidden_origin", "this Origin may not open the dashboard socket")


async def _session(
    ws: web.WebSocketResponse, transport: asyncio.Transport | None, hub: Hub, principal: Principal
) -> None:
    sender: asyncio.Task | None = None
    try:
        async with asyncio.timeout(hub.options.subscribe_timeout):
            msg = await ws.receive()
        while True:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            subscription = await _read_subscribe(ws, msg, principal)
            if subscription is None:
                return
            if sender is not None:  # a new subscribe replaces the old one, which stops first
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            sender = asyncio.create_task(_send_all(ws, transport, hub, *subscription))
            msg = await ws.receive()
    except TimeoutError:
        await ws.close(code=CloseCode.SUBSCRIBE_TIMEOUT, message=b"no subscribe message in time")
    finally:
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)


async def _read_subscribe(
    ws: web.WebSocketResponse, msg: web.WSMessage, principal: Principal
) -> tuple[Scope, Subscribe] | None:
    """The subscription a client message asks for; None when the socket was closed for it."""
    if msg.type == WSMsgType.BINARY:
        await ws.close(code=CloseCode.UNSUPPORTED_DATA, message=b"binary frames are not supported; send JSON text")
        return None
    try:
        subscribe = decode_client_message(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        await ws.close(code=CloseCode.BAD_MESSAGE, message=f"bad message: {exc}"[:120].encode())
        return None
    scope = scope_of(principal, subscribe)
    if scope is None:
        await ws.close(code=CloseCode.FORBIDDEN, message=b"a user token may only subscribe to its own user_id")
        return None
    return scope, subscribe


def scope_of(principal: Principal, subscribe: Subscribe) -> Scope | None:
    """What the principal will receive; None when it asks for what it may not see."""
    f = subscribe.filters
    if principal.is_admin:
        user = f.user_id
    elif principal.user_id is not None and f.user_id in (None, principal.user_id):
        user = principal.user_id
    else:
        return None
    return Scope(
        admin=principal.is_admin, user_id=user, kind=f.kind, trigger_source=f.trigger_source,
        window=f.window, limit=f.limit,
    )


async def _send_all(
    ws: web.WebSocketResponse, transport: asyncio.Transport | None, hub: Hub, scope: Scope, subscribe: Subscribe
) -> None:
    """The sender task: runs the subscription and closes the socket when it cannot go on."""
    sub = Subscriber(scope, hub.options)
    sub.write_now = partial(_write_now, ws, transport)
    try:
        await serve(hub, sub, subscribe.cursor, partial(ws.send_frame, opcode=WSMsgType.TEXT))
    except TooSlow:
        await _close_or_abort(ws, CloseCode.TOO_SLOW, b"too slow: reconnect and resume with your cursor")
    except (ConnectionResetError, ConnectionError):
        pass  # the peer went away; the handler's receive ends too
    except Exception:
        log.exception("push: subscription failed")
        await _close_or_abort(ws, CloseCode.INTERNAL_ERROR, b"internal error; reconnect later")


#: A frame is written straight from the hub only while the socket's buffer holds less.
WRITE_NOW_LIMIT = 64 * 1024
#: Bytes aiohttp writes before it waits for a full buffer to drain. With the limit
#: above, a client that stops reading holds at most about 96 KiB plus a frame.
WRITER_LIMIT = 32 * 1024


def _write_now(ws: web.WebSocketResponse, transport: asyncio.Transport | None, frame: Frame) -> bool:
    """Write a frame without waiting, framed once for every socket it goes to;
    False when the socket's buffer is full or it is closing (the caller queues it)."""
    if ws.closed or transport is None or transport.is_closing() or transport.get_write_buffer_size() > WRITE_NOW_LIMIT:
        return False
    if frame.wire is None:
        frame.wire = text_frame(frame.encoded())
    transport.write(frame.wire)
    return True


def text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed WebSocket text frame (RFC 6455 section 5.2) as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


async def _close_or_abort(ws: web.WebSocketResponse, code: int, message: bytes) -> None:
    try:
        async with asyncio.timeout(1.0):
            await ws.close(code=code, message=message)
    except (TimeoutError, ConnectionError):
        pass


# --- snapshot and stats for the hub ------------------------------------------------------


def _principal(scope: Scope) -> Principal:
    return Principal(is_admin=scope.admin, user_id=None if scope.admin else scope.user_id)


async def _snapshot(app: web.Application, scope: Scope) -> tuple[bytes, bytes]:
    """The job-progress response for the scope, and the rows of the jobs it lists."""
    settings: Settings = app[SETTINGS]
    params = ProgressParams(
        user_id=scope.user_id if scope.admin else None,
        window=scope.window or DEFAULT_WINDOW,
        limit=scope.limit or DEFAULT_LIMIT,
        kind=scope.kind,
        trigger_source=scope.trigger_source,
        stall_after=settings.stall_after,
    )
    async with app[POOL].acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        progress = await api.job_progress_response(conn, _principal(scope), params)
        job_ids = list(dict.fromkeys([j.job_id for j in progress.active_jobs] + [j.job_id for j in progress.recent_jobs]))
        states = await load_states(conn, job_ids)
    jobs = [Change(job=s.job, stages=list(s.stages.values()), genres=list(s.genres.values())) for s in states.values()]
    return encode(progress), encode(jobs)


async def _stats(app: web.Application, scope: Scope) -> bytes:
    settings: Settings = app[SETTINGS]
    params = StatsParams(
        user_id=scope.user_id if scope.admin else None,
        window=scope.window or DEFAULT_WINDOW,
        kind=scope.kind or "recap",
        trigger_source=scope.trigger_source,
        stall_after=settings.stall_after,
    )
    async with app[POOL].acquire() as conn:
        return encode(await api.job_stats_response(conn, _principal(scope), params))
