"""The simulator's jobs, projected by the tracker, come out as the simulator meant them."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import redis.asyncio as aioredis

from tracker.consumer import Consumer
from tracker.settings import Settings
from tracker.simulator import SimOptions, Simulator, summary

# Fast, and with failures and stalls common enough that a short run has them all.
OPTIONS = SimOptions(
    rate=600, concurrency=8, speed=4000, jobs=30, seed=11, morning_every=600, failure_rate=0.15, stall_rate=0.1
)


async def drain(consumer: Consumer) -> None:
    """Project everything in the stream, then return (the tracker's burst mode)."""
    await consumer.setup()
    while await consumer.run_once(block_ms=0):
        pass


async def assert_projected(pg_pool: asyncpg.Pool, outcomes: dict) -> None:
    """The jobs, stages, genres and article counts in Postgres are what the simulator meant."""
    async with pg_pool.acquire() as conn:
        jobs = {r["job_id"]: r for r in await conn.fetch("SELECT * FROM recap_jobs")}
        stages = await conn.fetch("SELECT job_id, stage, status FROM recap_job_stages")
        genres = await conn.fetch("SELECT job_id, genre, status, attempts FROM recap_job_genres")
        articles = dict(await conn.fetch("SELECT job_id, count(*) FROM recap_job_articles GROUP BY job_id"))
        dead = await conn.fetchval("SELECT count(*) FROM recap_dead_letters")
    assert dead == 0
    assert jobs.keys() == outcomes.keys()
    for job_id, meant in outcomes.items():
        row = jobs[job_id]
        assert (row["status"], row["kind"], row["trigger_source"], row["user_id"], row["failed_stage"]) == (
            meant.status, meant.kind, meant.trigger_source, meant.user_id, meant.failed_stage
        ), job_id
        assert row["article_count"] == articles.get(job_id, 0) == meant.articles, job_id
    assert {(r["job_id"], r["stage"]): r["status"] for r in stages} == {
        (o.job_id, stage): status for o in outcomes.values() for stage, status in o.stages.items()
    }
    assert {(r["job_id"], r["genre"]): (r["status"], r["attempts"]) for r in genres} == {
        (o.job_id, genre): (g.status, g.attempts) for o in outcomes.values() for genre, g in o.genres.items()
    }


async def test_projection_matches_what_the_simulator_meant(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    consumer = Consumer(settings, redis, pg_pool)
    stop = asyncio.Event()
    projecting = asyncio.create_task(consumer.run(stop))
    report = await Simulator(redis, settings.events_stream, OPTIONS).run()
    stop.set()
    await projecting
    await drain(Consumer(settings, redis, pg_pool))  # a new one re-reads what the last read left pending

    outcomes = {o.job_id: o for o in report.outcomes}
    assert len(outcomes) == OPTIONS.jobs, summary(report)
    seen = Counter("stalled" if o.stalled else o.status for o in outcomes.values())
    assert seen.keys() == {"completed", "failed", "stalled"}, seen
    assert {o.kind for o in outcomes.values()} == {"recap", "morning"}
    assert {o.trigger_source for o in outcomes.values()} == {"system", "user"}
    genre_endings = Counter((g.status, g.attempts > 1) for o in outcomes.values() for g in o.genres.values())
    assert {("succeeded", True), ("partial", False), ("failed", True)} <= genre_endings.keys(), genre_endings

    await assert_projected(pg_pool, outcomes)


async def test_stopping_cancels_the_running_jobs(settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool) -> None:
    stop = asyncio.Event()
    simulator = Simulator(redis, settings.events_stream, SimOptions(speed=50, concurrency=3, rate=600, seed=3))
    running = asyncio.create_task(simulator.run(stop))
    await asyncio.sleep(0.5)
    stop.set()
    report = await running

    await drain(Consumer(settings, redis, pg_pool))
    assert report.outcomes and all(o.status == "cancelled" for o in report.outcomes)
    async with pg_pool.acquire() as conn:
        rows = dict(await conn.fetch("SELECT job_id, status FROM recap_jobs"))
        open_stages = await conn.fetchval("SELECT count(*) FROM recap_job_stages WHERE status = 'running'")
    assert rows == {o.job_id: "cancelled" for o in report.outcomes}
    assert open_stages == 0


async def test_stalled_jobs_are_failed_by_the_reaper(settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool) -> None:
    options = SimOptions(rate=600, speed=4000, jobs=3, seed=2, stall_rate=1.0, failure_rate=0.0, reap_after=0.2)
    report = await Simulator(redis, settings.events_stream, options).run()
    await drain(Consumer(settings, redis, pg_pool))
    assert all(o.stalled and o.status == "failed" and o.failed_stage for o in report.outcomes)
    await assert_projected(pg_pool, {o.job_id: o for o in report.outcomes})
