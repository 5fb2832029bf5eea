"""Convergence: two web processes and two trackers (separate OS processes) as one
system. Several hundred clients connect, disconnect and resume at random with
their cursors while a simulated pipeline runs several jobs (with duplicates, and
an epoch change halfway as a rebuild makes); at the end every client's state
equals what the REST API answers for its token."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from pusher.client import PushState, decode, subscribe_message
from pusher.publish import new_epoch
from tests.factories import JobScript
from tracker import events as ev
from tracker.consumer import GROUP
from tracker.settings import Settings
from tracker.statuses import DEFAULT_STAGES

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
USER_A, USER_B = uuid.UUID(int=0xA1), uuid.UUID(int=0xB1)
TOKENS = {"adm": None, "ua": USER_A, "ub": USER_B}
CLIENTS = 300
JOBS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def processes(settings: Settings, tmp_path: Path) -> Iterator[list[int]]:
    """Two trackers and two web servers; yields the web ports."""
    ports = [_free_port(), _free_port()]
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "RECAP_EVENTS_STREAM": settings.events_stream,
        "RECAP_DELTAS_STREAM": settings.deltas_stream,
        "RECAP_TOKENS": f"adm=admin,ua=user:{USER_A},ub=user:{USER_B}",
        "RECAP_BLOCK_MS": "200",
        "RECAP_BATCH_SIZE": "50",
        "RECAP_LOG_LEVEL": "WARNING",
    }
    commands = [("tracker", {"RECAP_CONSUMER": f"t{i}"}) for i in (1, 2)]
    commands += [("web", {"RECAP_PORT": str(port)}) for port in ports]
    procs = []
    for i, (module, extra) in enumerate(commands):
        log = open(tmp_path / f"{module}{i}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", module], cwd=REPO, env={**env, **extra}, stdout=log, stderr=log))
    try:
        yield ports
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def _wait_ready(session: aiohttp.ClientSession, ports: list[int]) -> None:
    async with asyncio.timeout(30):
        for port in ports:
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health/live") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)


def _job_events(user: uuid.UUID | None, rng: random.Random) -> list[ev.AnyEvent]:
    job = JobScript(start=datetime.now(timezone.utc))
    genres = ["tech", "world", "sports"]
    started = {"user_id": str(user), "trigger_source": "user"} if user else {}
    job.emit("job.started", genres=genres, **started)
    stop_at = rng.choice([len(DEFAULT_STAGES), len(DEFAULT_STAGES), 3])
    for stage in DEFAULT_STAGES[:stop_at]:
        job.emit("stage.started", stage=stage, total=100)
        for done in (30, 70):
            job.emit("stage.progress", stage=stage, done=done)
        if stage == "evidence":
            for genre in genres:
                job.emit("genre.status", genre=genre, status="running", phase="clustering")
                job.emit("genre.status", genre=genre, status=rng.choice(["succeeded", "partial"]), cluster_count=3)
        job.emit("stage.completed", stage=stage)
    job.emit("articles.added", articles=[{"article_id": f"a{i}"} for i in range(5)])
    job.emit("job.completed" if stop_at == len(DEFAULT_STAGES) else "job.failed", error="boom")
    return job.events


async def _pipeline(redis: aioredis.Redis, settings: Settings, rng: random.Random, epoch_at: int) -> int:
    """Emit every job's events interleaved (jobs run concurrently), some twice; returns how many."""
    users = [USER_A, USER_B, None]
    queues = [_job_events(users[i % 3], rng) for i in range(JOBS)]
    sent = 0
    while any(queues):
        for _ in range(rng.randint(1, 4)):
            if not any(queues):
                break
            queue = rng.choice([q for q in queues if q])
            event = queue.pop(0)
            for _ in range(2 if rng.random() < 0.05 else 1):
                await redis.xadd(settings.events_stream, {ev.EVENT_FIELD: ev.encode_event(event)})
            sent += 1
            if sent == epoch_at:
                await new_epoch(redis, settings)  # as `recap-status rebuild` does
        await asyncio.sleep(rng.uniform(0, 0.04))
    return sent


async def _client(
    session: aiohttp.ClientSession, urls: list[str], token: str, state: PushState, rng: random.Random,
    churn: asyncio.Event, done: asyncio.Event,
) -> None:
    """Connect, read a while, drop (cleanly or not), wait, resume; after `churn` stays connected."""
    headers = {"Authorization": f"Bearer {token}"}
    loop = asyncio.get_running_loop()
    while not done.is_set():
        staying = churn.is_set()
        try:
            async with session.ws_connect(rng.choice(urls), headers=headers) as ws:
                await ws.send_str(subscribe_message(state).decode())
                until = loop.time() + (3600 if staying else rng.uniform(0.1, 2.0))
                while not done.is_set() and (left := until - loop.time()) > 0:
                    msg = await ws.receive(timeout=min(left, 0.5))
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    state.apply(decode(msg.data))
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(rng.uniform(0, 0.3))


