"""Helpers of the REST API tests (no tests here): tokens, a live server on a free
port, loading events through the real projector, and the seed's shapes."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import msgspec
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from tests.factories import JobScript
from tracker import events as ev
from tracker.projector import project_batch
from tracker.settings import Settings
from web.app import create_app

ADMIN = "admin-secret-token"
ALICE_ID = uuid.UUID("aaaaaaaa-0000-4000-8000-000000000001")
BOB_ID = uuid.UUID("bbbbbbbb-0000-4000-8000-000000000002")
ALICE = "alice-secret-token"
BOB = "bob-secret-token"
METRICS = "metrics-secret-token"
TOKENS = f"{ADMIN}=admin,{ALICE}=user:{ALICE_ID},{BOB}=user:{BOB_ID}"


def api_settings(settings: Settings, **overrides: Any) -> Settings:
    """The fixture's settings with the test tokens, and no poll cache (each poll sees the
    latest projection) unless a test asks for one."""
    return msgspec.structs.replace(
        settings, **{"tokens": TOKENS, "metrics_token": METRICS, "poll_cache_ms": 0, **overrides}
    )


@dataclass
class Api:
    """A client of a live server (aiohttp TestServer on a free port)."""

    client: TestClient

    @property
    def base_url(self) -> str:
        return str(self.client.make_url("/")).rstrip("/")

    async def get(self, path: str, token: str | None = ADMIN, **params: Any) -> tuple[int, Any]:
        """(status, decoded JSON body) of a GET."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        query = [(k, str(v)) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])]
        async with self.client.get(path, headers=headers, params=query) as response:
            body = await response.read()
            try:
                return response.status, msgspec.json.decode(body)
            except msgspec.DecodeError:
                return response.status, body.decode(errors="replace")

    async def ok(self, path: str, token: str | None = ADMIN, **params: Any) -> Any:
        status, body = await self.get(path, token, **params)
        assert status == 200, (status, body)
        return body


async def serve(settings: Settings) -> AsyncIterator[Api]:
    async with TestClient(TestServer(create_app(settings))) as client:
        yield Api(client)


@pytest_asyncio.fixture(loop_scope="session")
async def api(settings: Settings) -> AsyncIterator[Api]:
    """A live server on this test's database and Redis, with the test tokens."""
    async for client in serve(api_settings(settings)):
        yield client


# --- loading events -------------------------------------------------------------


