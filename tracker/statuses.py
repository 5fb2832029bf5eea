"""Stage names, job kinds and statuses: enums with derived sets, never bare strings."""

from __future__ import annotations

from enum import Enum


class Stage(str, Enum):
    FETCH = "fetch"
    PREPROCESS = "preprocess"
    DEDUP = "dedup"
    GENRE = "genre"
    SELECT = "select"
    EVIDENCE = "evidence"
    DISPATCH = "dispatch"
    PERSIST = "persist"


#: The recap pipeline, in order. A job may declare its own list in `job.started`.
DEFAULT_STAGES: tuple[str, ...] = tuple(s.value for s in Stage)


class JobKind(str, Enum):
    RECAP = "recap"
    MORNING = "morning"


class TriggerSource(str, Enum):
    SYSTEM = "system"
    USER = "user"


class JobStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_JOB_STATUSES = frozenset({JobStatus.PENDING, JobStatus.RUNNING})

#: Shown, never stored: a running job with no event for `RECAP_STALL_AFTER` seconds.
STALLED = "stalled"


class StageStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL_STAGE_STATUSES = frozenset({StageStatus.COMPLETED, StageStatus.FAILED})


class GenreStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"


TERMINAL_GENRE_STATUSES = frozenset({GenreStatus.SUCCEEDED, GenreStatus.PARTIAL, GenreStatus.FAILED})


class GenrePhase(str, Enum):
    EVIDENCE = "evidence"
    CLUSTERING = "clustering"
    SUMMARIZATION = "summarization"
