"""The event wire format: a msgspec tagged union, one JSON object per stream entry.

Schema evolution follows msgspec's rules: new fields get defaults, existing
fields never change type.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Union

import msgspec
from msgspec import Meta

from .statuses import GenrePhase, GenreStatus, JobKind, TriggerSource

#: The one field of a stream entry that carries the event's JSON.
EVENT_FIELD = "event"

Seq = Annotated[int, Meta(ge=0, le=2**62)]
Timestamp = Annotated[datetime, Meta(tz=True)]
Name = Annotated[str, Meta(min_length=1, max_length=128)]
Text = Annotated[str, Meta(max_length=8_192)]
Count = Annotated[int, Meta(ge=0, le=2**62)]


class Event(msgspec.Struct, frozen=True, tag_field="type", kw_only=True, omit_defaults=True):
    """Fields every event carries."""

    event_id: uuid.UUID
    job_id: uuid.UUID
    seq: Seq
    at: Timestamp


class JobStarted(Event, tag="job.started"):
    kind: JobKind = JobKind.RECAP
    trigger_source: TriggerSource = TriggerSource.SYSTEM
    user_id: uuid.UUID | None = None
    stages: Annotated[list[Name], Meta(max_length=64)] | None = None
    genres: Annotated[list[Name], Meta(max_length=1_000)] | None = None
    window_days: Annotated[int, Meta(ge=0, le=3_650)] | None = None
    note: Text | None = None


class JobHeartbeat(Event, tag="job.heartbeat"):
    pass


class JobCompleted(Event, tag="job.completed"):
    pass


class JobFailed(Event, tag="job.failed"):
    error: Text
    stage: Name | None = None


class JobCancelled(Event, tag="job.cancelled"):
    reason: Text | None = None


class StageStarted(Event, tag="stage.started"):
    stage: Name
    total: Count | None = None


class StageProgress(Event, tag="stage.progress"):
    stage: Name
    done: Count
    total: Count | None = None


class StageCompleted(Event, tag="stage.completed"):
    stage: Name


class StageFailed(Event, tag="stage.failed"):
    stage: Name
    error: Text


class GenreStatusChanged(Event, tag="genre.status"):
    genre: Name
    status: GenreStatus
    phase: GenrePhase | None = None
    cluster_count: Count | None = None
    article_count: Count | None = None
    error: Text | None = None


class Article(msgspec.Struct, frozen=True, kw_only=True):
    article_id: Annotated[str, Meta(min_length=1, max_length=256)]
    feed_id: uuid.UUID | None = None
    original_user_id: uuid.UUID | None = None


class ArticlesAdded(Event, tag="articles.added"):
    articles: Annotated[list[Article], Meta(max_length=10_000)]


AnyEvent = Union[
    JobStarted,
    JobHeartbeat,
    JobCompleted,
    JobFailed,
    JobCancelled,
    StageStarted,
    StageProgress,
    StageCompleted,
    StageFailed,
    GenreStatusChanged,
    ArticlesAdded,
]

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in AnyEvent.__args__  # type: ignore[attr-defined]
}

_decoder = msgspec.json.Decoder(AnyEvent)
_encoder = msgspec.json.Encoder()


def decode_event(data: bytes | str) -> AnyEvent:
    """Decode and validate one event; raises msgspec.ValidationError / DecodeError."""
    event = _decoder.decode(data)
    raw = data.encode() if isinstance(data, str) else data
    if b"\\u0000" in raw:  # JSON can only carry NUL escaped; a cheap test before the exact one
        path = _nul_path(msgspec.to_builtins(event), "$")
        if path is not None:
            # Postgres text cannot hold NUL: reject the event here, with a reason,
            # rather than let it fail a whole batch later.
            raise msgspec.ValidationError(f"Expected `str` without NUL characters - at `{path}`")
    return event


def _nul_path(value: Any, path: str) -> str | None:
    """The path of the first string holding a NUL character, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _nul_path(item, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
        if found:
            return found
    return None


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def event_from_fields(type_: str, fields: dict[str, Any]) -> AnyEvent:
    """Build an event of the given type from loosely typed values (CLI, tests)."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}; one of: {', '.join(EVENT_TYPES)}")
    return msgspec.convert({**fields, "type": type_}, AnyEvent, strict=False)


def new_event_id() -> uuid.UUID:
    return uuid.uuid4()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of the event union, as published at GET /v1/schema/events."""
    schema = msgspec.json.schema(AnyEvent)
    schema["title"] = "recap-status event"
    schema["description"] = (
        "One event per entry of the events stream, in the entry field 'event', as UTF-8 JSON."
    )
    return schema
