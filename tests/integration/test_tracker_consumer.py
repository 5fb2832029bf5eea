"""The tracker's Redis loop over a real Redis and Postgres: dead letters, pending
re-reads, claiming from dead consumers, acknowledgement after commit."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.factories import JobScript
from tracker import events as ev
from tracker.consumer import GROUP, Consumer
from tracker.settings import Settings


async def drain(consumer: Consumer) -> None:
    while await consumer.run_once(block_ms=0):
        pass


def valid_json(job: JobScript, type_: str, **fields) -> bytes:
    return ev.encode_event(job.emit(type_, **fields))


async def test_each_kind_of_bad_entry_is_dead_lettered_and_valid_ones_around_it_applied(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    job = JobScript()
    good = lambda t, **f: {"event": valid_json(job, t, **f)}  # noqa: E731
    base = json.loads(ev.encode_event(JobScript(job.job_id).emit("stage.started", stage="fetch")))
    bad_entries = {
        "no event field": {"payload": b"{}"},
        "not JSON": {"event": b"{not json"},
        "unknown type": {"event": json.dumps({**base, "type": "job.exploded"}).encode()},
        "missing field": {"event": json.dumps({k: v for k, v in base.items() if k != "stage"}).encode()},
        "wrong type": {"event": json.dumps({**base, "seq": "seven"}).encode()},
        "bad uuid": {"event": json.dumps({**base, "job_id": "not-a-uuid"}).encode()},
        "negative seq": {"event": json.dumps({**base, "seq": -1}).encode()},
        "NUL in text": {"event": json.dumps({**base, "stage": "fe\u0000tch"}).encode()},
        "oversized": {"event": json.dumps({**base, "pad": "x" * (settings.max_event_bytes + 1)}).encode()},
    }
    await redis.xadd(settings.events_stream, good("job.started"))
    for entry in bad_entries.values():
        await redis.xadd(settings.events_stream, entry)
        await redis.xadd(settings.events_stream, good("job.heartbeat"))
    await redis.xadd(settings.events_stream, good("job.completed"))

    consumer = Consumer(settings, redis, pg_pool)
    await consumer.setup()
    await drain(consumer)

    async with pg_pool.acquire() as conn:
        reasons = [r["reason"] for r in await conn.fetch("SELECT reason FROM recap_dead_letters ORDER BY id")]
        applied = await conn.fetchval("SELECT count(*) FROM recap_events")
        status = await conn.fetchval("SELECT status FROM recap_jobs WHERE job_id = $1", job.job_id)
    assert len(reasons) == len(bad_entries)
    for reason, expected in zip(reasons, ["no 'event' field", "not valid JSON", "invalid event: Invalid value 'job.exploded'",
                                          "invalid event: Object missing required field `stage`", "Expected `int`", "Invalid UUID",
                                          "Expected `int` >= 0", "Expected `str` without NUL characters", "over the limit"]):
        assert expected in reason
    assert applied == len(job.events) == 2 + len(bad_entries)
    assert status == "completed"
    dead = await redis.xrange(settings.dead_stream)
    assert len(dead) == len(bad_entries) and all(fields[b"reason"] for _, fields in dead)
    assert (await redis.xpending(settings.events_stream, GROUP))["pending"] == 0


async def test_restart_rereads_own_pending_entries(settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool) -> None:
    job = JobScript()
    consumer = Consumer(settings, redis, pg_pool)
    await consumer.setup()
    for t in ("job.started", "job.heartbeat", "job.completed"):
        await redis.xadd(settings.events_stream, {"event": valid_json(job, t)})
    # A crash after delivery, before the commit: entries are pending for this consumer.
    await redis.xreadgroup(GROUP, consumer.name, {settings.events_stream: ">"}, count=10)
    assert (await redis.xpending(settings.events_stream, GROUP))["pending"] == 3

    restarted = Consumer(settings, redis, pg_pool)
    await drain(restarted)
    async with pg_pool.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM recap_jobs") == "completed"
    assert (await redis.xpending(settings.events_stream, GROUP))["pending"] == 0


async def test_entries_of_a_dead_consumer_are_claimed(settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool) -> None:
    job = JobScript()
    fast_claim = Settings(**{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "claim_idle_ms": 1})
    await Consumer(fast_claim, redis, pg_pool).setup()
    await redis.xadd(settings.events_stream, {"event": valid_json(job, "job.started")})
    await redis.xreadgroup(GROUP, "dead-consumer", {settings.events_stream: ">"}, count=10)
    await asyncio.sleep(0.01)  # idle longer than claim_idle_ms

    survivor = Consumer(Settings(**{**{f: getattr(fast_claim, f) for f in settings.__struct_fields__}, "consumer_name": "survivor"}), redis, pg_pool)
    await drain(survivor)
    async with pg_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM recap_jobs") == 1
    assert (await redis.xpending(settings.events_stream, GROUP))["pending"] == 0


async def test_an_entry_that_keeps_failing_is_dead_lettered(settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool) -> None:
    job = JobScript()
    consumer = Consumer(settings, redis, pg_pool)
    await consumer.setup()
    await redis.xadd(settings.events_stream, {"event": valid_json(job, "job.started")})
    for _ in range(settings.max_deliveries):  # delivered, then the process died each time
        await redis.xreadgroup(GROUP, consumer.name, {settings.events_stream: "0"}, count=10)
        if not (await redis.xpending(settings.events_stream, GROUP))["pending"]:
            await redis.xreadgroup(GROUP, consumer.name, {settings.events_stream: ">"}, count=10)
    await drain(Consumer(settings, redis, pg_pool))
    async with pg_pool.acquire() as conn:
        reason = await conn.fetchval("SELECT reason FROM recap_dead_letters")
    assert reason is not None and "delivered" in reason


@pytest.mark.parametrize("copies", [2, 5])
async def test_a_resent_event_is_applied_once(settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool, copies: int) -> None:
    job = JobScript()
    articles = job.emit("articles.added", articles=[{"article_id": "a1"}, {"article_id": "a2"}])
    for _ in range(copies):
        await redis.xadd(settings.events_stream, {"event": ev.encode_event(articles)})
    consumer = Consumer(settings, redis, pg_pool)
    await consumer.setup()
    await drain(consumer)
    async with pg_pool.acquire() as conn:
        assert await conn.fetchval("SELECT article_count FROM recap_jobs WHERE job_id = $1", job.job_id) == 2
        assert await conn.fetchval("SELECT count(*) FROM recap_events") == 1
    assert consumer.counters.duplicates == copies - 1


async def test_a_job_without_events_for_stall_after_is_reported_stalled(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    quiet = JobScript()  # its events are from weeks ago (factories.T0)
    await redis.xadd(settings.events_stream, {"event": valid_json(quiet, "job.started")})
    finished = JobScript()
    await redis.xadd(settings.events_stream, {"event": valid_json(finished, "job.started")})
    await redis.xadd(settings.events_stream, {"event": valid_json(finished, "job.completed")})
    consumer = Consumer(settings, redis, pg_pool)
    await consumer.setup()
    await drain(consumer)
    await consumer._housekeeping()
    stalled = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert len(stalled) == 1 and str(quiet.job_id) in stalled[0] and str(finished.job_id) not in stalled[0]


async def test_the_tracker_carries_on_when_redis_loses_the_stream(
    settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    fast = Settings(**{**{f: getattr(settings, f) for f in settings.__struct_fields__}, "block_ms": 50})
    consumer = Consumer(fast, redis, pg_pool)
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    job = JobScript()
    try:
        await redis.xadd(settings.events_stream, {"event": valid_json(job, "job.started")})
        await asyncio.sleep(0.3)
        await redis.delete(settings.events_stream)  # a FLUSHALL, or a restart without persistence
        consumer._last_trim = 0.0
        await consumer._housekeeping()  # against the missing stream: nothing to trim, no error
        await asyncio.sleep(0.3)
        await consumer.setup()  # a producer's first XADD would recreate the stream, not the group
        await redis.xadd(settings.events_stream, {"event": valid_json(job, "job.completed")})
        for _ in range(50):
            async with pg_pool.acquire() as conn:
                if await conn.fetchval("SELECT status FROM recap_jobs") == "completed":
                    break
            await asyncio.sleep(0.1)
        assert not running.done(), "the tracker is still running"
        async with pg_pool.acquire() as conn:
            assert await conn.fetchval("SELECT status FROM recap_jobs") == "completed"
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)
