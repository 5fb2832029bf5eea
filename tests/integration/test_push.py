"""Live push end to end over a real Redis and Postgres: the tracker's Consumer
projects events and publishes deltas; the web app's hub fans them out over
/v1/dashboard/ws (in this process, on a test server)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from pusher.client import PushState, decode
from pusher.hub import HubOptions
from pusher.publish import Publisher, new_epoch
from tests.factories import JobScript
from tracker import events as ev
from tracker.consumer import Consumer
from tracker.settings import Settings
from web.app import create_app
from web.ws import PATH, PUSH

USER_A = uuid.UUID(int=0xA)
USER_B = uuid.UUID(int=0xB)
TOKENS = f"adm=admin,ua=user:{USER_A},ub=user:{USER_B}"
ALLOWED_ORIGIN = "https://ops.example.com"


class Conn:
    """One test client: its socket and the state it has applied."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.state = PushState()
        self.messages: list[dict[str, Any]] = []

    async def next(self, *types: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next message of one of `types` (others are applied and skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"socket ended: {msg.type} {msg.data!r} {msg.extra!r}")
                message = decode(msg.data)
                self.messages.append(message)
                self.state.apply(message)
                if not types or message["type"] in types:
                    return message

    async def until(self, predicate, timeout: float = 5.0) -> None:
        """Apply messages until `predicate(state)` holds."""
        async with asyncio.timeout(timeout):
            while not predicate(self.state):
                await self.next()

    async def closed(self, timeout: float = 5.0) -> aiohttp.WSMessage:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    return msg


class Push:
    """The system under test: a web app with its hub, a tracker consumer with the publisher."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, pool: asyncpg.Pool, server: TestServer) -> None:
        self.settings = settings
        self.redis = redis
        self.pool = pool
        self.server = server
        self.publisher = Publisher(redis, settings)
        self.consumer = Consumer(settings, redis, pool, on_commit=self.publisher)
        self.session = aiohttp.ClientSession()

    @property
    def hub(self):
        return self.server.app[PUSH].hub

    @property
    def url(self) -> str:
        return str(self.server.make_url(PATH))

    async def emit(self, *events: ev.Event) -> None:
        """XADD the events and let the tracker project (and publish) all of them."""
        for e in events:
            await self.redis.xadd(self.settings.events_stream, {ev.EVENT_FIELD: ev.encode_event(e)})
        while await self.consumer.run_once(block_ms=0):
            pass
        await self.settled()

    async def settled(self) -> None:
        """Wait until the hub has read every published change."""
        async with asyncio.timeout(5):
            while self.hub.offset < await self.hub.last_offset():
                await asyncio.sleep(0.005)

    async def connect(self, token: str | None = "adm", **headers: str) -> aiohttp.ClientWebSocketResponse:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.session.ws_connect(self.url, headers=headers)

    async def subscribe(
        self, token: str = "adm", cursor: dict | None = None, filters: dict | None = None, first: str = "snapshot"
    ) -> tuple[Conn, dict[str, Any]]:
        conn = Conn(await self.connect(token))
        body: dict[str, Any] = {"type": "subscribe", "filters": filters or {}}
        if cursor is not None:
            body["cursor"] = cursor
        await conn.ws.send_str(msgspec.json.encode(body).decode())
        message = await conn.next()
        assert message["type"] == first, message
        return conn, message

    async def rest(self, path: str, token: str = "adm") -> dict[str, Any]:
        async with self.session.get(self.server.make_url(path), headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def close(self) -> None:
        await self.session.close()


def job_script(**kw) -> JobScript:
    return JobScript(start=datetime.now(timezone.utc), **kw)


async def make_push(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool, wait_ready: bool = True, **options
) -> AsyncIterator[Push]:
    settings = msgspec.structs.replace(settings, tokens=TOKENS, allowed_origins=ALLOWED_ORIGIN)
    app = create_app(settings)
    app[PUSH].options = HubOptions(block_ms=200, **options)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    push = Push(settings, redis, pg_pool, server)
    await push.consumer.setup()
    async with asyncio.timeout(5):
        while wait_ready and not push.hub.ready:  # the hub reads the epoch in the background
            await asyncio.sleep(0.01)
    try:
        yield push
    finally:
        await push.close()
        await server.close()


@pytest.fixture
async def push(settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool) -> AsyncIterator[Push]:
    async for p in make_push(settings, redis, pg_pool):
        yield p


def stage(state: PushState, job: JobScript, name: str) -> dict[str, Any] | None:
    view = state.jobs.get(str(job.job_id))
    return view.stages.get(name) if view else None


# --- deltas ------------------------------------------------------------------------


async def test_a_stage_that_advances_arrives_as_a_delta(push: Push) -> None:
    client, snapshot = await push.subscribe()
    assert snapshot["recovered"] is False and snapshot["jobs"] == []
    assert snapshot["progress"]["active_jobs"] == [] and "stats" in snapshot["progress"]

    job = job_script()
    await push.emit(job.emit("job.started"), job.emit("stage.started", stage="fetch", total=10))
    delta = await client.next("delta")
    [change] = delta["changes"]
    assert change["job"]["job_id"] == str(job.job_id) and change["job"]["current_stage"] == "fetch"
    assert [(s["stage"], s["status"]) for s in change["stages"]] == [("fetch", "running")]
    assert delta["cursor"]["epoch"] == snapshot["cursor"]["epoch"]
    assert delta["cursor"]["offset"] > snapshot["cursor"]["offset"]

    await push.emit(job.emit("stage.progress", stage="fetch", done=4))
    delta = await client.next("delta")
    assert delta["changes"][0]["stages"][0]["done"] == 4
    await push.emit(job.emit("stage.completed", stage="fetch"), job.emit("stage.started", stage="preprocess"))
    await client.until(lambda s: (stage(s, job, "preprocess") or {}).get("status") == "running")
    assert stage(client.state, job, "fetch")["status"] == "completed"
    assert client.state.jobs[str(job.job_id)].job["current_stage"] == "preprocess"


async def test_stats_follow_a_job_that_changes_status(push: Push) -> None:
    client, _ = await push.subscribe()
    job = job_script()
    await push.emit(job.emit("job.started"))
    await client.until(lambda s: s.stats is not None and s.stats["running_jobs"] == 1)
    await push.emit(job.emit("job.completed"))
    await client.until(lambda s: s.stats["completed_jobs_24h"] == 1 and s.stats["running_jobs"] == 0)


async def test_stats_of_a_source_filtered_subscription_count_only_that_source(push: Push) -> None:
    client, _ = await push.subscribe(filters={"trigger_source": "user"})
    system_job, user_job = job_script(), job_script()
    await push.emit(system_job.emit("job.started"), user_job.emit("job.started", trigger_source="user"))
    await push.emit(system_job.emit("job.completed"))
    await push.emit(user_job.emit("job.completed"))
    await client.until(lambda s: s.stats is not None and s.stats["completed_jobs_24h"] == 1 and s.stats["running_jobs"] == 0)
    assert client.state.stats["total_jobs_24h"] == 1


# --- resume ------------------------------------------------------------------------


async def test_a_client_that_reconnects_with_its_cursor_gets_exactly_what_it_missed(push: Push) -> None:
    job, other = job_script(), job_script()
    await push.emit(job.emit("job.started", genres=["tech", "world"]), other.emit("job.started"))
    client, _ = await push.subscribe()
    await push.emit(job.emit("stage.started", stage="fetch"))
    await client.until(lambda s: stage(s, job, "fetch") is not None)
    cursor = client.state.cursor
    await client.ws.close()

    await push.emit(
        job.emit("stage.progress", stage="fetch", done=5),
        job.emit("genre.status", genre="tech", status="running", phase="clustering"),
    )
    again, resumed = await push.subscribe(cursor=cursor, first="resumed")
    assert resumed["recovered"] is True
    [change] = resumed["changes"]  # `other` did not change: not sent
    assert change["job"]["job_id"] == str(job.job_id)
    assert [(s["stage"], s["done"]) for s in change["stages"]] == [("fetch", 5)]
    assert [(g["genre"], g["status"]) for g in change["genres"]] == [("tech", "running")]
    assert resumed["cursor"]["offset"] > cursor["offset"]

    # Nothing missed: an empty resume, then live deltas as usual.
    cursor = resumed["cursor"]
    await again.ws.close()
    third, resumed = await push.subscribe(cursor=cursor, first="resumed")
    assert resumed["changes"] == [] and resumed["recovered"] is True
    await push.emit(job.emit("stage.completed", stage="fetch"))
    delta = await third.next("delta")
    assert delta["changes"][0]["stages"][0]["status"] == "completed"


async def test_a_cursor_trimmed_from_the_stream_gets_a_snapshot(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    settings = msgspec.structs.replace(settings, deltas_maxlen=10)
    async for push in make_push(settings, redis, pg_pool):
        job = job_script()
        await push.emit(job.emit("job.started"))
        client, snapshot = await push.subscribe()
        await client.ws.close()
        # A hub whose memory does not reach back that far reads the stream instead.
        await push.emit(*(job_script().emit("job.started") for _ in range(5)))
        push.hub.recent.reset(push.hub.offset)
        _, resumed = await push.subscribe(cursor=snapshot["cursor"], first="resumed")
        assert len(resumed["changes"]) == 5
        # 300 jobs in one batch: 300 changes, far past the cap.
        await push.emit(*(job_script().emit("job.started") for _ in range(300)))
        assert await redis.xlen(settings.deltas_stream) < 300
        again, message = await push.subscribe(cursor=snapshot["cursor"])
        assert message["recovered"] is False and message["reason"] == "trimmed"
        assert len(message["progress"]["active_jobs"]) == 306


async def test_a_new_epoch_sends_snapshots_to_connected_and_resuming_clients(push: Push) -> None:
    job = job_script()
    await push.emit(job.emit("job.started"))
    live, snapshot = await push.subscribe()
    await new_epoch(push.redis, push.settings)  # what `recap-status rebuild` does after rebuilding
    message = await live.next("snapshot")
    assert message["reason"] == "epoch" and message["cursor"]["epoch"] != snapshot["cursor"]["epoch"]

    _, message = await push.subscribe(cursor=snapshot["cursor"])
    assert message["recovered"] is False and message["reason"] == "epoch"
    await push.emit(job.emit("stage.started", stage="fetch"))
    delta = await live.next("delta")
    assert delta["cursor"] == {"epoch": message["cursor"]["epoch"], "offset": 1}


async def test_a_flushed_redis_starts_a_new_epoch(push: Push) -> None:
    job = job_script()
    await push.emit(job.emit("job.started"))
    live, snapshot = await push.subscribe()
    await push.redis.delete(push.settings.deltas_stream, f"{push.settings.deltas_stream}:epoch")
    await push.emit(job.emit("stage.started", stage="fetch"))
    message = await live.next("snapshot")
    assert message["cursor"]["epoch"] != snapshot["cursor"]["epoch"]
    assert message["jobs"][0]["stages"][0]["stage"] == "fetch"


# --- slow clients --------------------------------------------------------------------


async def stalled_socket(push: Push, token: str = "adm") -> socket.socket:
    """A WebSocket client that subscribes and then never reads, with a tiny receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (push.server.host, push.server.port))
    handshake = (
        f"GET {PATH} HTTP/1.1\r\nHost: {push.server.host}:{push.server.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    await loop.sock_sendall(sock, handshake.encode())
    response = await loop.sock_recv(sock, 1024)
    assert b" 101 " in response.split(b"\r\n")[0], response
    payload = b'{"type":"subscribe"}'
    mask = b"\x00\x00\x00\x00"
    await loop.sock_sendall(sock, bytes([0x81, 0x80 | len(payload)]) + mask + payload)
    return sock


async def test_a_stalled_client_does_not_delay_others_and_is_cut_over_to_a_snapshot(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    options = dict(queue_limit=8, max_rows=8, send_timeout=30.0, heartbeat=30.0)
    async for push in make_push(settings, redis, pg_pool, **options):
        fast, _ = await push.subscribe()
        before = set(push.hub.subscribers())
        stalled = await stalled_socket(push)
        async with asyncio.timeout(5):
            while not (new := set(push.hub.subscribers()) - before):
                await asyncio.sleep(0.01)
        [stalled_sub] = new
        transport = shrink_server_send_buffer(push, stalled)
        jobs = [job_script() for _ in range(20)]
        await push.emit(*(j.emit("job.started") for j in jobs))
        latencies, queue_sizes, buffered = [], [], []
        for round_ in range(60):
            sent = time.monotonic()
            await push.emit(*(j.emit("stage.progress", stage="fetch", done=round_, total=100) for j in jobs))
            await fast.until(lambda s: all((stage(s, j, "fetch") or {}).get("done") == round_ for j in jobs))
            latencies.append(time.monotonic() - sent)
            queue_sizes.append(len(stalled_sub.frames))
            buffered.append(transport.get_write_buffer_size())
        latencies.sort()
        assert latencies[int(len(latencies) * 0.95)] < 0.25, latencies[-5:]
        assert max(queue_sizes) <= options["queue_limit"]  # bounded, whatever it missed
        assert max(buffered) < 256 * 1024  # and so are the bytes waiting in its socket's buffer
        assert stalled_sub.resync_reason == "slow"

        # When it reads again, it is sent a fresh snapshot of the whole state.
        data = await _read_all_frames(stalled, until=b'"reason":"slow"')
        assert b'"type":"snapshot"' in data
        stalled.close()


def shrink_server_send_buffer(push: Push, client: socket.socket) -> asyncio.Transport:
    """Make the server's side of this connection buffer little, as over a slow link
    (on loopback the kernel would otherwise absorb megabytes); returns its transport."""
    port = client.getsockname()[1]
    for ws in push.server.app[PUSH].sockets:
        transport = ws._req.transport
        sock = transport.get_extra_info("socket")
        if sock.getpeername()[1] == port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            return transport
    raise AssertionError("no server socket for the stalled client")


async def _read_all_frames(sock: socket.socket, until: bytes, timeout: float = 10.0) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(timeout):
        while until not in data:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                break
            data = data[-200_000:] + chunk
    return data


# --- authentication and scoping --------------------------------------------------------


async def test_no_token_or_a_bad_token_is_refused_before_the_upgrade(push: Push) -> None:
    for token in (None, "nope"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await push.connect(token)
        assert info.value.status == 401
    async with push.session.ws_connect(f"{push.url}?token=adm") as ws:  # browsers pass the token in the query
        await ws.send_str('{"type":"subscribe"}')
        assert decode((await ws.receive()).data)["type"] == "snapshot"


async def test_the_origin_must_be_allowed_or_the_same(push: Push) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await push.connect(Origin="https://evil.example.net")
    assert info.value.status == 403
    for origin in (ALLOWED_ORIGIN, f"http://{push.server.host}:{push.server.port}"):
        ws = await push.connect(Origin=origin)
        await ws.close()


async def test_a_user_token_only_ever_receives_its_own_jobs(push: Push) -> None:
    mine, theirs, system = job_script(), job_script(), job_script()
    await push.emit(
        mine.emit("job.started", trigger_source="user", user_id=str(USER_A)),
        theirs.emit("job.started", trigger_source="user", user_id=str(USER_B)),
        system.emit("job.started"),
    )
    client, snapshot = await push.subscribe("ua")
    assert [j["job"]["job_id"] for j in snapshot["jobs"]] == [str(mine.job_id)]
    assert {j["job_id"] for j in snapshot["progress"]["active_jobs"]} == {str(mine.job_id)}

    await push.emit(
        theirs.emit("stage.started", stage="fetch"),
        system.emit("stage.started", stage="fetch"),
        mine.emit("stage.started", stage="fetch"),
    )
    await client.until(lambda s: stage(s, mine, "fetch") is not None)
    await push.emit(theirs.emit("job.completed"), system.emit("job.completed"), mine.emit("job.completed"))
    await client.until(lambda s: s.jobs[str(mine.job_id)].job["status"] == "completed")
    seen = {c["job"]["job_id"] for m in client.messages if "changes" in m for c in m["changes"]}
    assert seen == {str(mine.job_id)}
    assert all(m["stats"]["total_jobs_24h"] == 1 for m in client.messages if m["type"] == "stats")

    # Resuming replays only its own jobs too.
    cursor = client.state.cursor
    await client.ws.close()
    await push.emit(theirs.emit("job.heartbeat"), mine.emit("job.heartbeat"))
    _, resumed = await push.subscribe("ua", cursor=cursor, first="resumed")
    assert [c["job"]["job_id"] for c in resumed["changes"]] == [str(mine.job_id)]


async def test_a_user_token_may_not_subscribe_to_another_user(push: Push) -> None:
    ws = await push.connect("ua")
    await ws.send_str(msgspec.json.encode({"type": "subscribe", "filters": {"user_id": str(USER_B)}}).decode())
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4403


async def test_an_admin_may_filter_by_user(push: Push) -> None:
    a, b = job_script(), job_script()
    await push.emit(a.emit("job.started", user_id=str(USER_A)), b.emit("job.started", user_id=str(USER_B)))
    client, snapshot = await push.subscribe(filters={"user_id": str(USER_B)})
    assert [j["job"]["job_id"] for j in snapshot["jobs"]] == [str(b.job_id)]


# --- bad client messages -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("send", "code"),
    [
        (lambda ws: ws.send_str("{not json"), 4400),
        (lambda ws: ws.send_str('{"type":"subscribe","filters":{"colour":"red"}}'), 4400),
        (lambda ws: ws.send_str('{"type":"subscribe","cursor":{"epoch":"e","offset":-1}}'), 4400),
        (lambda ws: ws.send_str('{"type":"unsubscribe"}'), 4400),
        (lambda ws: ws.send_str('{"type":"subscribe","pad":"' + "x" * 5000 + '"}'), 1009),
        (lambda ws: ws.send_bytes(b'{"type":"subscribe"}'), 1003),
    ],
    ids=["not-json", "unknown-filter", "negative-offset", "unknown-type", "too-big", "binary"],
)
async def test_a_bad_client_message_closes_with_a_code_naming_it(push: Push, send, code: int) -> None:
    ws = await push.connect()
    await send(ws)
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == code, (msg.data, msg.extra)


async def test_a_client_that_never_subscribes_is_closed(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    async for push in make_push(settings, redis, pg_pool, subscribe_timeout=0.3):
        ws = await push.connect()
        msg = await ws.receive(timeout=3)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4408


async def test_shutdown_closes_sockets_with_going_away(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    async for push in make_push(settings, redis, pg_pool):
        client, _ = await push.subscribe()
        await push.server.runner.shutdown()
        msg = await client.ws.receive(timeout=3)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001


# --- liveness, resubscribing, odd cursors ---------------------------------------------------


async def test_an_idle_client_gets_heartbeats_and_a_dead_peer_is_dropped(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    async for push in make_push(settings, redis, pg_pool, heartbeat=0.4):
        job = job_script()
        await push.emit(job.emit("job.started"))
        client, snapshot = await push.subscribe()
        heartbeat = await client.next("heartbeat", timeout=3)
        assert heartbeat["cursor"] == snapshot["cursor"]
        # The live client keeps reading (which answers the pings) while a dead one is dropped.
        job_row = lambda s: s.jobs[str(job.job_id)].job  # noqa: E731
        live = asyncio.create_task(client.until(lambda s: job_row(s)["version"] > 1, timeout=10))

        dead = await stalled_socket(push)  # never answers the server's pings
        async with asyncio.timeout(3):
            while push.hub.subscriber_count < 2:
                await asyncio.sleep(0.02)
        async with asyncio.timeout(5):
            while push.hub.subscriber_count > 1:
                await asyncio.sleep(0.05)
        dead.close()
        await push.emit(job.emit("job.heartbeat"))  # the live client is still served
        await live


async def test_a_new_subscribe_on_the_same_socket_replaces_the_subscription(push: Push) -> None:
    recap, morning = job_script(), job_script()
    await push.emit(recap.emit("job.started"), morning.emit("job.started", kind="morning"))
    client, snapshot = await push.subscribe(filters={"kind": "recap"})
    assert [j["job"]["job_id"] for j in snapshot["jobs"]] == [str(recap.job_id)]
    await client.ws.send_str('{"type":"subscribe","filters":{"kind":"morning"}}')
    snapshot = await client.next("snapshot")
    assert [j["job"]["job_id"] for j in snapshot["jobs"]] == [str(morning.job_id)]
    await push.emit(recap.emit("job.heartbeat"), morning.emit("job.heartbeat"))
    delta = await client.next("delta")
    assert [c["job"]["job_id"] for c in delta["changes"]] == [str(morning.job_id)]
    assert push.hub.subscriber_count == 1


async def test_a_cursor_from_beyond_the_stream_gets_a_snapshot(push: Push) -> None:
    job = job_script()
    await push.emit(job.emit("job.started"))
    _, snapshot = await push.subscribe()
    ahead = {**snapshot["cursor"], "offset": snapshot["cursor"]["offset"] + 1000}
    _, message = await push.subscribe(cursor=ahead)
    assert message["reason"] == "unknown" and message["cursor"] == snapshot["cursor"]


async def test_the_server_starts_without_redis_and_the_socket_says_unavailable(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}"
    async for push in make_push(msgspec.structs.replace(settings, redis_url=dead), redis, pg_pool, wait_ready=False):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await push.connect()
        assert info.value.status == 503
        assert (await push.rest("/health/live"))["status"] == "ok"


async def test_a_web_process_started_later_resumes_clients_from_the_streams_history(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    async for first in make_push(settings, redis, pg_pool):
        job = job_script()
        await first.emit(job.emit("job.started"))
        client, snapshot = await first.subscribe()
        await client.ws.close()
        await first.emit(job.emit("stage.started", stage="fetch"))
        async for second in make_push(settings, redis, pg_pool):  # e.g. after a restart
            assert second.hub.recent.covers(snapshot["cursor"]["offset"])  # read back from the stream
            _, resumed = await second.subscribe(cursor=snapshot["cursor"], first="resumed")
            [change] = resumed["changes"]
            assert [s["stage"] for s in change["stages"]] == ["fetch"]
            assert resumed["cursor"] == {**snapshot["cursor"], "offset": snapshot["cursor"]["offset"] + 1}


async def test_metrics_count_the_subscribed_clients(push: Push) -> None:
    async def subscribers() -> float:
        async with push.session.get(push.server.make_url("/metrics"), headers={"Authorization": "Bearer adm"}) as r:
            assert r.status == 200
            line = next(x for x in (await r.text()).splitlines() if x.startswith("recap_push_subscribers "))
            return float(line.split()[1])

    assert await subscribers() == 0
    first, _ = await push.subscribe()
    second, _ = await push.subscribe()
    assert await subscribers() == 2
    await first.ws.close()
    for _ in range(50):
        if await subscribers() == 1:
            break
        await asyncio.sleep(0.05)
    assert await subscribers() == 1
