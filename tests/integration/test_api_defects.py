"""One regression test per defect of the original system (../shared/DESIGN.md, 1 to 12),
with events applied by the real projector to a real Postgres."""

from __future__ import annotations

import random
import uuid

import asyncpg
import pytest

from tests.factories import JobScript
from tests.integration.test_api_support import (
    ADMIN,
    ALICE,
    ALICE_ID,
    BOB,
    BOB_ID,
    METRICS,
    Api,
    QueryCounter,
    api,  # noqa: F401 - fixture
    project,
    run_stages,
    script,
)
from tracker.statuses import DEFAULT_STAGES
from web import api as web_api
from web.keys import POOL

PROGRESS = "/v1/dashboard/job-progress"
STATS = "/v1/dashboard/job-stats"


def finished(kind: str, outcome: str, start_ago: float = 3600, seconds: float = 0.0) -> JobScript:
    job = script(start_ago, kind=kind)
    job.emit(f"job.{outcome}", seconds=seconds, **({"error": "boom"} if outcome == "failed" else {}))
    return job


async def test_defect_01_morning_runs_not_counted_as_failures(api: Api, pg_pool: asyncpg.Pool) -> None:
    recap = [finished("recap", "completed"), finished("recap", "completed"), finished("recap", "failed")]
    morning = [finished("morning", "completed") for _ in range(48)]
    await project(pg_pool, *recap, *morning)

    stats = await api.ok(STATS)
    assert stats["kind"] == "recap"
    assert stats["total_jobs_24h"] == 3
    assert stats["success_rate_24h"] == pytest.approx(2 / 3)
    assert stats["by_kind"]["morning"]["total"] == 48
    morning_stats = await api.ok(STATS, kind="morning")
    assert (morning_stats["total_jobs_24h"], morning_stats["success_rate_24h"]) == (48, 1.0)
    progress = await api.ok(PROGRESS)
    assert progress["stats"]["success_rate_24h"] == pytest.approx(2 / 3)


async def test_defect_02_durations_over_finished_jobs_only(api: Api, pg_pool: asyncpg.Pool) -> None:
    short, long = finished("recap", "completed", seconds=100), finished("recap", "failed", seconds=300)
    still_running = script(36_000)
    still_running.emit("stage.started", stage="fetch")
    await project(pg_pool, short, long, still_running)

    stats = await api.ok(STATS)
    assert stats["avg_duration_secs"] == 200
    assert stats["p50_duration_secs"] == 200.0
    assert stats["p95_duration_secs"] == pytest.approx(290.0)  # interpolated between 100 and 300
    assert stats["running_jobs"] == 1


async def test_defect_03_zero_shown_as_zero(api: Api, pg_pool: asyncpg.Pool) -> None:
    empty = await api.ok(STATS)
    assert (empty["success_rate_24h"], empty["total_jobs_24h"], empty["running_jobs"], empty["failed_jobs_24h"]) == (
        0.0, 0, 0, 0,
    )  # fmt: skip
    assert empty["avg_duration_secs"] is None  # no finished job: no average, not a fake zero

    await project(pg_pool, finished("recap", "failed", seconds=0))
    stats = await api.ok(STATS)
    assert stats["success_rate_24h"] == 0.0
    assert stats["avg_duration_secs"] == 0
    assert stats["p50_duration_secs"] == 0.0
    assert stats["failed_jobs_24h"] == 1


async def test_defect_04_job_visible_while_first_stage_runs(api: Api, pg_pool: asyncpg.Pool) -> None:
    job = script(30)
    job.emit("stage.started", stage="fetch", total=1200)
    job.emit("stage.progress", stage="fetch", done=300)
    await project(pg_pool, job)

    active = (await api.ok(PROGRESS))["active_job"]
    assert active["job_id"] == str(job.job_id)
    assert (active["current_stage"], active["stage_index"], active["stages_completed"]) == ("fetch", 0, [])
    fetch = active["stages"][0]
    assert (fetch["status"], fetch["done"], fetch["total"]) == ("running", 300, 1200)
    assert fetch["started_at"] is not None and fetch["finished_at"] is None


async def test_defect_05_every_running_job_listed(api: Api, pg_pool: asyncpg.Pool) -> None:
    jobs = [script(start_ago) for start_ago in (300, 200, 100)]
    await project(pg_pool, *jobs, finished("recap", "completed"))

    body = await api.ok(PROGRESS)
    assert [j["job_id"] for j in body["active_jobs"]] == [str(j.job_id) for j in reversed(jobs)]
    assert body["active_job"]["job_id"] == str(jobs[-1].job_id)  # the most recently started
    assert body["stats"]["running_jobs"] == 3


