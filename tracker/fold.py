"""The projection as a pure function: a job's events, applied in (seq, event_id)
order, give its job, stage and genre rows.

The projector applies new events to the stored state when they come after
everything already applied to that job, and otherwise folds the job again from
the event log (`refold`). Both are this one fold, so the result is the same for
any arrival order, and `rebuild` reproduces it. Articles and status history are
sets keyed by event or article and live outside the fold (see projector.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

import msgspec

from . import events as ev
from .statuses import (
    DEFAULT_STAGES,
    TERMINAL_GENRE_STATUSES,
    TERMINAL_JOB_STATUSES,
    GenrePhase,
    GenreStatus,
    JobKind,
    JobStatus,
    StageStatus,
    TriggerSource,
)


class StageRow(msgspec.Struct, kw_only=True):
    job_id: uuid.UUID
    stage: str
    position: int
    status: str = StageStatus.PENDING.value
    started_at: datetime | None = None
    finished_at: datetime | None = None
    done: int | None = None
    total: int | None = None
    error: str | None = None
    attempts: int = 0
    updated_at: datetime
    version: int = 0


class GenreRow(msgspec.Struct, kw_only=True):
    job_id: uuid.UUID
    genre: str
    status: str = GenreStatus.PENDING.value
    phase: str | None = None
    cluster_count: int | None = None
    article_count: int | None = None
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    updated_at: datetime
    version: int = 0


class JobRow(msgspec.Struct, kw_only=True):
    job_id: uuid.UUID
    kicked_at: datetime
    note: str | None = None
    status: str = JobStatus.PENDING.value
    last_stage: str | None = None
    updated_at: datetime
    user_id: uuid.UUID | None = None
    trigger_source: str = "system"
    window_days: int | None = None
    kind: str = "recap"
    current_stage: str | None = None
    stages: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_STAGES))
    expected_genres: list[str] | None = None
    finished_at: datetime | None = None
    error: str | None = None
    failed_stage: str | None = None
    last_event_at: datetime
    article_count: int = 0
    last_seq: int = -1
    last_event_id: uuid.UUID = uuid.UUID(int=0)
    version: int = 0


class JobState(msgspec.Struct, kw_only=True):
    """A job row with its stage and genre rows, and which of them changed."""

    job: JobRow
    stages: dict[str, StageRow] = msgspec.field(default_factory=dict)
    genres: dict[str, GenreRow] = msgspec.field(default_factory=dict)
    changed_stages: set[str] = msgspec.field(default_factory=set)
    changed_genres: set[str] = msgspec.field(default_factory=set)

    @classmethod
    def empty(cls, job_id: uuid.UUID, at: datetime) -> JobState:
        return cls(job=JobRow(job_id=job_id, kicked_at=at, updated_at=at, last_event_at=at))

    def follows(self, event: ev.Event) -> bool:
        """True when the event sorts after everything already folded into this job."""
        return (event.seq, event.event_id.bytes) > (self.job.last_seq, self.job.last_event_id.bytes)


def order_key(event: ev.Event) -> tuple[int, bytes]:
    return (event.seq, event.event_id.bytes)


def fold(job_id: uuid.UUID, events: Iterable[ev.Event], article_count: int = 0) -> JobState:
    """Fold a job from nothing; `events` in any order."""
    ordered = sorted(events, key=order_key)
    state = JobState.empty(job_id, ordered[0].at)
    state.job.article_count = article_count
    for event in ordered:
        apply(state, event)
    return state


def apply(state: JobState, event: ev.Event) -> None:
    """Apply one event that sorts after every event already applied."""
    job = state.job
    if job.version == 0:
        job.kicked_at = event.at
    job.version += 1
    job.last_seq, job.last_event_id = event.seq, event.event_id
    if event.at > job.last_event_at:
        job.last_event_at = event.at
    job.updated_at = job.last_event_at
    _APPLY[type(event)](state, event)


def _mark_running(job: JobRow) -> None:
    if job.status == JobStatus.PENDING.value:
        job.status = JobStatus.RUNNING.value


def _job_started(state: JobState, event: ev.JobStarted) -> None:
    job = state.job
    job.kicked_at = event.at
    job.kind = JobKind(event.kind).value
    job.trigger_source = TriggerSource(event.trigger_source).value
    job.user_id = event.user_id
    job.window_days = event.window_days
    job.note = event.note
    job.expected_genres = list(event.genres) if event.genres is not None else None
    if event.stages:
        job.stages = list(dict.fromkeys(event.stages))
        for row in state.stages.values():
            row.position = _position(job, row.stage)
            state.changed_stages.add(row.stage)
        _derive_stage_pointers(state)
    _mark_running(job)


def _job_finished(job: JobRow, event: ev.Event, status: JobStatus, error: str | None = None) -> None:
    if job.status in _TERMINAL:
        return  # the first terminal event ends the job; later ones do not rewrite it
    job.status = status.value
    job.finished_at = event.at
    job.current_stage = None
    if error is not None:
        job.error = error


def _job_failed(state: JobState, event: ev.JobFailed) -> None:
    job = state.job
    if job.status in _TERMINAL:
        return
    _job_finished(job, event, JobStatus.FAILED, error=event.error)
    job.failed_stage = event.stage
    row = state.stages.get(event.stage) if event.stage else None
    if row is not None and row.status not in _TERMINAL_STAGE:
        _touch_stage(state, row, event)
        row.status = StageStatus.FAILED.value
        row.finished_at = event.at
        row.error = event.error


def _stage_event(state: JobState, event: ev.StageStarted | ev.StageProgress | ev.StageCompleted | ev.StageFailed) -> None:
    job = state.job
    row = state.stages.get(event.stage)
    if row is None:
        row = StageRow(job_id=job.job_id, stage=event.stage, position=_position(job, event.stage), updated_at=event.at)
        state.stages[event.stage] = row
    _touch_stage(state, row, event)
    status_before = row.status
    if row.status != StageStatus.COMPLETED.value:  # a completed stage stays completed: late events do not reopen it
        _STAGE_TRANSITIONS[type(event)](row, event)
    if job.status not in _TERMINAL:
        _mark_running(job)
    if row.status != status_before:
        _derive_stage_pointers(state)


def _stage_started(row: StageRow, event: ev.StageStarted) -> None:
    if row.status != StageStatus.RUNNING.value:
        row.status = StageStatus.RUNNING.value
        row.attempts += 1
        row.started_at = row.started_at or event.at
        row.finished_at = None
        row.error = None
    if event.total is not None:
        row.total = event.total


def _stage_progressed(row: StageRow, event: ev.StageProgress) -> None:
    if row.status == StageStatus.PENDING.value:
        _open_stage(row, event)
    if row.status == StageStatus.RUNNING.value:
        row.done = event.done
        if event.total is not None:
            row.total = event.total


def _stage_completed(row: StageRow, event: ev.StageCompleted) -> None:
    if row.status == StageStatus.PENDING.value:
        _open_stage(row, event)
    row.status = StageStatus.COMPLETED.value
    row.finished_at = event.at
    row.error = None
    if row.total is not None:
        row.done = row.total


def _stage_failed(row: StageRow, event: ev.StageFailed) -> None:
    if row.status == StageStatus.FAILED.value:
        return
    if row.status == StageStatus.PENDING.value:
        _open_stage(row, event)
    row.status = StageStatus.FAILED.value
    row.finished_at = event.at
    row.error = event.error


_STAGE_TRANSITIONS = {
    ev.StageStarted: _stage_started,
    ev.StageProgress: _stage_progressed,
    ev.StageCompleted: _stage_completed,
    ev.StageFailed: _stage_failed,
}


def _open_stage(row: StageRow, event: ev.Event) -> None:
    """A stage seen before (or without) its stage.started event."""
    row.status = StageStatus.RUNNING.value
    row.attempts = max(row.attempts, 1)
    row.started_at = row.started_at or event.at


def _touch_stage(state: JobState, row: StageRow, event: ev.Event) -> None:
    row.version += 1
    row.updated_at = event.at
    state.changed_stages.add(row.stage)


def _position(job: JobRow, stage: str) -> int:
    """Pipeline order: the job's stage list; stages outside it sort after, by name."""
    try:
        return job.stages.index(stage)
    except ValueError:
        return len(job.stages)


