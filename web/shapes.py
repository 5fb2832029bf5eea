"""The JSON shapes of the REST API, as msgspec structs.

The same structs encode the responses and generate the OpenAPI components, so
the published schema cannot drift from what is sent. Fields of the original
system (../shared/seed/API.md) keep their names, types and meanings; fields
marked "ours" are additions.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from tracker.statuses import GenreStatus, JobKind, JobStatus, StageStatus, TriggerSource

Timestamp = Annotated[datetime, Meta(tz=True)]
Count = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(ge=0)]

# Literal types built from the enums, so that the schema lists the allowed values
# while the encoder writes the plain strings the database returns.
JobStatusName = Literal[tuple(s.value for s in JobStatus)]  # type: ignore[valid-type]
StageStatusName = Literal[tuple(s.value for s in StageStatus)]  # type: ignore[valid-type]
GenreStatusName = Literal[tuple(s.value for s in GenreStatus)]  # type: ignore[valid-type]
KindName = Literal[tuple(k.value for k in JobKind)]  # type: ignore[valid-type]
TriggerName = Literal[tuple(t.value for t in TriggerSource)]  # type: ignore[valid-type]
SubStagePhase = Literal["evidence_building", "clustering", "summarization"]
Actor = Literal["system", "scheduler", "manual_repair", "migration_backfill"]


# --- errors ------------------------------------------------------------------


class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    #: The query or path parameter at fault, on 400 (and 403 for `user_id`).
    parameter: str | UnsetType = UNSET


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


# --- job-stats ---------------------------------------------------------------


class KindCounts(msgspec.Struct):
    """Ours: one job kind's counts in the window (running/stalled: now, whatever their age)."""

    total: Count
    completed: Count
    failed: Count
    cancelled: Count
    running: Count
    stalled: Count


class StageDuration(msgspec.Struct):
    """Ours: average duration of a completed stage, over finished jobs of the window."""

    stage: str
    avg_duration_secs: Seconds
    jobs: Count


class PreviousStats(msgspec.Struct):
    """Ours: the same figures for the window of the same length just before this one
    (jobs kicked off from 2 x `window` up to `window` seconds ago), for trends. Each
    field means what the stats field of the same name means."""

    success_rate_24h: Annotated[float, Meta(ge=0, le=1)]
    avg_duration_secs: Count | None
    p50_duration_secs: Seconds | None
    p95_duration_secs: Seconds | None
    total_jobs_24h: Count
    completed_jobs_24h: Count
    failed_jobs_24h: Count
    cancelled_jobs_24h: Count


class JobStats(msgspec.Struct):
    success_rate_24h: Annotated[float, Meta(ge=0, le=1)]
    avg_duration_secs: Count | None
    total_jobs_24h: Count
    running_jobs: Count
    failed_jobs_24h: Count
    # ours
    window: Annotated[int, Meta(ge=1)]
    kind: KindName
    completed_jobs_24h: Count
    cancelled_jobs_24h: Count
    stalled_jobs: Count
    p50_duration_secs: Seconds | None
    p95_duration_secs: Seconds | None
    stage_durations: list[StageDuration]
    by_kind: dict[KindName, KindCounts]
    #: The `trigger_source` filter the figures are for; null: jobs of every source.
    trigger_source: TriggerName | None
    #: RECAP_STALL_AFTER: a running job with no event for this long is `stalled`.
    stall_after_secs: Seconds
    previous: PreviousStats


# --- job-progress ------------------------------------------------------------


class GenreProgress(msgspec.Struct):
    status: GenreStatusName
    cluster_count: Count | None
    article_count: Count | None
    # ours
    phase: str | None
    attempts: Count
    #: The genre's error as reported with its status (cleared when it runs again), else null.
    error: str | None


class SubStageProgress(msgspec.Struct):
    phase: SubStagePhase
    total_genres: Count
    completed_genres: Count


class StageState(msgspec.Struct):
    """Ours: one stage of a job; stages the job has not reached yet are `pending`."""

    stage: str
    status: StageStatusName
    started_at: Timestamp | None
    finished_at: Timestamp | None
    duration_secs: Seconds | None
    done: Count | None
    total: Count | None
    attempts: Count
    error: str | None


