"""What the dashboard needed from the REST API: stats by trigger source and for the
previous window, the stall threshold, genre errors in job-progress, GET /v1/me, and
recent jobs with their articles, last event and completed stages."""

from __future__ import annotations

import random

import asyncpg
import pytest

from tests.integration.test_api_defects import finished
from tests.integration.test_api_support import (
    ALICE,
    ALICE_ID,
    BOB,
    BOB_ID,
    METRICS,
    Api,
    QueryCounter,
    api,  # noqa: F401 - fixture
    api_settings,
    is_timestamp,
    project,
    run_stages,
    script,
    serve,
)
from tracker.settings import Settings
from tracker.statuses import DEFAULT_STAGES
from web.keys import POOL

PROGRESS = "/v1/dashboard/job-progress"
STATS = "/v1/dashboard/job-stats"
HOUR = 3600


def user_job(outcome: str, start_ago: float, seconds: float, user: object = ALICE_ID) -> object:
    job = script(start_ago, trigger_source="user", user_id=user)
    job.emit(f"job.{outcome}", seconds=seconds, **({"error": "boom"} if outcome == "failed" else {}))
    return job


# --- trigger_source ----------------------------------------------------------------


async def test_stats_follow_the_trigger_source(api: Api, pg_pool: asyncpg.Pool) -> None:
    system = [script(3600), script(3500)]
    for job in system:
        run_stages(job, DEFAULT_STAGES[:1], seconds=4)
        job.emit("job.completed", seconds=0)
    users = [user_job("failed", 3000, 40), user_job("completed", 2000, 20, BOB_ID)]
    running = script(60, trigger_source="user", user_id=ALICE_ID)
    await project(pg_pool, *system, *users, running, finished("morning", "completed"))

    everything = await api.ok(STATS)
    assert (everything["total_jobs_24h"], everything["running_jobs"], everything["trigger_source"]) == (5, 1, None)

    by_user = await api.ok(STATS, trigger_source="user")
    assert by_user["trigger_source"] == "user"
    assert (by_user["total_jobs_24h"], by_user["completed_jobs_24h"], by_user["failed_jobs_24h"]) == (3, 1, 1)
    assert (by_user["running_jobs"], by_user["success_rate_24h"], by_user["avg_duration_secs"]) == (1, 0.5, 30)
    assert by_user["by_kind"]["morning"]["total"] == 0  # the morning job is a system job
    assert by_user["stage_durations"] == []  # only the system jobs ran a stage

    by_system = await api.ok(STATS, trigger_source="system")
    assert (by_system["total_jobs_24h"], by_system["running_jobs"], by_system["success_rate_24h"]) == (2, 0, 1.0)
    assert by_system["avg_duration_secs"] == 4
    assert by_system["by_kind"]["morning"]["total"] == 1
    assert [(s["stage"], s["jobs"]) for s in by_system["stage_durations"]] == [("fetch", 2)]
    assert [(s["stage"], s["jobs"]) for s in everything["stage_durations"]] == [("fetch", 2)]

    # job-progress's stats follow its trigger_source filter, and are the job-stats object
    progress = await api.ok(PROGRESS, trigger_source="user")
    assert progress["stats"] == by_user
    assert (await api.ok(PROGRESS))["stats"] == everything
    # a user token's stats are over its own jobs of that source
    assert (await api.ok(STATS, token=ALICE, trigger_source="user"))["total_jobs_24h"] == 2
    assert (await api.ok(STATS, token=BOB, trigger_source="system"))["total_jobs_24h"] == 0


@pytest.mark.parametrize("value", ["cron", "", "User"])
async def test_stats_trigger_source_is_validated(api: Api, value: str) -> None:
    status, body = await api.get(STATS, trigger_source=value)
    assert status == 400
    assert body["error"]["parameter"] == "trigger_source"
    assert body["error"]["message"] == "trigger_source: must be one of system, user"
    status, body = await api.get(STATS, trigger_source=["user", "system"])
    assert (status, body["error"]["parameter"]) == (400, "trigger_source")


# --- the previous window ---------------------------------------------------------