def _derive_stage_pointers(state: JobState) -> None:
    """current_stage: the furthest running stage; last_stage: the furthest stage reached."""
    job = state.job
    by_position = sorted(state.stages.values(), key=lambda r: (r.position, r.stage))
    running = [r.stage for r in by_position if r.status == StageStatus.RUNNING.value]
    reached = [r.stage for r in by_position if r.status != StageStatus.PENDING.value]
    job.current_stage = running[-1] if running and job.status not in _TERMINAL else None
    job.last_stage = reached[-1] if reached else None


def _genre_event(state: JobState, event: ev.GenreStatusChanged) -> None:
    job = state.job
    row = state.genres.get(event.genre)
    if row is None:
        row = GenreRow(job_id=job.job_id, genre=event.genre, updated_at=event.at)
        state.genres[event.genre] = row
    row.version += 1
    row.updated_at = event.at
    state.changed_genres.add(event.genre)
    status = GenreStatus(event.status).value
    if status == GenreStatus.RUNNING.value:
        if row.status != GenreStatus.RUNNING.value:
            row.attempts += 1  # a retry is a new attempt, not an overwrite
            row.started_at = row.started_at or event.at
            row.finished_at = None
            row.error = None
    elif status in _TERMINAL_GENRE:
        row.attempts = max(row.attempts, 1)
        row.started_at = row.started_at or event.at
        row.finished_at = event.at
    row.status = status
    if event.phase is not None:
        row.phase = GenrePhase(event.phase).value
    if event.cluster_count is not None:
        row.cluster_count = event.cluster_count
    if event.article_count is not None:
        row.article_count = event.article_count
    if event.error is not None:
        row.error = event.error
    if job.status not in _TERMINAL:
        _mark_running(job)


