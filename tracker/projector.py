"""Projects a batch of decoded events into Postgres in one transaction.

The event log insert (unique on event_id) decides which events are new; only
those touch the status rows, so a re-delivered event is applied once. Jobs are
locked (advisory, in one order) so that several trackers can project the same
job concurrently.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
import msgspec

from . import events as ev
from . import store
from .fold import GenreRow, JobRow, JobState, StageRow, apply, fold, history_entry, order_key


class BatchResult(msgspec.Struct, kw_only=True):
    """What one committed batch changed; the source of the live deltas."""

    received: int = 0
    applied: int = 0
    jobs: list[JobRow] = msgspec.field(default_factory=list)
    stages: list[StageRow] = msgspec.field(default_factory=list)
    genres: list[GenreRow] = msgspec.field(default_factory=list)

    @property
    def duplicates(self) -> int:
        return self.received - self.applied

    @classmethod
    def merged(cls, results: Iterable[BatchResult]) -> BatchResult:
        """One result for batches committed together (disjoint jobs)."""
        total = cls()
        for r in results:
            total.received += r.received
            total.applied += r.applied
            total.jobs += r.jobs
            total.stages += r.stages
            total.genres += r.genres
        return total


async def project_batch(
    conn: asyncpg.Connection, events: Sequence[ev.AnyEvent], payloads: Sequence[bytes] | None = None
) -> BatchResult:
    """Apply events (any order, duplicates allowed) in one transaction.

    `payloads` are the events' JSON as received, logged as they are; without
    them the events are encoded again.
    """
    result = BatchResult(received=len(events))
    async with conn.transaction():
        await conn.execute(store.LOCK_SHARED)
        new_events = await _insert_into_log(conn, events, payloads)
        if not new_events:
            return result
        by_job: dict[uuid.UUID, list[ev.AnyEvent]] = defaultdict(list)
        for event in new_events:
            by_job[event.job_id].append(event)
        job_ids = list(by_job)
        await conn.execute(store.LOCK_JOBS, store.job_lock_keys(job_ids))
        states = await load_states(conn, job_ids)
        added_articles = await _upsert_articles(conn, new_events)
        refold_ids = [j for j, evs in by_job.items() if j in states and not _all_follow(states[j], evs)]
        refolded = await _refold(conn, refold_ids, states)
        for job_id, job_events in by_job.items():
            if job_id in refolded:
                state = refolded[job_id]
            else:
                state = states.get(job_id) or JobState.empty(job_id, min(e.at for e in job_events))
                for event in sorted(job_events, key=order_key):
                    apply(state, event)
            state.job.article_count += added_articles.get(job_id, 0)
            states[job_id] = state
        changed = [states[j] for j in job_ids]
        await write_states(conn, changed)
        await _insert_history(conn, new_events)
    result.applied = len(new_events)
    result.jobs = [s.job for s in changed]
    result.stages = [s.stages[name] for s in changed for name in sorted(s.changed_stages)]
    result.genres = [s.genres[name] for s in changed for name in sorted(s.changed_genres)]
    return result


def _all_follow(state: JobState, job_events: Iterable[ev.Event]) -> bool:
    return all(state.follows(e) for e in job_events)


async def _insert_into_log(
    conn: asyncpg.Connection, events: Sequence[ev.AnyEvent], payloads: Sequence[bytes] | None
) -> list[ev.AnyEvent]:
    if payloads is None:
        payloads = [ev.encode_event(e) for e in events]
    by_id = {e.event_id: (e, p) for e, p in zip(events, payloads)}
    unique = [e for e, _ in by_id.values()]
    columns = (
        [e.event_id for e in unique],
        [e.job_id for e in unique],
        [e.seq for e in unique],
        [e.__struct_config__.tag for e in unique],
        [e.at for e in unique],
        [p.decode() for _, p in by_id.values()],
    )
    if len(unique) == len(events) and await _insert_if_all_new(conn, store.INSERT_NEW_EVENTS, *columns):
        return unique
    new_ids = {r["event_id"] for r in await conn.fetch(store.INSERT_EVENTS, *columns)}
    return [e for e in unique if e.event_id in new_ids]


async def _insert_if_all_new(conn: asyncpg.Connection, statement: str, *args: Any) -> bool:
    """Run an INSERT that fails on any row already stored, in a savepoint; False if it did.

    Events and articles nearly always arrive once, and a plain insert costs
    Postgres markedly less than `ON CONFLICT` (no speculative insertion, no
    sort to merge); the caller falls back to the merging statement on False.
    """
    try:
        async with conn.transaction():
            await conn.execute(statement, *args)
    except asyncpg.UniqueViolationError:
        return False
    return True


async def load_states(conn: asyncpg.Connection, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, JobState]:
    """The stored job, stage and genre rows of these jobs."""
    states = {r["job_id"]: JobState(job=JobRow(**r)) for r in await conn.fetch(store.LOAD_JOBS, job_ids)}
    for r in await conn.fetch(store.LOAD_STAGES, job_ids):
        states[r["job_id"]].stages[r["stage"]] = StageRow(**r)
    for r in await conn.fetch(store.LOAD_GENRES, job_ids):
        states[r["job_id"]].genres[r["genre"]] = GenreRow(**r)
    return states


async def _refold(
    conn: asyncpg.Connection, job_ids: list[uuid.UUID], stored: dict[uuid.UUID, JobState]
) -> dict[uuid.UUID, JobState]:
    """Fold jobs again from the event log (which already holds this batch's events)."""
    if not job_ids:
        return {}
    logged: dict[uuid.UUID, list[ev.AnyEvent]] = defaultdict(list)
    for r in await conn.fetch(store.LOAD_JOB_LOG, job_ids):
        logged[r["job_id"]].append(ev.decode_event(r["payload"]))
    refolded = {}
    for job_id, job_events in logged.items():
        state = fold(job_id, job_events, article_count=stored[job_id].job.article_count)
        # Rows that exist stay written; every one may have changed.
        state.changed_stages = set(state.stages)
        state.changed_genres = set(state.genres)
        refolded[job_id] = state
    return refolded


async def _upsert_articles(conn: asyncpg.Connection, new_events: Sequence[ev.AnyEvent]) -> dict[uuid.UUID, int]:
    """Upsert the articles of new `articles.added` events; returns how many new articles each job got."""
    added = [e for e in new_events if type(e) is ev.ArticlesAdded]
    if not added:
        return {}
    ids = [e.event_id for e in added]
    mentions = Counter(e.job_id for e in added for _ in e.articles)
    mentioned_once = len({(e.job_id, a.article_id) for e in added for a in e.articles}) == mentions.total()
    if mentioned_once and await _insert_if_all_new(conn, store.INSERT_NEW_ARTICLES_OF_EVENTS, ids):
        return dict(mentions)
    return {r["job_id"]: r["added"] for r in await conn.fetch(store.UPSERT_ARTICLES_OF_EVENTS, ids)}


async def write_states(conn: asyncpg.Connection, states: Sequence[JobState]) -> None:
    await conn.executemany(store.UPSERT_JOB, [store.job_values(s.job) for s in states])
    stage_rows = [store.stage_values(s.stages[n]) for s in states for n in s.changed_stages]
    if stage_rows:
        await conn.executemany(store.UPSERT_STAGE, stage_rows)
    genre_rows = [store.genre_values(s.genres[n]) for s in states for n in s.changed_genres]
    if genre_rows:
        await conn.executemany(store.UPSERT_GENRE, genre_rows)


async def _insert_history(conn: asyncpg.Connection, new_events: Sequence[ev.AnyEvent]) -> None:
    rows = [(e, entry) for e in new_events if (entry := history_entry(e)) is not None]
    if rows:
        await conn.execute(store.INSERT_HISTORY, *history_columns(rows))


def history_columns(rows: Sequence[tuple[ev.Event, tuple[str, str | None, str | None]]]) -> list[list]:
    """Column arrays for INSERT_HISTORY from (event, history entry) pairs."""
    return [
        [e.job_id for e, _ in rows],
        [e.event_id for e, _ in rows],
        [e.seq for e, _ in rows],
        [h[0] for _, h in rows],
        [h[1] for _, h in rows],
        [e.at for e, _ in rows],
        [h[2] for _, h in rows],
    ]