async def test_defect_06_partial_genres_and_retry_attempts(api: Api, pg_pool: asyncpg.Pool) -> None:
    job = script(60, genres=["tech"])
    job.emit("genre.status", genre="tech", status="running", phase="clustering")
    job.emit("genre.status", genre="tech", status="failed", error="llm timeout")
    job.emit("genre.status", genre="tech", status="running", phase="summarization")
    job.emit("genre.status", genre="tech", status="partial", cluster_count=3, article_count=40)
    await project(pg_pool, job)

    genre = (await api.ok(PROGRESS))["active_job"]["genre_progress"]["tech"]
    assert (genre["status"], genre["attempts"], genre["cluster_count"]) == ("partial", 2, 3)
    detail = await api.ok(f"/v1/dashboard/jobs/{job.job_id}")
    assert [(g["genre"], g["status"], g["attempts"]) for g in detail["genres"]] == [("tech", "partial", 2)]


async def test_defect_07_completed_stages_in_pipeline_order(api: Api, pg_pool: asyncpg.Pool) -> None:
    job = script(600)
    run_stages(job, DEFAULT_STAGES[:5])  # fetch, preprocess, dedup, genre, select: not alphabetical
    job.emit("stage.started", stage="evidence")
    events = list(job.events)
    random.Random(7).shuffle(events)  # arrival order does not matter either
    await project(pg_pool, events)

    active = (await api.ok(PROGRESS))["active_job"]
    assert active["stages_completed"] == ["fetch", "preprocess", "dedup", "genre", "select"]
    assert [s["stage"] for s in active["stages"]] == list(DEFAULT_STAGES)


async def test_defect_08_stage_durations_are_their_own(api: Api, pg_pool: asyncpg.Pool) -> None:
    job = script(600)
    durations = {"fetch": 5.0, "preprocess": 10.0, "dedup": 20.0, "genre": 40.0}
    for stage, seconds in durations.items():
        job.emit("stage.started", seconds=0, stage=stage)
        job.emit("stage.completed", seconds=seconds, stage=stage)
    job.emit("job.completed", seconds=0)
    await project(pg_pool, job)

    detail = await api.ok(f"/v1/dashboard/jobs/{job.job_id}")
    assert {s["stage"]: s["duration_secs"] for s in detail["stages"][:4]} == durations
    assert detail["duration_secs"] == 75
    stats = await api.ok(STATS)
    assert {s["stage"]: s["avg_duration_secs"] for s in stats["stage_durations"]} == durations


async def test_defect_09_user_filter_returns_user_jobs_and_articles(api: Api, pg_pool: asyncpg.Pool) -> None:
    feed = uuid.UUID(int=77)
    alices = script(300, trigger_source="user", user_id=ALICE_ID)
    mine = {"article_id": "x1", "feed_id": str(feed), "original_user_id": str(ALICE_ID)}
    alices.emit("articles.added", articles=[mine])
    bobs = script(200, trigger_source="user", user_id=BOB_ID)
    system = script(100)  # a system job that also carries two of Alice's articles
    system.emit("articles.added", articles=[
        {"article_id": "x1", "feed_id": str(feed), "original_user_id": str(ALICE_ID)},
        {"article_id": "x2", "feed_id": str(feed), "original_user_id": str(ALICE_ID)},
        {"article_id": "y1", "original_user_id": str(BOB_ID)},
    ])  # fmt: skip
    await project(pg_pool, alices, bobs, system)

    body = await api.ok(PROGRESS, user_id=str(ALICE_ID))
    assert [j["job_id"] for j in body["recent_jobs"]] == [str(alices.job_id)]
    assert [j["user_id"] for j in body["active_jobs"]] == [str(ALICE_ID)]
    assert body["user_context"] == {
        "user_article_count": 2,  # x1 (in two jobs) and x2
        "user_jobs_count": 1,
        "user_feed_ids": [str(feed)],
        "user_id": str(ALICE_ID),
    }
    assert body["active_job"]["user_article_count"] == 1
    everyone = await api.ok(PROGRESS)
    assert len(everyone["recent_jobs"]) == 3 and everyone["user_context"] is None


