"""Each endpoint's JSON, field by field, against ../shared/seed/API.md, with events
emitted into Redis and projected by the real tracker consumer."""

from __future__ import annotations

import uuid

import asyncpg
import msgspec
import redis.asyncio as aioredis

from tests.factories import JobScript
from tests.integration.test_api_support import (
    ALICE,
    ALICE_ID,
    SEED_STATS,
    Api,
    api,  # noqa: F401 - fixture
    assert_progress_shape,
    assert_shape,
    is_timestamp,
    is_uuid,
    project,
    run_stages,
    script,
)
from tracker import events as ev
from tracker.consumer import Consumer
from tracker.settings import Settings
from tracker.statuses import DEFAULT_STAGES

FEED_A, FEED_B = uuid.UUID(int=0xFEED1), uuid.UUID(int=0xFEED2)


async def emit_and_track(settings: Settings, redis: aioredis.Redis, pool: asyncpg.Pool, *jobs: JobScript) -> None:
    """XADD every event as a producer would, then run the tracker until the stream is drained."""
    for job in jobs:
        for event in job.events:
            await redis.xadd(settings.events_stream, {ev.EVENT_FIELD: ev.encode_event(event)})
    consumer = Consumer(settings, redis, pool)
    await consumer.setup()
    while await consumer.run_once(block_ms=0):
        pass


def running_job() -> JobScript:
    """Alice's job, in its sixth stage, with genres in several phases and articles of two feeds."""
    job = script(600, trigger_source="user", user_id=ALICE_ID, genres=["tech", "world", "sports"], note="n")
    job.emit("articles.added", articles=[
        {"article_id": "a1", "feed_id": str(FEED_A), "original_user_id": str(ALICE_ID)},
        {"article_id": "a2", "feed_id": str(FEED_B), "original_user_id": str(ALICE_ID)},
        {"article_id": "a3", "feed_id": str(FEED_B)},
    ])  # fmt: skip
    run_stages(job, DEFAULT_STAGES[:5])
    job.emit("stage.started", stage="evidence", total=30)
    job.emit("stage.progress", stage="evidence", done=12)
    job.emit("genre.status", genre="tech", status="succeeded", phase="summarization", cluster_count=4, article_count=20)
    job.emit("genre.status", genre="world", status="running", phase="evidence")
    return job


def finished_jobs() -> list[JobScript]:
    done = script(7200)
    run_stages(done, DEFAULT_STAGES)
    done.emit("job.completed", seconds=0)
    failed = script(5000)
    run_stages(failed, DEFAULT_STAGES[:2])
    failed.emit("stage.failed", stage="dedup", error="dedup exploded")
    failed.emit("job.failed", stage="dedup", error="dedup exploded")
    return [done, failed]