_TERMINAL = frozenset(s.value for s in TERMINAL_JOB_STATUSES)
_TERMINAL_STAGE = frozenset({StageStatus.COMPLETED.value, StageStatus.FAILED.value})
_TERMINAL_GENRE = frozenset(s.value for s in TERMINAL_GENRE_STATUSES)


def history_entry(event: ev.Event) -> tuple[str, str | None, str | None] | None:
    """(status, stage, reason) of the job's status history for a lifecycle event, else None."""
    entry = _HISTORY.get(type(event))
    return entry(event) if entry else None


_HISTORY = {
    ev.JobStarted: lambda e: (JobStatus.RUNNING.value, None, e.note),
    ev.StageStarted: lambda e: (JobStatus.RUNNING.value, e.stage, None),
    ev.StageFailed: lambda e: (JobStatus.FAILED.value, e.stage, e.error),
    ev.JobCompleted: lambda e: (JobStatus.COMPLETED.value, None, None),
    ev.JobFailed: lambda e: (JobStatus.FAILED.value, e.stage, e.error),
    ev.JobCancelled: lambda e: (JobStatus.CANCELLED.value, None, e.reason),
}

_APPLY = {
    ev.JobStarted: _job_started,
    ev.JobCompleted: lambda state, e: _job_finished(state.job, e, JobStatus.COMPLETED),
    ev.JobFailed: _job_failed,
    ev.JobCancelled: lambda state, e: _job_finished(state.job, e, JobStatus.CANCELLED, error=e.reason),
    ev.StageStarted: _stage_event,
    ev.StageProgress: _stage_event,
    ev.StageCompleted: _stage_event,
    ev.StageFailed: _stage_event,
    ev.GenreStatusChanged: _genre_event,
    ev.JobHeartbeat: lambda state, e: _mark_running(state.job),
    ev.ArticlesAdded: lambda state, e: _mark_running(state.job),
}
