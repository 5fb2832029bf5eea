"""A Postgres outage is waited out: the tracker process keeps running, retries the
batch in hand, and dead-letters nothing that was valid."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.factories import JobScript
from tracker import events as ev
from tracker.embedded import create_database, start_postgres
from tracker.migrate import migrate
from tracker.settings import Settings

pytestmark = pytest.mark.slow


async def test_events_sent_while_postgres_is_down_are_applied_after(settings: Settings, redis: aioredis.Redis) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="recap-outage-", dir="/tmp"))
    admin, stop = start_postgres(data_dir)
    url = await create_database(admin, "outage")
    await migrate(url)
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": settings.redis_url,
           "RECAP_EVENTS_STREAM": settings.events_stream, "RECAP_DELTAS_STREAM": settings.deltas_stream,
           "RECAP_BLOCK_MS": "100", "RECAP_MAX_DELIVERIES": "2", "RECAP_LOG_LEVEL": "WARNING"}
    tracker = subprocess.Popen([sys.executable, "-m", "tracker"], env=env, stderr=subprocess.PIPE, text=True)
    job = JobScript()
    try:
        await redis.xadd(settings.events_stream, {"event": ev.encode_event(job.emit("job.started"))})
        stop()  # Postgres goes away
        for type_ in ("job.heartbeat", "job.completed"):
            await redis.xadd(settings.events_stream, {"event": ev.encode_event(job.emit(type_))})
        await asyncio.sleep(3)  # several retries, more than RECAP_MAX_DELIVERIES
        admin, stop = start_postgres(data_dir)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            conn = await asyncpg.connect(url)
            try:
                status = await conn.fetchval("SELECT status FROM recap_jobs")
                dead = await conn.fetchval("SELECT count(*) FROM recap_dead_letters")
            finally:
                await conn.close()
            if status == "completed":
                break
            await asyncio.sleep(0.2)
        assert (status, dead) == ("completed", 0)
        assert tracker.poll() is None, "the tracker kept running through the outage"
    finally:
        tracker.send_signal(signal.SIGTERM)
        stderr = tracker.communicate(timeout=20)[1]
        stop()
    assert "Postgres unreachable" in stderr and "Traceback" not in stderr