def ago(seconds: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(seconds=seconds)


def script(start_ago: float = 3600.0, **started: Any) -> JobScript:
    """A job whose `job.started` happened `start_ago` seconds ago."""
    job = JobScript(start=ago(start_ago))
    job.emit("job.started", seconds=0, **{k: str(v) if isinstance(v, uuid.UUID) else v for k, v in started.items()})
    return job


def run_stages(job: JobScript, stages: Sequence[str], seconds: float = 10.0) -> None:
    for stage in stages:
        job.emit("stage.started", seconds=0, stage=stage, total=100)
        job.emit("stage.progress", seconds=seconds / 2, stage=stage, done=50)
        job.emit("stage.completed", seconds=seconds / 2, stage=stage)


async def project(pool: asyncpg.Pool, *jobs: JobScript | Sequence[ev.AnyEvent]) -> None:
    """Apply the jobs' events with the tracker's projector."""
    events = [e for job in jobs for e in (job.events if isinstance(job, JobScript) else job)]
    async with pool.acquire() as conn:
        await project_batch(conn, events)


class QueryCounter:
    """Counts the SQL statements sent on a pool's open connections (asyncpg query loggers)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.queries: list[str] = []
        self._connections = [h._con for h in pool._holders if h._con is not None]

    def _log(self, record: Any) -> None:
        self.queries.append(record.query)

    def __enter__(self) -> QueryCounter:
        for conn in self._connections:
            conn.add_query_logger(self._log)
        return self

    def __exit__(self, *exc: object) -> None:
        for conn in self._connections:
            conn.remove_query_logger(self._log)


# --- the seed's shapes (../shared/seed/API.md) -------------------------------------

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_uuid(v: Any) -> bool:
    return isinstance(v, str) and bool(UUID_RE.match(v))


def is_timestamp(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def nullable(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def one_of(*values: str) -> Callable[[Any], bool]:
    return lambda v: v in values


def is_str(v: Any) -> bool:
    return isinstance(v, str)


def is_float(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def list_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


SEED_STATS = {
    "success_rate_24h": lambda v: is_float(v) and 0 <= v <= 1,
    "avg_duration_secs": nullable(is_int),
    "total_jobs_24h": is_int,
    "running_jobs": is_int,
    "failed_jobs_24h": is_int,
}
SEED_GENRE = {
    "status": one_of("pending", "running", "succeeded", "failed", "partial"),
    "cluster_count": nullable(is_int),
    "article_count": nullable(is_int),
}
SEED_SUB_STAGE = {
    "phase": one_of("evidence_building", "clustering", "summarization"),
    "total_genres": is_int,
    "completed_genres": is_int,
}
SEED_ACTIVE_JOB = {
    "job_id": is_uuid,
    "status": one_of("running"),
    "current_stage": nullable(is_str),
    "stage_index": lambda v: is_int(v) and 0 <= v <= 7,
    "stages_completed": list_of(is_str),
    "genre_progress": lambda v: isinstance(v, dict),
    "total_articles": nullable(is_int),
    "user_article_count": nullable(is_int),
    "kicked_at": is_timestamp,
    "trigger_source": one_of("system", "user"),
}
SEED_HISTORY = {
    "id": is_int,
    "status": is_str,
    "stage": nullable(is_str),
    "transitioned_at": is_timestamp,
    "reason": nullable(is_str),
    "actor": one_of("system", "scheduler", "manual_repair", "migration_backfill"),
}
SEED_RECENT_JOB = {
    "job_id": is_uuid,
    "status": one_of("pending", "running", "completed", "failed", "cancelled"),
    "last_stage": nullable(is_str),
    "kicked_at": is_timestamp,
    "updated_at": is_timestamp,
    "duration_secs": nullable(is_int),
    "trigger_source": one_of("system", "user"),
    "user_id": nullable(is_uuid),
    "status_history": lambda v: isinstance(v, list),
}
SEED_USER_CONTEXT = {
    "user_article_count": is_int,
    "user_jobs_count": is_int,
    "user_feed_ids": list_of(is_uuid),
}
SEED_PROGRESS = {
    "active_job": lambda v: v is None or isinstance(v, dict),
    "recent_jobs": lambda v: isinstance(v, list),
    "stats": lambda v: isinstance(v, dict),
    "user_context": lambda v: v is None or isinstance(v, dict),
}


def assert_shape(obj: Any, spec: Mapping[str, Callable[[Any], bool]], where: str) -> None:
    """Every field of the seed's shape is there with a value of its type."""
    assert isinstance(obj, dict), f"{where}: not an object: {obj!r}"
    for field, check in spec.items():
        assert field in obj, f"{where}.{field} is missing"
        assert check(obj[field]), f"{where}.{field} has a value of the wrong type: {obj[field]!r}"


def assert_progress_shape(body: dict[str, Any]) -> None:
    """The whole job-progress response against the seed, field by field."""
    assert_shape(body, SEED_PROGRESS, "job-progress")
    assert_shape(body["stats"], SEED_STATS, "stats")
    jobs = ([body["active_job"]] if body["active_job"] else []) + body.get("active_jobs", [])
    for i, job in enumerate(jobs):
        assert_shape(job, SEED_ACTIVE_JOB, f"active_job[{i}]")
        for name, genre in job["genre_progress"].items():
            assert_shape(genre, SEED_GENRE, f"active_job[{i}].genre_progress.{name}")
        if "sub_stage_progress" in job:
            assert_shape(job["sub_stage_progress"], SEED_SUB_STAGE, f"active_job[{i}].sub_stage_progress")
    for i, job in enumerate(body["recent_jobs"]):
        assert_shape(job, SEED_RECENT_JOB, f"recent_jobs[{i}]")
        for k, entry in enumerate(job["status_history"]):
            assert_shape(entry, SEED_HISTORY, f"recent_jobs[{i}].status_history[{k}]")
    if body["user_context"] is not None:
        assert_shape(body["user_context"], SEED_USER_CONTEXT, "user_context")
