"""Crash test with real processes: the tracker is killed with SIGKILL at random
moments while events keep flowing; every event is applied exactly once."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.factories import JobScript
from tests.projection_snapshot import projection
from tracker import events as ev
from tracker.consumer import GROUP
from tracker.fold import history_entry
from tracker.rebuild import rebuild
from tracker.settings import Settings

pytestmark = pytest.mark.slow


def realistic_job(rng: random.Random) -> list[ev.AnyEvent]:
    job = JobScript()
    job.emit("job.started", genres=["tech", "world"])
    for stage in ("fetch", "preprocess", "dedup", "genre"):
        job.emit("stage.started", stage=stage, total=100)
        for done in range(10, 101, 10):
            job.emit("stage.progress", 0.1, stage=stage, done=done)
        job.emit("stage.completed", stage=stage)
    for genre in ("tech", "world"):
        job.emit("genre.status", genre=genre, status="running", phase="clustering")
        job.emit("genre.status", genre=genre, status=rng.choice(["succeeded", "partial"]), cluster_count=3)
    for batch in range(3):
        job.emit("articles.added", articles=[{"article_id": f"a{batch}-{i}"} for i in range(20)])
    job.emit("job.completed")
    return job.events


def start_tracker(settings: Settings) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "RECAP_EVENTS_STREAM": settings.events_stream,
        "RECAP_DELTAS_STREAM": settings.deltas_stream,
        "RECAP_CONSUMER": "crash-test",
        "RECAP_BATCH_SIZE": "100",
        "RECAP_BLOCK_MS": "100",
        "RECAP_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([sys.executable, "-m", "tracker"], env=env)


async def wait_until_drained(redis: aioredis.Redis, settings: Settings, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        groups = await redis.xinfo_groups(settings.events_stream)
        group = next((g for g in groups if g["name"] == GROUP.encode()), None)
        pending = (await redis.xpending(settings.events_stream, GROUP))["pending"]
        if group and group["lag"] == 0 and pending == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the tracker did not catch up")


async def test_sigkill_at_random_moments_loses_and_repeats_nothing(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    rng = random.Random(7)
    jobs = [realistic_job(rng) for _ in range(40)]
    stream = [e for job in jobs for e in job]
    rng.shuffle(stream)
    stream += rng.sample(stream, 200)  # re-sent by producers

    tracker = start_tracker(settings)
    kills = 0
    try:
        for i in range(0, len(stream), 25):
            await redis.xadd(settings.events_stream, {"event": ev.encode_event(stream[i])})
            pipe = redis.pipeline(transaction=False)
            for e in stream[i + 1 : i + 25]:
                pipe.xadd(settings.events_stream, {"event": ev.encode_event(e)})
            await pipe.execute()
            await asyncio.sleep(0.01)
            if rng.random() < 0.06 and kills < 6:
                await asyncio.sleep(rng.uniform(0.2, 0.8))  # let it get busy mid-batch
                tracker.send_signal(signal.SIGKILL)
                tracker.wait()
                kills += 1
                tracker = start_tracker(settings)
        await wait_until_drained(redis, settings)
        tracker.send_signal(signal.SIGTERM)
        assert tracker.wait(timeout=15) == 0, "SIGTERM finishes the batch and exits cleanly"
    finally:
        if tracker.poll() is None:
            tracker.kill()
    assert kills >= 3

    unique = {e.event_id: e for e in stream}
    async with pg_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM recap_events") == len(unique)
        assert await conn.fetchval("SELECT count(*) FROM recap_job_status_history") == sum(
            1 for e in unique.values() if history_entry(e) is not None
        )
        counts = await conn.fetch("SELECT article_count, status FROM recap_jobs")
        assert [(r["article_count"], r["status"]) for r in counts] == [(60, "completed")] * len(jobs)
        live = await projection(conn)
        await rebuild(conn)
        assert await projection(conn) == live