async def test_previous_window_figures(api: Api, pg_pool: asyncpg.Pool) -> None:
    # window=1h: the current window is the last hour, the previous one the hour before it.
    current = [finished("recap", "completed", start_ago=1800, seconds=60)]
    previous = [
        finished("recap", "completed", start_ago=4000, seconds=100),
        finished("recap", "completed", start_ago=5000, seconds=200),
        finished("recap", "failed", start_ago=6000, seconds=300),
        finished("recap", "cancelled", start_ago=7000, seconds=400),
        finished("morning", "failed", start_ago=5000, seconds=10),  # another kind
    ]
    still_running = script(5500)  # kicked off in the previous window, not finished: counted, no duration
    older = finished("recap", "completed", start_ago=7300, seconds=1)  # before both windows
    await project(pg_pool, *current, *previous, still_running, older)

    stats = await api.ok(STATS, window=HOUR)
    assert (stats["total_jobs_24h"], stats["avg_duration_secs"], stats["running_jobs"]) == (1, 60, 1)
    assert stats["previous"] == {
        "success_rate_24h": pytest.approx(2 / 4),
        "avg_duration_secs": 250,
        "p50_duration_secs": 250.0,
        "p95_duration_secs": pytest.approx(385.0),  # interpolated between 300 and 400
        "total_jobs_24h": 5,
        "completed_jobs_24h": 2,
        "failed_jobs_24h": 1,
        "cancelled_jobs_24h": 1,
    }
    morning = (await api.ok(STATS, window=HOUR, kind="morning"))["previous"]
    assert (morning["total_jobs_24h"], morning["failed_jobs_24h"], morning["p95_duration_secs"]) == (1, 1, 10.0)
    # a window of two hours covers all of the above but `older`; its previous window has only `older`
    wide = await api.ok(STATS, window=2 * HOUR)
    assert (wide["total_jobs_24h"], wide["previous"]["total_jobs_24h"]) == (6, 1)
    assert wide["previous"]["avg_duration_secs"] == 1
    # the progress response embeds the same previous figures, under its filters
    assert (await api.ok(PROGRESS, window=HOUR))["stats"]["previous"] == stats["previous"]
    assert (await api.ok(STATS, window=HOUR, trigger_source="user"))["previous"]["total_jobs_24h"] == 0


async def test_previous_window_is_empty_without_jobs(api: Api, pg_pool: asyncpg.Pool) -> None:
    await project(pg_pool, finished("recap", "completed", start_ago=600, seconds=30))
    assert (await api.ok(STATS, window=HOUR))["previous"] == {
        "success_rate_24h": 0.0, "avg_duration_secs": None, "p50_duration_secs": None, "p95_duration_secs": None,
        "total_jobs_24h": 0, "completed_jobs_24h": 0, "failed_jobs_24h": 0, "cancelled_jobs_24h": 0,
    }  # fmt: skip


# --- the stall threshold ---------------------------------------------------------


async def test_stall_after_is_published(api: Api, settings: Settings, pg_pool: asyncpg.Pool) -> None:
    assert (await api.ok(STATS))["stall_after_secs"] == 300.0
    assert (await api.ok(PROGRESS))["stats"]["stall_after_secs"] == 300.0

    quiet = script(600)
    quiet.emit("stage.started", seconds=0, stage="fetch")  # last event 10 minutes ago
    await project(pg_pool, quiet)
    async for fast in serve(api_settings(settings, stall_after=900.0)):
        stats = await fast.ok(STATS)
        assert (stats["stall_after_secs"], stats["stalled_jobs"]) == (900.0, 0)
        progress = await fast.ok(PROGRESS)
        assert progress["stats"]["stall_after_secs"] == 900.0
        assert progress["active_job"]["stalled"] is False
    assert (await api.ok(STATS))["stalled_jobs"] == 1  # 300 s: stalled


# --- genre errors in job-progress ------------------------------------------------


async def test_genre_progress_has_error_attempts_and_phase(api: Api, pg_pool: asyncpg.Pool) -> None:
    job = script(120, genres=["tech", "world", "sports", "health"])
    job.emit("genre.status", genre="tech", status="running", phase="clustering")
    job.emit("genre.status", genre="tech", status="failed", error="llm timeout")
    job.emit("genre.status", genre="world", status="running", phase="evidence")
    job.emit("genre.status", genre="world", status="failed", error="first try")
    job.emit("genre.status", genre="world", status="running", phase="summarization")  # a retry clears it
    job.emit("genre.status", genre="sports", status="succeeded", phase="summarization", cluster_count=2)
    await project(pg_pool, job)

    genres = (await api.ok(PROGRESS))["active_job"]["genre_progress"]
    fields = ("status", "phase", "attempts", "error")
    assert {name: tuple(g[f] for f in fields) for name, g in genres.items()} == {
        "tech": ("failed", "clustering", 1, "llm timeout"),
        "world": ("running", "summarization", 2, None),
        "sports": ("succeeded", "summarization", 1, None),
        "health": ("pending", None, 0, None),
    }
    detail = {g["genre"]: g for g in (await api.ok(f"/v1/dashboard/jobs/{job.job_id}"))["genres"]}
    assert {name: tuple(detail[name][f] for f in fields) for name in genres} == {
        name: tuple(g[f] for f in fields) for name, g in genres.items()
    }  # the same as the job detail says


