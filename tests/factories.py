"""Event builders and a hypothesis strategy for realistic job histories."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
from hypothesis import strategies as st

from tracker import events as ev
from tracker.statuses import DEFAULT_STAGES

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)
FEEDS = [uuid.UUID(int=i) for i in range(1, 4)]
USERS = [uuid.UUID(int=100 + i) for i in range(1, 3)]
# Any text a producer can encode: UTF-8 has no lone surrogates, and the tracker rejects NUL.
NOTES = st.none() | st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=5)


def event(type_: str, job_id: uuid.UUID, seq: int, at: datetime | None = None, **fields: Any) -> ev.AnyEvent:
    """One valid event, validated like a decoded one (enums, UUIDs, timestamps)."""
    raw = {"type": type_, "event_id": str(uuid.uuid4()), "job_id": str(job_id), "seq": seq,
           "at": (at or T0 + timedelta(seconds=seq)).isoformat(), **fields}
    return msgspec.json.decode(msgspec.json.encode(raw), type=ev.AnyEvent)


class JobScript:
    """Builds one job's events in emit order, numbering seq as a producer would."""

    def __init__(self, job_id: uuid.UUID | None = None, start: datetime = T0) -> None:
        self.job_id = job_id or uuid.uuid4()
        self.events: list[ev.AnyEvent] = []
        self.clock = start

    def emit(self, type_: str, seconds: float = 1.0, **fields: Any) -> ev.AnyEvent:
        self.clock += timedelta(seconds=seconds)
        e = event(type_, self.job_id, len(self.events), self.clock, **fields)
        self.events.append(e)
        return e


@st.composite
def job_histories(draw: st.DrawFn) -> list[ev.AnyEvent]:
    """A job as a producer would report it: stages in order with progress, genres with
    retries and partial results, articles with overlaps, and an ending (or none)."""
    script = JobScript(uuid.UUID(int=draw(st.integers(1, 2**64))))
    user = draw(st.sampled_from([None, *USERS]))
    genres = draw(st.lists(st.sampled_from(["tech", "sports", "world", "<b>x</b>"]), unique=True, max_size=3))
    script.emit("job.started", kind=draw(st.sampled_from(["recap", "morning"])),
                    trigger_source="user" if user else "system",
                    **({"user_id": str(user)} if user else {}), genres=genres, note=draw(NOTES))
    n_stages = draw(st.integers(0, len(DEFAULT_STAGES)))
    for stage in DEFAULT_STAGES[:n_stages]:
        total = draw(st.none() | st.integers(1, 1000))
        script.emit("stage.started", stage=stage, **({"total": total} if total else {}))
        for done in sorted(draw(st.lists(st.integers(0, 1000), max_size=3))):
            script.emit("stage.progress", 0.5, stage=stage, done=done)
        outcome = draw(st.sampled_from(["completed", "completed", "failed", "open"]))
        if outcome == "completed":
            script.emit("stage.completed", stage=stage)
        elif outcome == "failed":
            script.emit("stage.failed", stage=stage, error="boom")
        if draw(st.integers(0, 9)) == 0:  # a producer bug: progress after the stage ended
            script.emit("stage.progress", stage=stage, done=1)
        if outcome != "completed":
            break
    for genre in genres:
        for _attempt in range(draw(st.integers(0, 2))):
            script.emit("genre.status", genre=genre, status="running", phase=draw(st.sampled_from(["evidence", "clustering", "summarization"])))
            script.emit("genre.status", genre=genre, status=draw(st.sampled_from(["succeeded", "partial", "failed"])),
                        cluster_count=draw(st.integers(0, 9)), article_count=draw(st.integers(0, 99)))
    for _ in range(draw(st.integers(0, 3))):
        ids = draw(st.lists(st.sampled_from([f"a{i}" for i in range(6)]), min_size=1, max_size=4))
        script.emit("articles.added", articles=[
            {"article_id": a, "feed_id": str(draw(st.sampled_from(FEEDS))),
             **({"original_user_id": str(user)} if user else {})} for a in ids])
    if draw(st.booleans()):
        script.emit("job.heartbeat")
    ending = draw(st.sampled_from(["completed", "failed", "cancelled", "running"]))
    if ending == "completed":
        script.emit("job.completed")
    elif ending == "failed":
        script.emit("job.failed", error="stage failed", stage=DEFAULT_STAGES[max(n_stages - 1, 0)])
    elif ending == "cancelled":
        script.emit("job.cancelled", reason="operator")
    if ending != "running" and draw(st.integers(0, 4)) == 0:
        script.emit("job.heartbeat")  # a late heartbeat must not reopen the job
    return script.events
