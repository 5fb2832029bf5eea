"""Coalescing and the subscriber's bounded queue (no servers needed)."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timezone

from pusher.deltas import Change, Cursor, coalesce, decode_client_message, encode, row_count
from pusher.hub import Frame, HubOptions, Scope, Subscriber
from tracker.fold import GenreRow, JobRow, StageRow

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)


def job(job_id: uuid.UUID, version: int, user: uuid.UUID | None = None, kind: str = "recap") -> JobRow:
    return JobRow(job_id=job_id, kicked_at=NOW, updated_at=NOW, last_event_at=NOW, version=version, user_id=user, kind=kind)


def stage_row(job_id: uuid.UUID, name: str, version: int) -> StageRow:
    return StageRow(job_id=job_id, stage=name, position=0, updated_at=NOW, version=version, done=version)


def genre_row(job_id: uuid.UUID, name: str, version: int) -> GenreRow:
    return GenreRow(job_id=job_id, genre=name, updated_at=NOW, version=version)


def test_coalesce_keeps_the_newest_version_of_every_row_whatever_the_order() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    changes = [
        Change(job=job(a, v), stages=[stage_row(a, "fetch", v)], genres=[genre_row(a, "tech", v)] if v % 2 else [])
        for v in range(1, 8)
    ] + [Change(job=job(b, 3), stages=[stage_row(b, "dedup", 3)])]
    for _ in range(5):
        random.shuffle(changes)
        merged = {c.job.job_id: c for c in coalesce(changes)}
        assert merged[a].job.version == 7
        assert [(s.stage, s.version) for s in merged[a].stages] == [("fetch", 7)]
        assert [(g.genre, g.version) for g in merged[a].genres] == [("tech", 7)]
        assert merged[b].job.version == 3 and merged[b].stages[0].stage == "dedup"
        assert row_count(merged.values()) == 5


def frame(offset: int, *changes: Change) -> Frame:
    return Frame(Cursor("e", offset), list(changes), None)


def test_a_full_queue_is_coalesced_and_stays_bounded() -> None:
    sub = Subscriber(Scope(admin=True), HubOptions(queue_limit=4, max_rows=100))
    a = uuid.uuid4()
    for offset in range(1, 50):
        sub.offer(frame(offset, Change(job=job(a, offset), stages=[stage_row(a, "fetch", offset)])))
        assert len(sub.frames) <= 4
    assert sub.resync_reason is None and sub.coalesced > 0
    newest = [c for f in sub.frames for c in f.changes]
    assert max(c.job.version for c in newest) == 49
    assert sub.frames[-1].cursor.offset == 49
    assert b'"offset":49' in sub.frames[-1].encoded()


def test_a_backlog_too_big_to_coalesce_turns_into_a_resync() -> None:
    sub = Subscriber(Scope(admin=True), HubOptions(queue_limit=2, max_rows=5))
    for offset in range(1, 10):
        sub.offer(frame(offset, Change(job=job(uuid.uuid4(), 1))))
    assert sub.resync_reason == "slow" and not sub.frames
    sub.offer(frame(10, Change(job=job(uuid.uuid4(), 1))))
    assert not sub.frames  # the snapshot to come holds it


def test_stats_frames_coalesce_to_the_latest() -> None:
    sub = Subscriber(Scope(admin=True), HubOptions(queue_limit=3, max_rows=100))
    a = uuid.uuid4()
    for i in range(10):
        sub.offer(Frame(None, None, b'{"type":"stats","stats":{"n":%d}}' % i))
        sub.offer(frame(i + 1, Change(job=job(a, i + 1))))
    stats = [f.data for f in sub.frames if f.changes is None]
    assert stats[-1] == b'{"type":"stats","stats":{"n":9}}'
    assert len(sub.frames) <= 3


def test_frames_the_client_already_has_are_skipped() -> None:
    sub = Subscriber(Scope(admin=True), HubOptions())
    sub.after = 5
    sub.offer(frame(5, Change(job=job(uuid.uuid4(), 1))))
    sub.offer(frame(6, Change(job=job(uuid.uuid4(), 1))))
    assert [f.cursor.offset for f in sub.frames] == [6]


def test_scope_admits_only_the_users_jobs_and_the_filters() -> None:
    me, other = uuid.uuid4(), uuid.uuid4()
    mine = Scope(admin=False, user_id=me)
    assert mine.admits(job(uuid.uuid4(), 1, user=me))
    assert not mine.admits(job(uuid.uuid4(), 1, user=other))
    assert not mine.admits(job(uuid.uuid4(), 1, user=None))
    morning = Scope(admin=True, kind="morning")
    assert morning.admits(job(uuid.uuid4(), 1, kind="morning")) and not morning.admits(job(uuid.uuid4(), 1))


def test_client_messages_decode_and_encode() -> None:
    msg = decode_client_message(b'{"type":"subscribe","cursor":{"epoch":"ab","offset":3},"filters":{"kind":"recap"}}')
    assert msg.cursor == Cursor("ab", 3) and msg.filters.kind == "recap"
    assert encode(Cursor("ab", 3)) == b'{"epoch":"ab","offset":3}'


def test_text_frames_are_framed_as_rfc_6455_says() -> None:
    import struct

    from web.ws import text_frame

    for size in (0, 125, 126, 65_535, 65_536, 200_000):
        payload = b"x" * size
        frame = text_frame(payload)
        assert frame[0] == 0x81  # FIN, text
        length, header = frame[1], 2
        if length == 126:
            (length,), header = struct.unpack("!H", frame[2:4]), 4
        elif length == 127:
            (length,), header = struct.unpack("!Q", frame[2:10]), 10
        assert length == size and frame[header:] == payload


def test_recent_changes_answer_a_resume_with_the_newest_rows_after_the_cursor() -> None:
    from pusher.recent import RecentChanges

    recent = RecentChanges(keep=1000)
    a, b = uuid.uuid4(), uuid.uuid4()
    recent.add(1, Change(job=job(a, 1), stages=[stage_row(a, "fetch", 1)]))
    recent.add(2, Change(job=job(b, 1, user=uuid.UUID(int=7))))
    recent.add(3, Change(job=job(a, 3), stages=[stage_row(a, "fetch", 3)], genres=[genre_row(a, "tech", 1)]))
    recent.add(4, Change(job=job(a, 2), stages=[stage_row(a, "fetch", 2)]))  # a late, older publish
    [change] = recent.after(2, Scope(admin=True).admits)
    assert change.job.version == 3 and [s.version for s in change.stages] == [3] and len(change.genres) == 1
    assert {c.job.job_id for c in recent.after(0, Scope(admin=True).admits)} == {a, b}
    assert [c.job.job_id for c in recent.after(0, Scope(admin=False, user_id=uuid.UUID(int=7)).admits)] == [b]
    assert recent.after(4, Scope(admin=True).admits) == []


def test_recent_changes_forget_what_is_older_than_they_keep() -> None:
    from pusher.recent import RecentChanges

    recent = RecentChanges(keep=100)
    old, new = uuid.uuid4(), uuid.uuid4()
    recent.add(1, Change(job=job(old, 1)))
    for offset in range(2, 300):
        recent.add(offset, Change(job=job(new, offset), stages=[stage_row(new, "fetch", offset)]))
        recent.trim(offset)
    assert not recent.covers(100) and recent.covers(299 - 100 + 10)
    assert [c.job.job_id for c in recent.after(recent.since, Scope(admin=True).admits)] == [new]