class ActiveJob(msgspec.Struct):
    job_id: uuid.UUID
    status: JobStatusName
    current_stage: str | None
    stage_index: Count
    stages_completed: list[str]
    genre_progress: dict[str, GenreProgress]
    total_articles: Count | None
    user_article_count: Count | None
    kicked_at: Timestamp
    trigger_source: TriggerName
    # ours
    kind: KindName
    user_id: uuid.UUID | None
    updated_at: Timestamp
    last_event_at: Timestamp
    stalled: bool
    stages: list[StageState]
    #: Omitted when the job has no genre rows.
    sub_stage_progress: SubStageProgress | UnsetType = UNSET


class HistoryEntry(msgspec.Struct):
    id: int
    status: str
    stage: str | None
    transitioned_at: Timestamp
    reason: str | None
    actor: Actor


class RecentJob(msgspec.Struct):
    job_id: uuid.UUID
    status: JobStatusName
    last_stage: str | None
    kicked_at: Timestamp
    updated_at: Timestamp
    duration_secs: Count | None
    trigger_source: TriggerName
    user_id: uuid.UUID | None
    status_history: list[HistoryEntry]
    # ours
    kind: KindName
    current_stage: str | None
    finished_at: Timestamp | None
    error: str | None
    stalled: bool
    article_count: Count
    last_event_at: Timestamp
    #: The job's stages in pipeline order (as in the job detail's `stages`).
    stage_names: list[str]
    #: The completed ones among them, in pipeline order.
    stages_completed: list[str]


class UserContext(msgspec.Struct):
    user_article_count: Count
    user_jobs_count: Count
    user_feed_ids: list[uuid.UUID]
    # ours
    user_id: uuid.UUID


class JobProgress(msgspec.Struct):
    active_job: ActiveJob | None
    recent_jobs: list[RecentJob]
    stats: JobStats
    user_context: UserContext | None
    # ours
    active_jobs: list[ActiveJob]
    generated_at: Timestamp


# --- job detail --------------------------------------------------------------


class GenreDetail(msgspec.Struct):
    genre: str
    status: GenreStatusName
    phase: str | None
    cluster_count: Count | None
    article_count: Count | None
    attempts: Count
    started_at: Timestamp | None
    finished_at: Timestamp | None
    duration_secs: Seconds | None
    error: str | None


class EventRecord(msgspec.Struct):
    """One logged event; an `articles.added` payload has `article_count` instead of its list."""

    event_id: uuid.UUID
    seq: Count
    type: str
    at: Timestamp
    received_at: Timestamp
    #: The event as logged (JSON object), passed through without re-parsing.
    payload: Annotated[msgspec.Raw, Meta(extra_json_schema={"type": "object"})]


class JobDetail(msgspec.Struct):
    job_id: uuid.UUID
    kind: KindName
    status: JobStatusName
    stalled: bool
    trigger_source: TriggerName
    user_id: uuid.UUID | None
    note: str | None
    window_days: int | None
    kicked_at: Timestamp
    updated_at: Timestamp
    last_event_at: Timestamp
    finished_at: Timestamp | None
    duration_secs: Count | None
    current_stage: str | None
    last_stage: str | None
    stage_index: Count
    stages_completed: list[str]
    error: str | None
    failed_stage: str | None
    expected_genres: list[str] | None
    article_count: Count
    feed_count: Count
    stages: list[StageState]
    genres: list[GenreDetail]
    status_history: list[HistoryEntry]
    last_events: list[EventRecord]


# --- the caller ---------------------------------------------------------------


class Me(msgspec.Struct):
    """Ours: who the token belongs to."""

    is_admin: bool
    #: The user of a user token; null for an admin token.
    user_id: uuid.UUID | None


# --- dead letters, health ----------------------------------------------------


class DeadLetter(msgspec.Struct):
    id: int
    stream_id: str
    reason: str
    payload: str | None
    received_at: Timestamp


class DeadLetters(msgspec.Struct):
    dead_letters: list[DeadLetter]
    total: Count


class Health(msgspec.Struct):
    status: Literal["ok", "ready", "unavailable"]
    checks: dict[str, str] = msgspec.field(default_factory=dict)
    error: ErrorDetail | UnsetType = UNSET


#: Every response shape, for the OpenAPI components.
RESPONSE_SHAPES: tuple[type[msgspec.Struct], ...] = (
    ErrorBody,
    JobStats,
    JobProgress,
    JobDetail,
    DeadLetters,
    Me,
    Health,
)