# --- GET /v1/me --------------------------------------------------------------------


async def test_me_says_who_the_token_is(api: Api) -> None:
    app_pool = api.client.server.app[POOL]
    await api.ok(STATS)  # the pool has a connection open for the counter to watch
    with QueryCounter(app_pool) as counter:
        assert await api.ok("/v1/me") == {"is_admin": True, "user_id": None}
        assert await api.ok("/v1/me", token=ALICE) == {"is_admin": False, "user_id": str(ALICE_ID)}
    assert counter.queries == []  # answered from the token alone
    async with api.client.get("/v1/me", params={"token": BOB}) as response:  # the query-string token too
        assert (response.status, await response.json()) == (200, {"is_admin": False, "user_id": str(BOB_ID)})
    for token in (None, "not-a-token", METRICS):  # the metrics token reads /metrics only
        status, body = await api.get("/v1/me", token=token)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    document = await api.ok("/v1/openapi.json")
    assert document["paths"]["/v1/me"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Me"
    }
    assert set(document["components"]["schemas"]["Me"]["required"]) == {"is_admin", "user_id"}


# --- recent jobs -------------------------------------------------------------------


async def test_recent_jobs_have_articles_last_event_and_completed_stages(api: Api, pg_pool: asyncpg.Pool) -> None:
    failed = script(5000)
    failed.emit("articles.added", articles=[{"article_id": a} for a in ("a1", "a2", "a3")])
    run_stages(failed, DEFAULT_STAGES[:3])  # fetch, preprocess, dedup: not alphabetical
    failed.emit("stage.started", seconds=0, stage="genre")
    failed.emit("stage.failed", seconds=5, stage="genre", error="classifier down")
    failed.emit("job.failed", seconds=1, stage="genre", error="classifier down")
    done = script(4000)
    run_stages(done, DEFAULT_STAGES)
    done.emit("job.completed", seconds=0)
    custom = script(3000, stages=["collect", "write"], kind="morning")
    run_stages(custom, ["collect"])
    custom.emit("stage.started", seconds=0, stage="write")
    fresh = script(10)
    events = [*failed.events, *done.events, *custom.events, *fresh.events]
    random.Random(3).shuffle(events)  # arrival order does not matter
    await project(pg_pool, events)

    body = await api.ok(PROGRESS)
    recent = {j["job_id"]: j for j in body["recent_jobs"]}
    got = recent[str(failed.job_id)]
    assert (got["article_count"], got["stages_completed"]) == (3, ["fetch", "preprocess", "dedup"])
    assert got["stage_names"] == list(DEFAULT_STAGES)
    assert is_timestamp(got["last_event_at"])
    assert got["last_event_at"].replace("Z", "+00:00") == failed.events[-1].at.isoformat()
    assert recent[str(done.job_id)]["stages_completed"] == list(DEFAULT_STAGES)
    assert recent[str(done.job_id)]["article_count"] == 0
    assert (recent[str(custom.job_id)]["stage_names"], recent[str(custom.job_id)]["stages_completed"]) == (
        ["collect", "write"], ["collect"],
    )  # fmt: skip
    assert (recent[str(fresh.job_id)]["stage_names"], recent[str(fresh.job_id)]["stages_completed"]) == (
        list(DEFAULT_STAGES), [],
    )  # fmt: skip
    # a running job says the same in recent_jobs as in active_jobs
    active = {j["job_id"]: j for j in body["active_jobs"]}
    for job_id in (str(custom.job_id), str(fresh.job_id)):
        assert recent[job_id]["stages_completed"] == active[job_id]["stages_completed"]
        assert recent[job_id]["stage_names"] == [s["stage"] for s in active[job_id]["stages"]]
        assert recent[job_id]["last_event_at"] == active[job_id]["last_event_at"]
        assert recent[job_id]["article_count"] == active[job_id]["total_articles"]
