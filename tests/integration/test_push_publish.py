"""The publisher and the epoch on a real Redis: dense offsets under concurrent
trackers, and a new epoch whenever the history may have been lost."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import msgspec
import redis.asyncio as aioredis

from pusher.deltas import Change, epoch_key, offset_of
from pusher.publish import Publisher, make_publisher, new_epoch
from tracker.fold import JobRow
from tracker.settings import Settings

NOW = datetime.now(timezone.utc)


def change() -> Change:
    return Change(job=JobRow(job_id=uuid.uuid4(), kicked_at=NOW, updated_at=NOW, last_event_at=NOW, version=1))


async def test_concurrent_publishers_get_dense_increasing_offsets(settings: Settings, redis: aioredis.Redis) -> None:
    clients = [aioredis.Redis.from_url(settings.redis_url) for _ in range(4)]
    publishers = [Publisher(c, settings) for c in clients]
    try:
        await asyncio.gather(*(p.publish([change(), change()]) for _ in range(25) for p in publishers))
    finally:
        for c in clients:
            await c.aclose()
    entries = await redis.xrange(settings.deltas_stream)
    assert [offset_of(eid) for eid, _ in entries] == list(range(1, 201))
    assert len({fields[b"e"] for _, fields in entries}) == 1


async def test_the_stream_is_capped(settings: Settings, redis: aioredis.Redis) -> None:
    settings = msgspec.structs.replace(settings, deltas_maxlen=50)
    publisher = Publisher(redis, settings)
    for _ in range(10):
        await publisher.publish([change() for _ in range(100)])
    assert await redis.xlen(settings.deltas_stream) < 250  # approximate trimming: whole stream nodes


async def test_the_epoch_changes_when_the_history_is_gone(settings: Settings, redis: aioredis.Redis) -> None:
    publisher = Publisher(redis, settings)
    first = await publisher.publish([change()])
    assert (await publisher.publish([change()])).epoch == first.epoch  # stable while the stream lives

    await redis.delete(settings.deltas_stream)  # deleted
    deleted = await publisher.publish([change()])
    assert deleted.epoch != first.epoch and deleted.offset == 1

    await redis.delete(settings.deltas_stream, epoch_key(settings.deltas_stream))  # flushed
    flushed = await publisher.publish([change()])
    assert flushed.epoch not in (first.epoch, deleted.epoch) and flushed.offset == 1

    rebuilt = await new_epoch(redis, settings)  # `recap-status rebuild`
    after = await publisher.publish([change()])
    assert after.epoch == rebuilt and after.offset == 1  # the first entry keeps the rebuild's epoch
    assert (await publisher.publish([change()])).epoch == rebuilt


async def test_a_tracker_that_did_not_stop_cleanly_starts_a_new_epoch(settings: Settings, redis: aioredis.Redis) -> None:
    first = await make_publisher(settings)
    epoch = (await first.publish([change()])).epoch
    # Killed: no aclose. The next start cannot know whether it published all it committed.
    second = await make_publisher(settings)
    restarted = (await second.publish([change()])).epoch
    assert restarted != epoch
    await second.aclose()
    third = await make_publisher(settings)  # a clean stop before: the history is whole
    assert (await third.publish([change()])).epoch == restarted
    await third.aclose()
    await first.aclose()


async def test_deltas_lost_to_a_long_outage_start_a_new_epoch(settings: Settings, redis: aioredis.Redis) -> None:
    from tracker.projector import BatchResult

    publisher = Publisher(redis, settings, retry_delays=(0.01,))
    before = (await publisher.publish([change()])).epoch
    real_publish, failures = publisher.publish, [0]

    async def unreachable(changes):
        failures[0] += 1
        raise aioredis.ConnectionError("Redis is down")

    publisher.publish = unreachable  # type: ignore[method-assign]
    batch = BatchResult(received=1, applied=1, jobs=[change().job])
    try:
        await publisher(batch)
    except aioredis.ConnectionError:
        pass
    else:
        raise AssertionError("a publish that never got through must fail the batch")
    assert failures[0] == 2  # tried, retried once, gave up
    publisher.publish = real_publish  # type: ignore[method-assign]
    await publisher(batch)
    entries = await redis.xrange(settings.deltas_stream)
    assert [offset_of(eid) for eid, _ in entries] == [1]  # the old history is gone with its hole
    assert entries[0][1][b"e"].decode() != before
