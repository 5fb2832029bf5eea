"""The push protocol's types: cursors, changes, and every message on the socket.

A *change* is the absolute state of one job after a committed batch: its job
row and the stage and genre rows that moved, each with a version that only
grows. One change is one entry of the deltas stream; its stream id `0-<offset>`
is the change's offset, dense and increasing within an epoch. See
docs/push-protocol.md for the wire format with examples.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from enum import IntEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from tracker.fold import GenreRow, JobRow, StageRow

#: Largest client message accepted; aiohttp closes bigger ones with 1009.
MAX_CLIENT_MESSAGE = 4096


def epoch_key(deltas_stream: str) -> str:
    """Hash holding the stream's current epoch (same hash tag as the stream)."""
    return f"{deltas_stream}:epoch"


class Cursor(msgspec.Struct, frozen=True):
    """A position in the delta history: `offset` counts changes within `epoch`."""

    epoch: Annotated[str, Meta(min_length=1, max_length=64)]
    offset: Annotated[int, Meta(ge=0)]


def offset_of(entry_id: bytes | str) -> int:
    """The offset encoded in a deltas stream entry id (`0-<offset>`)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[2])


def entry_id(offset: int) -> str:
    return f"0-{offset}"


class Change(msgspec.Struct, kw_only=True):
    """One job's new state after a committed batch (absolute, never increments)."""

    job: JobRow
    stages: list[StageRow] = msgspec.field(default_factory=list)
    genres: list[GenreRow] = msgspec.field(default_factory=list)


# --- client -> server ----------------------------------------------------------


class Filters(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a subscriber wants; `user_id` is forced to the caller's own for user tokens."""

    user_id: uuid.UUID | None = None
    kind: Literal["recap", "morning"] | None = None
    trigger_source: Literal["system", "user"] | None = None
    window: Annotated[int, Meta(ge=60, le=90 * 86_400)] | None = None
    limit: Annotated[int, Meta(ge=1, le=200)] | None = None


class Subscribe(msgspec.Struct, tag="subscribe", tag_field="type", kw_only=True, forbid_unknown_fields=True):
    cursor: Cursor | None = None
    filters: Filters = msgspec.field(default_factory=Filters)


ClientMessage = Subscribe
_client_decoder = msgspec.json.Decoder(ClientMessage)


def decode_client_message(data: str | bytes) -> ClientMessage:
    """Decode one client message; raises msgspec.DecodeError/ValidationError."""
    return _client_decoder.decode(data)


# --- server -> client -----------------------------------------------------------


class Snapshot(msgspec.Struct, tag="snapshot", tag_field="type", kw_only=True):
    """The whole state for a subscription: the REST job-progress response, plus the
    rows of every job it mentions in the change format (so deltas apply to them)."""

    cursor: Cursor
    recovered: bool = False
    reason: str
    progress: msgspec.Raw
    jobs: msgspec.Raw


class Resumed(msgspec.Struct, tag="resumed", tag_field="type", kw_only=True):
    """The changes a resuming client missed, coalesced per row; then deltas follow."""

    cursor: Cursor
    recovered: bool = True
    changes: list[Change]


class Delta(msgspec.Struct, tag="delta", tag_field="type", kw_only=True):
    """Changes committed since the previous message; `cursor` is the newest offset."""

    cursor: Cursor
    changes: list[Change]


class Stats(msgspec.Struct, tag="stats", tag_field="type", kw_only=True):
    """New job statistics (the job-stats shape) after jobs changed status."""

    stats: msgspec.Raw


class Heartbeat(msgspec.Struct, tag="heartbeat", tag_field="type", kw_only=True):
    """Sent when nothing else was for a while: the newest cursor, so an idle
    client's cursor keeps up with the stream and stays resumable."""

    cursor: Cursor


encoder = msgspec.json.Encoder()


def encode(message: Any) -> bytes:
    return encoder.encode(message)


class CloseCode(IntEnum):
    """WebSocket close codes the server uses, and what the client should do."""

    GOING_AWAY = 1001  # server shutting down: reconnect with backoff, resume with the cursor
    UNSUPPORTED_DATA = 1003  # a binary frame: send JSON text
    INTERNAL_ERROR = 1011  # a snapshot could not be read: reconnect with backoff
    MESSAGE_TOO_BIG = 1009  # a client message over MAX_CLIENT_MESSAGE
    BAD_MESSAGE = 4400  # not JSON, or not a valid client message
    FORBIDDEN = 4403  # a filter the token may not use (another user's user_id)
    SUBSCRIBE_TIMEOUT = 4408  # no subscribe message in time
    TOO_SLOW = 4429  # the client could not keep up: reconnect and resume with the cursor


# --- coalescing -------------------------------------------------------------------


def coalesce(changes: Iterable[Change]) -> list[Change]:
    """Merge changes per row, keeping the highest version of each job, stage and genre row.

    Order of the input does not matter; the output has one change per job.
    """
    jobs: dict[uuid.UUID, JobRow] = {}
    stages: dict[tuple[uuid.UUID, str], StageRow] = {}
    genres: dict[tuple[uuid.UUID, str], GenreRow] = {}
    for change in changes:
        _keep_newest(jobs, change.job.job_id, change.job)
        for s in change.stages:
            _keep_newest(stages, (s.job_id, s.stage), s)
        for g in change.genres:
            _keep_newest(genres, (g.job_id, g.genre), g)
    merged = {job_id: Change(job=row) for job_id, row in jobs.items()}
    for (job_id, _), s in stages.items():
        merged[job_id].stages.append(s)
    for (job_id, _), g in genres.items():
        merged[job_id].genres.append(g)
    return list(merged.values())


def _keep_newest(rows: dict, key: Any, row: Any) -> None:
    current = rows.get(key)
    if current is None or row.version > current.version:
        rows[key] = row


def row_count(changes: Iterable[Change]) -> int:
    return sum(1 + len(c.stages) + len(c.genres) for c in changes)
