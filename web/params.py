"""Query and path parameters: parsed once, checked against their limits, and
rejected with a 400 that names the parameter and what is allowed.

Strict on purpose: an empty value (`?limit=`) is not a number, and a
single-valued parameter given twice is ambiguous; both are 400s.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

from tracker.settings import Settings
from tracker.statuses import STALLED, JobKind, JobStatus, TriggerSource

from .errors import bad_parameter

DEFAULT_WINDOW = 86_400
MAX_WINDOW = 366 * 86_400
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
DEFAULT_EVENTS = 50
MAX_EVENTS = 500

KINDS: tuple[str, ...] = tuple(k.value for k in JobKind)
TRIGGER_SOURCES: tuple[str, ...] = tuple(t.value for t in TriggerSource)
#: `status` filter values: the stored statuses, and the derived `stalled`.
STATUS_FILTERS: tuple[str, ...] = (*(s.value for s in JobStatus), STALLED)

_INTEGER = re.compile(r"[+-]?\d{1,18}")

class ProgressParams(msgspec.Struct, frozen=True, kw_only=True):
    """What a job-progress poll asks for (also the WebSocket snapshot's parameters)."""

    #: The user asked for with `?user_id=`; the caller's principal decides whether allowed.
    user_id: uuid.UUID | None = None
    window: int = DEFAULT_WINDOW
    limit: int = DEFAULT_LIMIT
    #: Filters of the recent and active jobs; `kind` also picks the stats (recap when absent).
    kind: str | None = None
    statuses: tuple[str, ...] | None = None
    trigger_source: str | None = None
    #: A running job with no event for this many seconds is shown as stalled.
    stall_after: float = 300.0


class StatsParams(msgspec.Struct, frozen=True, kw_only=True):
    user_id: uuid.UUID | None = None
    window: int = DEFAULT_WINDOW
    kind: str = JobKind.RECAP.value
    #: Only jobs started so (None: every job), as job-progress's `trigger_source`.
    trigger_source: str | None = None
    stall_after: float = 300.0


def progress_params(query: Any, settings: Settings) -> ProgressParams:
    """Parameters of GET /v1/dashboard/job-progress from a query (a MultiDict or a dict)."""
    return ProgressParams(
        user_id=uuid_param(query, "user_id"),
        window=int_param(query, "window", DEFAULT_WINDOW, 1, MAX_WINDOW),
        limit=int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        kind=choice_param(query, "kind", KINDS),
        statuses=choices_param(query, "status", STATUS_FILTERS),
        trigger_source=choice_param(query, "trigger_source", TRIGGER_SOURCES),
        stall_after=settings.stall_after,
    )


def stats_params(query: Any, settings: Settings) -> StatsParams:
    """Parameters of GET /v1/dashboard/job-stats."""
    return StatsParams(
        user_id=uuid_param(query, "user_id"),
        window=int_param(query, "window", DEFAULT_WINDOW, 1, MAX_WINDOW),
        kind=choice_param(query, "kind", KINDS) or JobKind.RECAP.value,
        trigger_source=choice_param(query, "trigger_source", TRIGGER_SOURCES),
        stall_after=settings.stall_after,
    )


def _value(query: Any, name: str) -> str | None:
    values = _all_values(query, name)
    if len(values) > 1:
        raise bad_parameter(name, "must be given once")
    return values[0] if values else None


def uuid_param(query: Any, name: str) -> uuid.UUID | None:
    raw = _value(query, name)
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise bad_parameter(name, "must be a UUID, such as 3f2b8a1e-0c4d-4e5f-9a6b-7c8d9e0f1a2b") from None


def path_uuid(value: str, name: str) -> uuid.UUID:
    """A UUID path segment; a malformed one is a 400 like a query parameter."""
    parsed = uuid_param({name: value}, name)
    if parsed is None:
        raise bad_parameter(name, "is required")
    return parsed


def int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = _value(query, name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw) or not low <= int(raw) <= high:
        raise bad_parameter(name, f"must be an integer from {low} to {high}")
    return int(raw)


def choice_param(query: Any, name: str, allowed: Sequence[str]) -> str | None:
    raw = _value(query, name)
    if raw is not None and raw not in allowed:
        raise bad_parameter(name, f"must be one of {', '.join(allowed)}")
    return raw


def choices_param(query: Any, name: str, allowed: Sequence[str]) -> tuple[str, ...] | None:
    """A repeatable parameter (`?status=failed&status=cancelled`)."""
    values = _all_values(query, name)
    for value in values:
        if value not in allowed:
            raise bad_parameter(name, f"must be one of {', '.join(allowed)} (repeat the parameter for several)")
    return tuple(dict.fromkeys(values)) or None


def _all_values(query: Any, name: str) -> list[str]:
    if hasattr(query, "getall"):
        return list(query.getall(name, []))
    value = query.get(name)
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
