"""`recap-status rebuild` restores the projection from the event log and moves
live clients to a new delta epoch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from tests.factories import JobScript
from tests.projection_snapshot import projection
from tracker.projector import project_batch
from tracker.settings import Settings

RECAP_STATUS = str(Path(sys.executable).with_name("recap-status"))


async def test_rebuild_restores_a_damaged_projection(settings: Settings, pg_pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
    jobs = []
    for _ in range(3):
        job = JobScript()
        job.emit("job.started", genres=["tech"])
        job.emit("stage.started", stage="fetch", total=5)
        job.emit("genre.status", genre="tech", status="partial", cluster_count=1)
        job.emit("articles.added", articles=[{"article_id": "a"}, {"article_id": "b"}])
        job.emit("job.completed")
        jobs.append(job)
    async with pg_pool.acquire() as conn:
        await project_batch(conn, [e for job in jobs for e in job.events])
        expected = await projection(conn)
        await conn.execute("UPDATE recap_jobs SET status = 'failed', article_count = 0")
        await conn.execute("DELETE FROM recap_job_genres")

    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "RECAP_DELTAS_STREAM": settings.deltas_stream}
    done = subprocess.run([RECAP_STATUS, "rebuild"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "rebuilt the projection from 15 events" in done.stdout
    assert "15/15 events" in done.stderr  # the progress bar's last line
    assert "delta epoch is now" in done.stdout

    async with pg_pool.acquire() as conn:
        assert await projection(conn) == expected
