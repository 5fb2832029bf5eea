"""The newest version of every row changed recently, so that a resume is answered
from memory.

A client resuming from offset O needs the rows that changed after O, each at
its newest version. Rather than re-reading (and decoding) every stream entry
after O for every resuming client, which a reconnect storm of thousands of
clients would turn into gigabytes of reads, the hub keeps, per job, each row's
newest version and the newest offset at which it changed: a resume then costs
one pass over the recently changed jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from tracker.fold import GenreRow, JobRow, StageRow

from .deltas import Change


class _Job:
    __slots__ = ("offset", "job", "stages", "genres")

    def __init__(self, offset: int, job: JobRow) -> None:
        self.offset = offset
        self.job = job
        self.stages: dict[str, tuple[int, StageRow]] = {}
        self.genres: dict[str, tuple[int, GenreRow]] = {}


class RecentChanges:
    """Rows changed after offset `since`, newest version each, within one epoch."""

    def __init__(self, keep: int) -> None:
        #: How many offsets back the memory reaches (older resumes read the stream).
        self.keep = keep
        self.since = 0
        self._jobs: dict[uuid.UUID, _Job] = {}

    def reset(self, since: int) -> None:
        """Forget everything: complete from offset `since` on."""
        self.since = since
        self._jobs.clear()

    def add(self, offset: int, change: Change) -> None:
        entry = self._jobs.get(change.job.job_id)
        if entry is None:
            entry = self._jobs[change.job.job_id] = _Job(offset, change.job)
        entry.offset = max(entry.offset, offset)
        if change.job.version > entry.job.version:
            entry.job = change.job
        for row in change.stages:
            _keep(entry.stages, row.stage, offset, row)
        for row in change.genres:
            _keep(entry.genres, row.genre, offset, row)

    def covers(self, offset: int) -> bool:
        """True when every change after `offset` is here."""
        return offset >= self.since

    def after(self, offset: int, admits: Callable[[JobRow], bool]) -> list[Change]:
        """The rows (newest versions) that changed after `offset`, of the admitted jobs."""
        changes = []
        for entry in self._jobs.values():
            if entry.offset > offset and admits(entry.job):
                changes.append(Change(
                    job=entry.job,
                    stages=[row for at, row in entry.stages.values() if at > offset],
                    genres=[row for at, row in entry.genres.values() if at > offset],
                ))
        return changes

    def trim(self, newest: int) -> None:
        """Forget what changed `keep` or more offsets before `newest` (in steps of a
        tenth of `keep`, so that trimming costs little)."""
        floor = newest - self.keep
        if floor <= self.since + self.keep // 10:
            return
        self.since = floor
        self._jobs = {job_id: e for job_id, e in self._jobs.items() if e.offset > floor}
        for e in self._jobs.values():
            e.stages = {k: v for k, v in e.stages.items() if v[0] > floor}
            e.genres = {k: v for k, v in e.genres.items() if v[0] > floor}


def _keep(rows: dict, key: str, offset: int, row: StageRow | GenreRow) -> None:
    current = rows.get(key)
    if current is None:
        rows[key] = (offset, row)
    else:
        at, newest = current
        rows[key] = (max(at, offset), row if row.version > newest.version else newest)
