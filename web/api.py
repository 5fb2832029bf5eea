"""The REST responses, built from the status tables.

Each response takes a fixed number of queries whatever `limit` is: the recent
jobs in one, all their status histories in one (`job_id = ANY($1)`), the stage
rows of all running and recent jobs in one, the genre rows of all running jobs
in one, and the stats (with the previous window's) in two.

The `*_response` functions return the msgspec structs of `shapes.py` (the REST
handlers encode them directly); `job_progress`, `job_stats` and `job_detail`
return the same as plain JSON-ready dicts (the WebSocket snapshot uses them).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import msgspec

from tracker.statuses import TERMINAL_GENRE_STATUSES, GenrePhase, JobKind, JobStatus, StageStatus

from . import queries as q
from .auth import Principal, effective_user, require_admin
from .errors import not_found
from .params import KINDS, ProgressParams, StatsParams
from .shapes import (
    ActiveJob,
    DeadLetter,
    DeadLetters,
    EventRecord,
    GenreDetail,
    GenreProgress,
    HistoryEntry,
    JobDetail,
    JobProgress,
    JobStats,
    KindCounts,
    Me,
    PreviousStats,
    RecentJob,
    StageDuration,
    StageState,
    SubStageProgress,
    UserContext,
)

Row = asyncpg.Record

#: More running jobs than this at once would be a runaway producer; the list stops there.
MAX_ACTIVE_JOBS = 1_000

_RUNNING = JobStatus.RUNNING.value
_COMPLETED_STAGE = StageStatus.COMPLETED.value
_TERMINAL_GENRE = frozenset(s.value for s in TERMINAL_GENRE_STATUSES)
_PHASES: tuple[str, ...] = tuple(p.value for p in GenrePhase)
#: The seed's names of the genre phases in `sub_stage_progress.phase`.
_SUB_STAGE_NAMES = {"evidence": "evidence_building", "clustering": "clustering", "summarization": "summarization"}


class DetailParams(msgspec.Struct, frozen=True, kw_only=True):
    job_id: uuid.UUID
    #: How many of the job's newest events to include.
    events: int = 50
    stall_after: float = 300.0


# --- job-progress ------------------------------------------------------------


async def job_progress_response(
    conn: asyncpg.Connection, principal: Principal, params: ProgressParams, now: datetime | None = None
) -> JobProgress:
    """The whole GET /v1/dashboard/job-progress answer, as the principal may see it."""
    user = effective_user(principal, params.user_id)
    now = now or datetime.now(timezone.utc)
    since = now - timedelta(seconds=params.window)
    stall_before = now - timedelta(seconds=params.stall_after)
    statuses = list(params.statuses) if params.statuses else None
    recent = await conn.fetch(
        q.RECENT_JOBS, since, user, params.kind, params.trigger_source, statuses, stall_before, params.limit
    )
    active = await conn.fetch(q.ACTIVE_JOBS, user, params.kind, params.trigger_source, MAX_ACTIVE_JOBS)
    recent_ids = [r["job_id"] for r in recent]
    histories = _by_job(await conn.fetch(q.HISTORIES, recent_ids))
    active_ids = [r["job_id"] for r in active]
    stages = _by_job(await conn.fetch(q.STAGES, list(dict.fromkeys(active_ids + recent_ids))))
    genres = _by_job(await conn.fetch(q.GENRES, active_ids))
    stats = await _stats(
        conn,
        user,
        StatsParams(
            window=params.window,
            kind=params.kind or JobKind.RECAP.value,
            trigger_source=params.trigger_source,
            stall_after=params.stall_after,
        ),
        now,
    )
    context = await _user_context(conn, user, since) if user is not None else None
    active_jobs = [
        active_job(r, stages[r["job_id"]], genres[r["job_id"]], stall_before, r["user_article_count"])
        for r in active
    ]
    return JobProgress(
        active_job=active_jobs[0] if active_jobs else None,
        recent_jobs=[recent_job(r, histories[r["job_id"]], stages[r["job_id"]], stall_before) for r in recent],
        stats=stats,
        user_context=context,
        active_jobs=active_jobs,
        generated_at=now,
    )


async def job_progress(conn: asyncpg.Connection, principal: Principal, params: ProgressParams) -> dict[str, Any]:
    """GET /v1/dashboard/job-progress as a JSON-ready dict."""
    return msgspec.to_builtins(await job_progress_response(conn, principal, params))


def active_job(
    job: Row, stage_rows: Sequence[Row], genre_rows: Sequence[Row], stall_before: datetime, user_articles: int | None
) -> ActiveJob:
    stages = stage_states(job, stage_rows)
    return ActiveJob(
        job_id=job["job_id"],
        status=job["status"],
        current_stage=job["current_stage"],
        stage_index=stage_index(job["current_stage"], stages),
        stages_completed=[s.stage for s in stages if s.status == _COMPLETED_STAGE],
        genre_progress=genre_progress(job["expected_genres"], genre_rows),
        total_articles=job["article_count"],
        user_article_count=user_articles,
        kicked_at=job["kicked_at"],
        trigger_source=job["trigger_source"],
        kind=job["kind"],
        user_id=job["user_id"],
        updated_at=job["updated_at"],
        last_event_at=job["last_event_at"],
        stalled=is_stalled(job, stall_before),
        stages=stages,
        sub_stage_progress=sub_stage_progress(job["expected_genres"], genre_rows),
    )


def recent_job(job: Row, history_rows: Sequence[Row], stage_rows: Sequence[Row], stall_before: datetime) -> RecentJob:
    stages = stage_states(job, stage_rows)
    return RecentJob(
        job_id=job["job_id"],
        status=job["status"],
        last_stage=job["last_stage"],
        kicked_at=job["kicked_at"],
        updated_at=job["updated_at"],
        duration_secs=job_duration(job),
        trigger_source=job["trigger_source"],
        user_id=job["user_id"],
        status_history=[history_entry(h) for h in history_rows],
        kind=job["kind"],
        current_stage=job["current_stage"],
        finished_at=job["finished_at"],
        error=job["error"],
        stalled=is_stalled(job, stall_before),
        article_count=job["article_count"],
        last_event_at=job["last_event_at"],
        stage_names=[s.stage for s in stages],
        stages_completed=[s.stage for s in stages if s.status == _COMPLETED_STAGE],
    )


def history_entry(row: Row) -> HistoryEntry:
    return HistoryEntry(
        id=row["id"],
        status=row["status"],
        stage=row["stage"],
        transitioned_at=row["transitioned_at"],
        reason=row["reason"],
        actor=row["actor"],
    )


def is_stalled(job: Row, stall_before: datetime) -> bool:
    """Display-only: a running job that has reported nothing since `stall_before`."""
    return job["status"] == _RUNNING and job["last_event_at"] < stall_before


def job_duration(job: Row) -> int | None:
    """Whole seconds from kick-off to the end; None while the job has not finished."""
    seconds = _seconds_between(job["kicked_at"], job["finished_at"])
    return None if seconds is None else round(seconds)


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


# --- stages and genres -------------------------------------------------------


def stage_states(job: Row, stage_rows: Sequence[Row]) -> list[StageState]:
    """Every stage of the job in pipeline order; stages not reached yet are pending.

    Stages reported but not in the job's list come last (the rows are ordered
    by position, and such stages share the position after the list).
    """
    declared = list(job["stages"])
    rows = {r["stage"]: r for r in stage_rows}
    names = declared + [r["stage"] for r in stage_rows if r["stage"] not in set(declared)]
    return [stage_state(name, rows.get(name)) for name in names]


def stage_state(name: str, row: Row | None) -> StageState:
    if row is None:
        return StageState(
            stage=name, status=StageStatus.PENDING.value, started_at=None, finished_at=None,
            duration_secs=None, done=None, total=None, attempts=0, error=None,
        )  # fmt: skip
    return StageState(
        stage=name,
        status=row["status"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        duration_secs=_seconds_between(row["started_at"], row["finished_at"]),
        done=row["done"],
        total=row["total"],
        attempts=row["attempts"],
        error=row["error"],
    )


def stage_index(current_stage: str | None, stages: Sequence[StageState]) -> int:
    """Position of the running stage; between stages, of the next one to run."""
    names = [s.stage for s in stages]
    if current_stage in names:
        return names.index(current_stage)
    upcoming = next((i for i, s in enumerate(stages) if s.status != _COMPLETED_STAGE), None)
    return upcoming if upcoming is not None else max(len(stages) - 1, 0)


def genre_progress(expected: Sequence[str] | None, genre_rows: Sequence[Row]) -> dict[str, GenreProgress]:
    """Every genre: the expected ones first (pending until reported), then the others."""
    progress = {
        name: GenreProgress(status="pending", cluster_count=None, article_count=None, phase=None, attempts=0, error=None)
        for name in expected or ()
    }
    for r in genre_rows:
        progress[r["genre"]] = GenreProgress(
            status=r["status"],
            cluster_count=r["cluster_count"],
            article_count=r["article_count"],
            phase=r["phase"],
            attempts=r["attempts"],
            error=r["error"],
        )
    return progress


def sub_stage_progress(
    expected: Sequence[str] | None, genre_rows: Sequence[Row]
) -> SubStageProgress | msgspec.UnsetType:
    """The phase the genres as a whole are in (the least advanced unfinished genre's),
    and how many genres are past it. Absent when no genre has reported yet."""
    if not genre_rows:
        return msgspec.UNSET
    reported = {r["genre"] for r in genre_rows}
    not_reported = len(set(expected or ()) - reported)
    ranks = [_genre_rank(r) for r in genre_rows] + [0] * not_reported
    current = min(min(ranks), len(_PHASES) - 1)
    return SubStageProgress(
        phase=_SUB_STAGE_NAMES[_PHASES[current]],
        total_genres=len(ranks),
        completed_genres=sum(rank > current for rank in ranks),
    )


def _genre_rank(row: Row) -> int:
    """0..2: the phase an unfinished genre is in; 3: finished (succeeded, partial or failed)."""
    if row["status"] in _TERMINAL_GENRE:
        return len(_PHASES)
    return _PHASES.index(row["phase"]) if row["phase"] in _PHASES else 0


def genre_detail(row: Row) -> GenreDetail:
    return GenreDetail(
        genre=row["genre"],
        status=row["status"],
        phase=row["phase"],
        cluster_count=row["cluster_count"],
        article_count=row["article_count"],
        attempts=row["attempts"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        duration_secs=_seconds_between(row["started_at"], row["finished_at"]),
        error=row["error"],
    )


def _pending_genre(name: str) -> GenreDetail:
    return GenreDetail(
        genre=name, status="pending", phase=None, cluster_count=None, article_count=None, attempts=0,
        started_at=None, finished_at=None, duration_secs=None, error=None,
    )  # fmt: skip


# --- stats -------------------------------------------------------------------


async def job_stats_response(
    conn: asyncpg.Connection, principal: Principal, params: StatsParams, now: datetime | None = None
) -> JobStats:
    """GET /v1/dashboard/job-stats, as the principal may see it."""
    user = effective_user(principal, params.user_id)
    return await _stats(conn, user, params, now or datetime.now(timezone.utc))


async def job_stats(conn: asyncpg.Connection, principal: Principal, params: StatsParams) -> dict[str, Any]:
    """GET /v1/dashboard/job-stats as a JSON-ready dict."""
    return msgspec.to_builtins(await job_stats_response(conn, principal, params))


async def _stats(conn: asyncpg.Connection, user: uuid.UUID | None, params: StatsParams, now: datetime) -> JobStats:
    """The stats of `params.kind` (user and trigger source as given; `params.user_id` is not read:
    `user` is the user in effect), and the previous window's, in two statements."""
    kind = params.kind
    since = now - timedelta(seconds=params.window)
    previous_since = since - timedelta(seconds=params.window)
    stall_before = now - timedelta(seconds=params.stall_after)
    rows = {
        r["kind"]: r
        for r in await conn.fetch(q.STATS_BY_KIND, since, user, stall_before, params.trigger_source, previous_since)
    }
    stage_rows = await conn.fetch(q.STAGE_AVERAGES, since, user, kind, params.trigger_source)
    by_kind = {k: _kind_counts(rows.get(k)) for k in KINDS}
    counts = by_kind[kind]
    durations = rows.get(kind)
    finished = counts.completed + counts.failed + counts.cancelled
    return JobStats(
        success_rate_24h=counts.completed / finished if finished else 0.0,
        avg_duration_secs=_whole(durations["avg_secs"]) if durations else None,
        total_jobs_24h=counts.total,
        running_jobs=counts.running,
        failed_jobs_24h=counts.failed,
        window=params.window,
        kind=kind,
        completed_jobs_24h=counts.completed,
        cancelled_jobs_24h=counts.cancelled,
        stalled_jobs=counts.stalled,
        p50_duration_secs=_millis(durations["p50_secs"]) if durations else None,
        p95_duration_secs=_millis(durations["p95_secs"]) if durations else None,
        stage_durations=[
            StageDuration(stage=r["stage"], avg_duration_secs=_millis(r["avg_secs"]), jobs=r["jobs"])
            for r in stage_rows
        ],
        by_kind=by_kind,
        trigger_source=params.trigger_source,
        stall_after_secs=params.stall_after,
        previous=_previous_stats(durations),
    )


def _previous_stats(row: Row | None) -> PreviousStats:
    """The previous window's figures from the `prev_*` columns of a kind's stats row."""
    if row is None:
        return PreviousStats(
            success_rate_24h=0.0, avg_duration_secs=None, p50_duration_secs=None, p95_duration_secs=None,
            total_jobs_24h=0, completed_jobs_24h=0, failed_jobs_24h=0, cancelled_jobs_24h=0,
        )  # fmt: skip
    finished = row["prev_completed"] + row["prev_failed"] + row["prev_cancelled"]
    return PreviousStats(
        success_rate_24h=row["prev_completed"] / finished if finished else 0.0,
        avg_duration_secs=_whole(row["prev_avg_secs"]),
        p50_duration_secs=_millis(row["prev_p50_secs"]),
        p95_duration_secs=_millis(row["prev_p95_secs"]),
        total_jobs_24h=row["prev_total"],
        completed_jobs_24h=row["prev_completed"],
        failed_jobs_24h=row["prev_failed"],
        cancelled_jobs_24h=row["prev_cancelled"],
    )


def _kind_counts(row: Row | None) -> KindCounts:
    if row is None:
        return KindCounts(total=0, completed=0, failed=0, cancelled=0, running=0, stalled=0)
    return KindCounts(
        total=row["total"],
        completed=row["completed"],
        failed=row["failed"],
        cancelled=row["cancelled"],
        running=row["running"],
        stalled=row["stalled"],
    )


def _whole(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds)


def _millis(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


async def _user_context(conn: asyncpg.Connection, user: uuid.UUID, since: datetime) -> UserContext:
    row = await conn.fetchrow(q.USER_CONTEXT, user, since)
    return UserContext(
        user_article_count=row["article_count"],
        user_jobs_count=row["jobs_count"],
        user_feed_ids=list(row["feed_ids"]),
        user_id=user,
    )


# --- the caller --------------------------------------------------------------


def me_response(principal: Principal) -> Me:
    """GET /v1/me: whether the token is an admin's, and its user (no query)."""
    return Me(is_admin=principal.is_admin, user_id=principal.user_id)


# --- job detail --------------------------------------------------------------


async def job_detail_response(conn: asyncpg.Connection, principal: Principal, params: DetailParams) -> JobDetail:
    """GET /v1/dashboard/jobs/{job_id}; 404 for a job the principal may not see."""
    job = await conn.fetchrow(q.JOB, params.job_id)
    if job is None or not _may_see(principal, job):
        raise not_found(f"no job {params.job_id}")
    ids = [params.job_id]
    stages = stage_states(job, await conn.fetch(q.STAGES, ids))
    genre_rows = await conn.fetch(q.GENRES, ids)
    history = await conn.fetch(q.HISTORIES, ids)
    feed_count = await conn.fetchval(q.JOB_FEEDS, params.job_id)
    events = await conn.fetch(q.LAST_EVENTS, params.job_id, params.events)
    stall_before = datetime.now(timezone.utc) - timedelta(seconds=params.stall_after)
    return JobDetail(
        job_id=job["job_id"],
        kind=job["kind"],
        status=job["status"],
        stalled=is_stalled(job, stall_before),
        trigger_source=job["trigger_source"],
        user_id=job["user_id"],
        note=job["note"],
        window_days=job["window_days"],
        kicked_at=job["kicked_at"],
        updated_at=job["updated_at"],
        last_event_at=job["last_event_at"],
        finished_at=job["finished_at"],
        duration_secs=job_duration(job),
        current_stage=job["current_stage"],
        last_stage=job["last_stage"],
        stage_index=stage_index(job["current_stage"], stages),
        stages_completed=[s.stage for s in stages if s.status == _COMPLETED_STAGE],
        error=job["error"],
        failed_stage=job["failed_stage"],
        expected_genres=job["expected_genres"],
        article_count=job["article_count"],
        feed_count=feed_count,
        stages=stages,
        genres=_genre_details(job["expected_genres"], genre_rows),
        status_history=[history_entry(h) for h in history],
        last_events=[_event_record(e) for e in events],
    )


async def job_detail(conn: asyncpg.Connection, principal: Principal, params: DetailParams) -> dict[str, Any]:
    """GET /v1/dashboard/jobs/{job_id} as a JSON-ready dict."""
    return msgspec.to_builtins(await job_detail_response(conn, principal, params))


def _may_see(principal: Principal, job: Row) -> bool:
    return principal.is_admin or (principal.user_id is not None and job["user_id"] == principal.user_id)


def _genre_details(expected: Sequence[str] | None, genre_rows: Sequence[Row]) -> list[GenreDetail]:
    reported = {r["genre"] for r in genre_rows}
    waiting = [_pending_genre(name) for name in dict.fromkeys(expected or ()) if name not in reported]
    return waiting + [genre_detail(r) for r in genre_rows]


def _event_record(row: Row) -> EventRecord:
    return EventRecord(
        event_id=row["event_id"],
        seq=row["seq"],
        type=row["type"],
        at=row["at"],
        received_at=row["received_at"],
        payload=msgspec.Raw(row["payload"].encode()),
    )


# --- dead letters ------------------------------------------------------------


async def dead_letters_response(conn: asyncpg.Connection, principal: Principal, limit: int) -> DeadLetters:
    """GET /v1/dashboard/dead-letters (admins only): the newest rejected entries."""
    require_admin(principal)
    rows = await conn.fetch(q.DEAD_LETTERS, limit)
    total = await conn.fetchval(q.COUNT_DEAD_LETTERS)
    return DeadLetters(
        dead_letters=[
            DeadLetter(
                id=r["id"],
                stream_id=r["stream_id"],
                reason=r["reason"],
                payload=r["payload"],
                received_at=r["received_at"],
            )
            for r in rows
        ],
        total=total,
    )


def _by_job(rows: Iterable[Row]) -> defaultdict[uuid.UUID, list[Row]]:
    grouped: defaultdict[uuid.UUID, list[Row]] = defaultdict(list)
    for row in rows:
        grouped[row["job_id"]].append(row)
    return grouped
