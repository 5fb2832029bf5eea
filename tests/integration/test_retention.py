"""`recap-status prune` removes old jobs whole, and `rebuild` still reproduces what is left."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg

from tests.factories import JobScript
from tests.projection_snapshot import event_log, projection
from tracker import events as ev
from tracker.projector import project_batch
from tracker.rebuild import rebuild
from tracker.retention import prune

NOW = datetime.now(timezone.utc)
CUTOFF = NOW - timedelta(days=30)


def job(start: datetime, ending: str | None, *, seconds: float = 60) -> JobScript:
    """A small recap job starting at `start`; its events are `seconds` apart."""
    script = JobScript(start=start)
    script.emit("job.started", seconds, genres=["tech", "world"], user_id=str(uuid.uuid4()), trigger_source="user")
    for stage in ("fetch", "preprocess"):
        script.emit("stage.started", seconds, stage=stage, total=10)
        script.emit("stage.progress", seconds, stage=stage, done=5)
        script.emit("stage.completed", seconds, stage=stage)
    script.emit("articles.added", seconds, articles=[{"article_id": f"a{i}", "feed_id": str(uuid.uuid4())} for i in range(3)])
    script.emit("genre.status", seconds, genre="tech", status="running", phase="clustering")
    script.emit("genre.status", seconds, genre="tech", status="partial", cluster_count=2, error="1 of 2")
    if ending == "failed":
        script.emit("job.failed", seconds, error="boom", stage="preprocess")
    elif ending:
        script.emit(f"job.{ending}", seconds)
    return script


async def project(pool: asyncpg.Pool, scripts: list[JobScript]) -> None:
    events: list[ev.AnyEvent] = [e for s in scripts for e in s.events]
    random.Random(5).shuffle(events)
    async with pool.acquire() as conn:
        for i in range(0, len(events), 50):
            await project_batch(conn, events[i : i + 50])


async def dead_letter(conn: asyncpg.Connection, received_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO recap_dead_letters (stream_id, reason, payload, received_at) VALUES ($1, 'bad', '{}', $2)",
        f"{uuid.uuid4().int % 10**12}-0", received_at,
    )


async def test_prune_removes_old_jobs_whole_and_rebuild_reproduces_the_rest(pg_pool: asyncpg.Pool) -> None:
    old = NOW - timedelta(days=40)
    pruned = [job(old, "completed"), job(old, "failed"), job(old, "cancelled"), job(old, None)]  # the last: abandoned
    kept = [
        job(NOW - timedelta(days=1), "completed"),
        job(NOW - timedelta(hours=1), None),  # running
        job(old, "completed", seconds=5 * 86_400),  # started 40 days ago, finished 10 days ago
        job(old, None, seconds=5 * 86_400),  # still heard of 10 days ago
    ]
    await project(pg_pool, pruned + kept)
    async with pg_pool.acquire() as conn:
        for received in (old, old, NOW):
            await dead_letter(conn, received)
        before = await projection(conn)
        log_before = await event_log(conn)

        would = await prune(conn, CUTOFF, dry_run=True)
        assert await projection(conn) == before  # a dry run removes nothing
        removed = await prune(conn, CUTOFF, batch=3)  # several batches

        assert removed == would
        n_events = sum(len(s.events) for s in pruned)
        assert removed == {
            "recap_events": n_events,
            "recap_job_status_history": 4 * 3 + 3,  # started + 2 stage starts each, and 3 endings
            "recap_job_articles": 4 * 3,
            "recap_job_genres": 4,
            "recap_job_stages": 4 * 2,
            "recap_jobs": 4,
            "recap_dead_letters": 2,
        }
        gone = {s.job_id for s in pruned}
        after = await projection(conn)
        assert after == {name: [r for r in rows if r["job_id"] not in gone] for name, rows in before.items()}
        assert await event_log(conn) == [e for e in log_before if e["job_id"] not in gone]
        assert await conn.fetchval("SELECT count(*) FROM recap_dead_letters") == 1

        await rebuild(conn)
        assert await projection(conn) == after
        assert await prune(conn, CUTOFF) == dict.fromkeys(removed, 0)


async def test_prune_command_reports_what_it_removed(pg_pool: asyncpg.Pool, database_url: str) -> None:
    await project(pg_pool, [job(NOW - timedelta(days=3), "completed"), job(NOW, "completed")])
    env = {**os.environ, "DATABASE_URL": database_url, "RECAP_RETENTION_DAYS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from tracker.cli import main; sys.exit(main())", "prune"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "removed 1 jobs and 0 dead letters" in out
    assert "recap_jobs                            1" in out
    async with pg_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM recap_jobs") == 1
