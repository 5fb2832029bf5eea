"""Rebuilds every status table from the event log, in one transaction.

Trackers wait while it runs (it holds the projection lock exclusively), so the
result is a consistent projection of the whole log, equal row for row to what
the live projector produced.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import asyncpg

from . import events as ev
from . import store
from .fold import JobState, fold, history_entry
from .projector import history_columns, write_states

Progress = Callable[[int, int], None]
_WRITE_EVERY = 500  # jobs folded in memory before they are written


async def rebuild(conn: asyncpg.Connection, progress: Progress | None = None) -> int:
    """Rebuild the projection; returns the number of events folded."""
    async with conn.transaction():
        await conn.execute(store.LOCK_EXCLUSIVE)
        total = await conn.fetchval(store.COUNT_EVENTS)
        await conn.execute(store.TRUNCATE_PROJECTION)
        article_counts = {r["job_id"]: r["added"] for r in await conn.fetch(store.REBUILD_ARTICLES)}
        folder = _JobFolder(conn, article_counts)
        async for record in conn.cursor(store.ALL_EVENTS_BY_JOB, prefetch=5_000):
            await folder.add(record["job_id"], ev.decode_event(record["payload"]))
            if progress and folder.seen % 5_000 == 0:
                progress(folder.seen, total)
        await folder.flush()
        if progress:
            progress(folder.seen, total)
    return folder.seen


class _JobFolder:
    """Collects one job's events at a time (the cursor is ordered by job) and writes in chunks."""

    def __init__(self, conn: asyncpg.Connection, article_counts: dict[uuid.UUID, int]) -> None:
        self.conn = conn
        self.article_counts = article_counts
        self.seen = 0
        self.job_id: uuid.UUID | None = None
        self.job_events: list[ev.AnyEvent] = []
        self.folded: list[JobState] = []
        self.history: list[tuple[ev.Event, tuple[str, str | None, str | None]]] = []

    async def add(self, job_id: uuid.UUID, event: ev.AnyEvent) -> None:
        self.seen += 1
        if job_id != self.job_id:
            self._close_job()
            self.job_id = job_id
            if len(self.folded) >= _WRITE_EVERY:
                await self._write()
        self.job_events.append(event)
        if (entry := history_entry(event)) is not None:
            self.history.append((event, entry))

    async def flush(self) -> None:
        self._close_job()
        await self._write()

    def _close_job(self) -> None:
        if self.job_id is not None and self.job_events:
            state = fold(self.job_id, self.job_events, self.article_counts.get(self.job_id, 0))
            state.changed_stages = set(state.stages)
            state.changed_genres = set(state.genres)
            self.folded.append(state)
        self.job_events = []

    async def _write(self) -> None:
        if self.folded:
            await write_states(self.conn, self.folded)
        if self.history:
            await self.conn.execute(store.INSERT_HISTORY, *history_columns(self.history))
        self.folded, self.history = [], []