def _differences(state: PushState, progress: dict, details: dict[str, dict], stats: dict) -> list[str]:
    listed = {j["job_id"] for j in progress["recent_jobs"]} | {j["job_id"] for j in progress["active_jobs"]}
    if set(state.jobs) != listed:
        return [f"jobs differ: {sorted(set(state.jobs) ^ listed)}"]
    out = []
    for job_id, view in state.jobs.items():
        rest = details[job_id]
        for name in ("status", "current_stage", "last_stage", "article_count", "error", "user_id"):
            if view.job[name] != rest[name]:
                out.append(f"{job_id} {name}: {view.job[name]!r} != {rest[name]!r}")
        rest_stages = {s["stage"]: (s["status"], s["done"], s["total"], s["attempts"]) for s in rest["stages"]
                       if s["status"] != "pending" or s["stage"] in view.stages}
        mine = {n: (s["status"], s["done"], s["total"], s["attempts"]) for n, s in view.stages.items()}
        if mine != rest_stages:
            out.append(f"{job_id} stages: {mine} != {rest_stages}")
        rest_genres = {g["genre"]: (g["status"], g["cluster_count"], g["attempts"]) for g in rest["genres"]
                       if g["attempts"] or g["genre"] in view.genres}
        mine_g = {n: (g["status"], g["cluster_count"], g["attempts"]) for n, g in view.genres.items()}
        if mine_g != rest_genres:
            out.append(f"{job_id} genres: {mine_g} != {rest_genres}")
    keys = ("total_jobs_24h", "running_jobs", "failed_jobs_24h", "completed_jobs_24h")
    if state.stats is None or any(state.stats[k] != stats[k] for k in keys):
        out.append(f"stats: {state.stats and {k: state.stats[k] for k in keys}} != {({k: stats[k] for k in keys})}")
    return out


async def _rest_views(session: aiohttp.ClientSession, base: str) -> dict[str, tuple[dict, dict, dict]]:
    views = {}
    for token in TOKENS:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(f"{base}/v1/dashboard/job-progress", headers=headers) as r:
            progress = await r.json()
        async with session.get(f"{base}/v1/dashboard/job-stats", headers=headers) as r:
            stats = await r.json()
        details = {}
        for j in progress["recent_jobs"]:
            async with session.get(f"{base}/v1/dashboard/jobs/{j['job_id']}", headers=headers) as r:
                details[j["job_id"]] = await r.json()
        views[token] = (progress, details, stats)
    return views


async def _drained(redis: aioredis.Redis, settings: Settings) -> None:
    """Until the trackers have projected and acknowledged every event."""
    async with asyncio.timeout(30):
        while True:
            groups = await redis.xinfo_groups(settings.events_stream)
            group = next(g for g in groups if g["name"] in (GROUP, GROUP.encode()))
            if group["lag"] == 0 and group["pending"] == 0:
                return
            await asyncio.sleep(0.1)


async def test_every_client_converges_to_the_rest_state(
    processes: list[int], settings: Settings, redis: aioredis.Redis
) -> None:
    rng = random.Random(4)
    urls = [f"http://127.0.0.1:{port}/v1/dashboard/ws" for port in processes]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _wait_ready(session, processes)
        churn, done = asyncio.Event(), asyncio.Event()
        clients = [(rng.choice(list(TOKENS)), PushState()) for _ in range(CLIENTS)]
        tasks = [
            asyncio.create_task(_client(session, urls, token, state, random.Random(i), churn, done))
            for i, (token, state) in enumerate(clients)
        ]
        sent = await _pipeline(redis, settings, rng, epoch_at=120)
        await _drained(redis, settings)
        churn.set()  # from now on clients stay connected
        views = await _rest_views(session, f"http://127.0.0.1:{processes[0]}")
        deadline = time.monotonic() + 20
        while True:
            differences = [f"client {i} ({token}): {d}" for i, (token, state) in enumerate(clients)
                           for d in _differences(state, *views[token])]
            if not differences or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        done.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert not differences, differences[:5]
    assert sent > 200
    assert sum(s.resumes for _, s in clients) > CLIENTS  # clients did resume, not only take snapshots
    assert all(s.snapshots >= 1 for _, s in clients)
    per_user = {token: {len(s.jobs) for t, s in clients if t == token} for token in TOKENS}
    assert per_user == {"adm": {JOBS}, "ua": {len(range(0, JOBS, 3))}, "ub": {len(range(1, JOBS, 3))}}
