"""`recap-status prune`: deletes old jobs, whole, and old dead letters.

A job is old once it finished more than RECAP_RETENTION_DAYS (or
`--older-than DAYS`) ago; a job that never finished is old once nothing was
heard of it for that long (its pipeline is long gone). An old job's events go
with its rows, from every table (there are no foreign keys to cascade), so the
log still holds exactly the events of the jobs that remain and `recap-status
rebuild` reproduces them row for row.

Jobs are deleted in batches, one transaction each, under the same locks the
tracker takes: a rebuild waits, and a tracker applying a late event of a job
waits for its batch (and the job is kept if that event made it recent again).
The Redis streams need no pruning: the tracker trims acknowledged events and
the delta stream is capped.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import asyncpg

from . import store
from .settings import Settings

Progress = Callable[[int, int], None]
T = TypeVar("T")
BATCH_JOBS = 500
_NO_JOB = uuid.UUID(int=0)


class _DryRun(Exception):
    """Rolls a batch back after counting what it deleted."""


async def prune(
    conn: asyncpg.Connection,
    before: datetime,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    batch: int = BATCH_JOBS,
) -> dict[str, int]:
    """Delete jobs old at `before` (with their events) and dead letters received
    before it; returns the rows removed per table (with `dry_run`, the rows that
    would be: every batch is rolled back)."""
    removed = dict.fromkeys((*store.PRUNED_TABLES, "recap_dead_letters"), 0)
    total = await conn.fetchval(store.COUNT_OLD_JOBS, before)
    done, after = 0, _NO_JOB
    while page := [r["job_id"] for r in await conn.fetch(store.OLD_JOBS_AFTER, before, after, batch)]:
        after = page[-1]
        counts = await _in_transaction(conn, dry_run, _delete_jobs, before, page)
        for table, n in counts.items():
            removed[table] += n
        done += len(page)
        if progress:
            progress(min(done, total), total)
    removed["recap_dead_letters"] = await _in_transaction(conn, dry_run, _delete_dead_letters, before)
    return removed


async def _in_transaction(conn: asyncpg.Connection, dry_run: bool, work: Callable[..., Awaitable[T]], *args: Any) -> T:
    """`work(conn, *args)` in a transaction, rolled back when `dry_run`."""
    result: Any = None
    try:
        async with conn.transaction():
            result = await work(conn, *args)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return result


async def _delete_jobs(conn: asyncpg.Connection, before: datetime, page: list[uuid.UUID]) -> dict[str, int]:
    await conn.execute(store.LOCK_SHARED)
    await conn.execute(store.LOCK_JOBS, store.job_lock_keys(page))
    jobs = [r["job_id"] for r in await conn.fetch(store.STILL_OLD_JOBS, before, page)]
    return {table: _count(await conn.execute(sql, jobs)) for table, sql in store.DELETE_JOBS.items()}


async def _delete_dead_letters(conn: asyncpg.Connection, before: datetime) -> int:
    return _count(await conn.execute(store.DELETE_OLD_DEAD_LETTERS, before))


def _count(status: str) -> int:
    """Rows of a `DELETE n` command status."""
    return int(status.rsplit(" ", 1)[1])


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `recap-status prune`."""
    parser.add_argument("--older-than", type=_days, default=None, metavar="DAYS",
                        help="prune what is older than this many days (default RECAP_RETENTION_DAYS, 30)")
    parser.add_argument("--dry-run", action="store_true", help="count what would be removed, remove nothing")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """`recap-status prune`: delete, then report the rows removed per table."""
    from .progress import ProgressBar
    from .runner import require

    require(settings, "database_url")
    days = settings.retention_days if args.older_than is None else args.older_than
    before = datetime.now(timezone.utc) - timedelta(days=days)
    print(f"pruning jobs finished (or silent) and dead letters received before {before:%Y-%m-%d %H:%M} UTC "
          f"({days:g} days ago){' (dry run)' if args.dry_run else ''}", flush=True)
    conn = await asyncpg.connect(settings.database_url)
    try:
        bar = ProgressBar("prune", unit="jobs")
        removed = await prune(conn, before, dry_run=args.dry_run, progress=bar.update)
        bar.close()
    finally:
        await conn.close()
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {removed['recap_jobs']:,} jobs and {removed['recap_dead_letters']:,} dead letters:")
    for table, n in removed.items():
        print(f"  {table:<26} {n:>12,}")
    return 0


def _days(text: str) -> float:
    days = float(text)
    if not days >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more days, not {text}")
    return days