async def test_job_progress_matches_the_seed_shape(
    api: Api, settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    running = running_job()
    done, failed = finished_jobs()
    await emit_and_track(settings, redis, pg_pool, running, done, failed)

    body = await api.ok("/v1/dashboard/job-progress")
    assert_progress_shape(body)

    active = body["active_job"]
    assert active["job_id"] == str(running.job_id)
    assert active["current_stage"] == "evidence"
    assert active["stage_index"] == 5
    assert active["stages_completed"] == ["fetch", "preprocess", "dedup", "genre", "select"]
    assert active["total_articles"] == 3
    assert active["user_article_count"] is None  # no user in effect: admin without ?user_id=
    assert active["trigger_source"] == "user"
    genres = active["genre_progress"]
    assert list(genres) == ["tech", "world", "sports"]  # as declared by job.started
    fields = ("status", "cluster_count", "article_count", "phase", "attempts")
    assert [tuple(g[f] for f in fields) for g in genres.values()] == [
        ("succeeded", 4, 20, "summarization", 1),
        ("running", None, None, "evidence", 1),
        ("pending", None, None, None, 0),
    ]
    # world is still gathering evidence and sports has not started: one of three is past evidence.
    assert active["sub_stage_progress"] == {"phase": "evidence_building", "total_genres": 3, "completed_genres": 1}
    evidence = active["stages"][5]
    assert [evidence[k] for k in ("stage", "status", "done", "total")] == ["evidence", "running", 12, 30]
    assert [s["status"] for s in active["stages"][6:]] == ["pending", "pending"]
    assert body["active_jobs"] == [active]

    recent = {j["job_id"]: j for j in body["recent_jobs"]}
    assert set(recent) == {str(running.job_id), str(done.job_id), str(failed.job_id)}
    assert [j["job_id"] for j in body["recent_jobs"]] == [str(running.job_id), str(failed.job_id), str(done.job_id)]
    assert recent[str(running.job_id)]["duration_secs"] is None
    assert recent[str(done.job_id)]["status"] == "completed"
    assert recent[str(done.job_id)]["duration_secs"] == 80  # eight stages of 10 s
    assert recent[str(done.job_id)]["last_stage"] == "persist"
    assert recent[str(failed.job_id)]["status"] == "failed"
    assert recent[str(failed.job_id)]["last_stage"] == "dedup"
    history = recent[str(failed.job_id)]["status_history"]
    assert [(h["status"], h["stage"]) for h in history] == [
        ("running", None), ("running", "fetch"), ("running", "preprocess"), ("failed", "dedup"), ("failed", "dedup"),
    ]  # fmt: skip
    assert history[-1]["reason"] == "dedup exploded"
    assert all(h["actor"] == "system" for h in history)
    assert body["user_context"] is None
    assert body["stats"]["total_jobs_24h"] == 3
    assert body["stats"]["running_jobs"] == 1


async def test_user_context_and_user_article_count(
    api: Api, settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    running = running_job()
    await emit_and_track(settings, redis, pg_pool, running, *finished_jobs())

    for token, query in ((ALICE, {}), (None, {"user_id": str(ALICE_ID)})):
        body = await api.ok("/v1/dashboard/job-progress", **({"token": token} if token else {}), **query)
        assert_progress_shape(body)
        assert body["user_context"] == {
            "user_article_count": 2,
            "user_jobs_count": 1,
            "user_feed_ids": sorted([str(FEED_A), str(FEED_B)]),
            "user_id": str(ALICE_ID),
        }
        assert body["active_job"]["user_article_count"] == 2
        assert [j["job_id"] for j in body["recent_jobs"]] == [str(running.job_id)]


async def test_job_stats_matches_the_seed_shape(
    api: Api, settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    await emit_and_track(settings, redis, pg_pool, running_job(), *finished_jobs())

    stats = await api.ok("/v1/dashboard/job-stats")
    assert_shape(stats, SEED_STATS, "job-stats")
    assert stats["success_rate_24h"] == 0.5
    assert stats["total_jobs_24h"] == 3
    assert stats["running_jobs"] == 1
    assert stats["failed_jobs_24h"] == 1
    assert stats["window"] == 86400
    assert stats["kind"] == "recap"
    assert stats["by_kind"]["morning"] == {
        "total": 0, "completed": 0, "failed": 0, "cancelled": 0, "running": 0, "stalled": 0
    }  # fmt: skip
    assert [s["stage"] for s in stats["stage_durations"]] == list(DEFAULT_STAGES)
    assert all(s["avg_duration_secs"] == 10.0 for s in stats["stage_durations"])
    # the progress response embeds the same object
    progress = await api.ok("/v1/dashboard/job-progress")
    assert progress["stats"] == stats


async def test_job_detail_has_the_whole_job(
    api: Api, settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    running = running_job()
    await emit_and_track(settings, redis, pg_pool, running)

    job = await api.ok(f"/v1/dashboard/jobs/{running.job_id}", events=5)
    assert job["job_id"] == str(running.job_id)
    assert (job["status"], job["current_stage"], job["stage_index"], job["note"]) == ("running", "evidence", 5, "n")
    assert [s["stage"] for s in job["stages"]] == list(DEFAULT_STAGES)
    fetch = job["stages"][0]
    assert fetch["status"] == "completed" and fetch["duration_secs"] == 10.0 and fetch["attempts"] == 1
    assert is_timestamp(fetch["started_at"]) and is_timestamp(fetch["finished_at"])
    genres = {g["genre"]: g["status"] for g in job["genres"]}
    assert genres == {"sports": "pending", "tech": "succeeded", "world": "running"}
    assert (job["article_count"], job["feed_count"]) == (3, 2)
    assert job["status_history"][0]["status"] == "running"
    last = len(running.events) - 1
    assert [e["seq"] for e in job["last_events"]] == [last, last - 1, last - 2, last - 3, last - 4]
    assert job["last_events"][0]["type"] == "genre.status"
    assert job["last_events"][0]["payload"]["genre"] == "world"
    assert all(is_uuid(e["event_id"]) for e in job["last_events"])

    everything = await api.ok(f"/v1/dashboard/jobs/{running.job_id}", events=500)
    articles = next(e for e in everything["last_events"] if e["type"] == "articles.added")
    assert articles["payload"]["article_count"] == 3 and "articles" not in articles["payload"]


async def test_dead_letters_list_rejected_entries(
    api: Api, settings: Settings, redis: aioredis.Redis, pg_pool: asyncpg.Pool
) -> None:
    await redis.xadd(settings.events_stream, {ev.EVENT_FIELD: b'{"type": "job.started"}'})
    await redis.xadd(settings.events_stream, {b"other": b"x"})
    await emit_and_track(settings, redis, pg_pool)

    body = await api.ok("/v1/dashboard/dead-letters")
    assert body["total"] == 2
    reasons = [d["reason"] for d in body["dead_letters"]]
    assert any("event_id" in r for r in reasons) and any("'event' field" in r for r in reasons)
    assert all(is_timestamp(d["received_at"]) for d in body["dead_letters"])
    assert (await api.get("/v1/dashboard/dead-letters", token=ALICE))[0] == 403


async def test_event_schema_is_the_tracker_schema(api: Api) -> None:
    assert await api.ok("/v1/schema/events") == msgspec.json.decode(msgspec.json.encode(ev.event_json_schema()))


async def test_stalled_is_shown_not_stored(api: Api, pg_pool: asyncpg.Pool) -> None:
    quiet = script(3600)  # running, last event an hour ago (RECAP_STALL_AFTER is 300 s)
    quiet.emit("stage.started", seconds=60, stage="fetch")
    busy = script(30)
    await project(pg_pool, quiet, busy)

    body = await api.ok("/v1/dashboard/job-progress")
    stalled = {j["job_id"]: j["stalled"] for j in body["active_jobs"]}
    assert stalled == {str(quiet.job_id): True, str(busy.job_id): False}
    assert {j["status"] for j in body["recent_jobs"]} == {"running"}
    assert body["stats"]["stalled_jobs"] == 1 and body["stats"]["running_jobs"] == 2
    only = await api.ok("/v1/dashboard/job-progress", status="stalled")
    assert [j["job_id"] for j in only["recent_jobs"]] == [str(quiet.job_id)]
    async with pg_pool.acquire() as conn:
        assert await conn.fetchval("SELECT status FROM recap_jobs WHERE job_id = $1", quiet.job_id) == "running"


async def test_filters_of_the_recent_jobs(api: Api, pg_pool: asyncpg.Pool) -> None:
    system_recap = script(500)
    system_recap.emit("job.completed")
    user_recap = script(400, trigger_source="user", user_id=ALICE_ID)
    user_recap.emit("job.failed", error="x")
    morning = script(300, kind="morning")
    morning.emit("job.cancelled", reason="operator")
    old = script(10 * 86400)
    old.emit("job.completed")
    await project(pg_pool, system_recap, user_recap, morning, old)

    async def listed(**query: object) -> list[str]:
        return [j["job_id"] for j in (await api.ok("/v1/dashboard/job-progress", **query))["recent_jobs"]]

    assert await listed() == [str(morning.job_id), str(user_recap.job_id), str(system_recap.job_id)]
    assert await listed(window=30 * 86400) == [str(j.job_id) for j in (morning, user_recap, system_recap, old)]
    assert await listed(kind="morning") == [str(morning.job_id)]
    assert await listed(trigger_source="user") == [str(user_recap.job_id)]
    assert await listed(status=["failed", "cancelled"]) == [str(morning.job_id), str(user_recap.job_id)]
    assert await listed(limit=1) == [str(morning.job_id)]
    morning_stats = (await api.ok("/v1/dashboard/job-progress", kind="morning"))["stats"]
    assert [morning_stats[k] for k in ("kind", "total_jobs_24h", "cancelled_jobs_24h")] == ["morning", 1, 1]