async def test_defect_10_auth_required_and_user_scoped(api: Api, pg_pool: asyncpg.Pool) -> None:
    alices, bobs, system = script(300, user_id=ALICE_ID), script(200, user_id=BOB_ID), script(100)
    await project(pg_pool, alices, bobs, system)

    for token in (None, "not-a-token"):
        status, body = await api.get(PROGRESS, token=token)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = await api.get(PROGRESS, token=ALICE, user_id=str(BOB_ID))
    assert status == 403 and body["error"]["parameter"] == "user_id"

    mine = await api.ok(PROGRESS, token=ALICE)
    assert [j["job_id"] for j in mine["recent_jobs"]] == [str(alices.job_id)]
    assert [j["job_id"] for j in mine["active_jobs"]] == [str(alices.job_id)]
    assert mine["stats"]["running_jobs"] == 1
    assert (await api.get(f"/v1/dashboard/jobs/{bobs.job_id}", token=ALICE))[0] == 404
    assert (await api.get(f"/v1/dashboard/jobs/{system.job_id}", token=ALICE))[0] == 404
    assert (await api.get(f"/v1/dashboard/jobs/{alices.job_id}", token=ALICE))[0] == 200
    assert (await api.get("/v1/dashboard/dead-letters", token=BOB))[0] == 403
    assert len((await api.ok(PROGRESS, token=ADMIN))["recent_jobs"]) == 3

    # the token in the query string (WebSocket, dashboard link) works like the header
    async with api.client.get(PROGRESS, params={"token": BOB}) as response:
        assert response.status == 200
        assert [j["job_id"] for j in (await response.json())["recent_jobs"]] == [str(bobs.job_id)]

    assert (await api.get("/metrics", token=ALICE))[0] == 403
    assert (await api.get("/metrics", token=METRICS))[0] == 200
    assert (await api.get("/metrics", token=METRICS.upper()))[0] == 401
    assert (await api.get("/v1/dashboard/job-stats", token=METRICS))[0] == 401  # the metrics token reads metrics only
    assert (await api.get("/health/live", token=None))[0] == 200


@pytest.mark.parametrize("filters", [{}, {"kind": "recap"}, {"status": ["running", "failed"]}])
async def test_defect_11_constant_query_count(api: Api, pg_pool: asyncpg.Pool, filters: dict) -> None:
    jobs = [finished("recap", ("completed", "failed")[i % 2], start_ago=5000 - i) for i in range(240)]
    for job in jobs:
        job.emit("stage.started", stage="fetch")  # late, ignored, but in the history
    running = [script(100 + i, genres=["tech"]) for i in range(3)]
    for job in running:
        run_stages(job, DEFAULT_STAGES[:2])
        job.emit("genre.status", genre="tech", status="running", phase="clustering")
    await project(pg_pool, *jobs, *running)

    app_pool = api.client.server.app[POOL]
    await api.ok(PROGRESS, limit=1, **filters)  # warm up: the pool's connection and asyncpg's type cache
    for user in ({}, {"user_id": str(ALICE_ID)}):
        counts = {}
        for limit in (1, 200):
            with QueryCounter(app_pool) as counter:
                body = await api.ok(PROGRESS, limit=limit, **user, **filters)
            counts[limit] = len(counter.queries)
            assert all(j["status_history"] for j in body["recent_jobs"])
        assert counts[1] == counts[200], counts
        # recent jobs, running jobs, histories, stages, genres, stats, stage averages,
        # and the user context when a user is in effect
        assert counts[200] == 7 + bool(user), counter.queries
    assert len(body["recent_jobs"]) == 0  # Alice has no jobs here
    listed = (await api.ok(PROGRESS, limit=200, **filters))["recent_jobs"]
    assert len(listed) == (123 if "status" in filters else 200)  # 120 failed + 3 running match the filter


async def test_defect_12_errors_are_json_without_internals(
    api: Api, pg_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await project(pg_pool, finished("recap", "completed"))
    async with pg_pool.acquire() as conn:  # a real database error inside a poll
        await conn.execute("ALTER TABLE recap_job_status_history RENAME TO recap_job_status_history_gone")
    status, body = await api.get(PROGRESS)
    assert status == 500
    assert body == {"error": {"code": "internal_error", "message": "internal error; the server log has the details"}}

    async def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(web_api, "_stats", explode)
    status, body = await api.get(STATS)
    assert status == 500 and "secret" not in str(body) and body["error"]["code"] == "internal_error"

    status, body = await api.get(PROGRESS, limit=-1)
    assert status == 400 and body["error"]["parameter"] == "limit"
