"""tracker.client (on fakeredis) and tracker.emit's argument handling."""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import uuid
from typing import Any

import fakeredis
import pytest

from tracker import emit
from tracker.client import Article, SyncTracker, Tracker, emit_event
from tracker.events import (
    EVENT_TYPES,
    ArticlesAdded,
    GenreStatusChanged,
    JobCompleted,
    JobHeartbeat,
    StageProgress,
    decode_event,
    encode_event,
    event_from_fields,
    utcnow,
)
from tracker.settings import Settings

STREAM = "t:events"
#: Everything but progress and heartbeats.
STATE_CHANGES = set(EVENT_TYPES) - {"stage.progress", "job.heartbeat"}


async def read_events(redis: Any, stream: str = STREAM) -> list[Any]:
    return [decode_event(fields[b"event"]) for _, fields in await redis.xrange(stream)]


def types(events: list[Any]) -> list[str]:
    return [e.__struct_config__.tag for e in events]


def state_changes(events: list[Any]) -> list[str]:
    return [t for t in types(events) if t in STATE_CHANGES]


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())


async def test_events_are_numbered_in_emit_order(redis: Any) -> None:
    job_id = uuid.uuid4()
    user_id = uuid.uuid4()
    async with Tracker(redis, STREAM) as tracker:
        async with tracker.job(job_id=job_id, user_id=user_id, genres=["tech"], window_days=7, note="n") as job:
            assert job.job_id == job_id
            async with job.stage("fetch", total=3) as stage:
                stage.advance(3)
            await job.genre("tech", status="running", phase="clustering")
            await job.articles([Article(article_id="a1", feed_id=uuid.uuid4(), original_user_id=user_id)])
            await job.genre("tech", status="succeeded", cluster_count=4, article_count=9)

    events = await read_events(redis)
    assert types(events) == [
        "job.started", "stage.started", "stage.progress", "stage.completed",
        "genre.status", "articles.added", "genre.status", "job.completed",
    ]  # fmt: skip
    assert [e.seq for e in events] == list(range(len(events)))
    assert {e.job_id for e in events} == {job_id}
    assert len({e.event_id for e in events}) == len(events)
    assert all(e.at.utcoffset().total_seconds() == 0 for e in events)
    started = events[0]
    assert (started.user_id, started.trigger_source.value, started.genres) == (user_id, "user", ["tech"])
    assert (started.window_days, started.note, started.kind.value) == (7, "n", "recap")
    assert tracker.stats.sent == len(events) and tracker.stats.pending == 0


async def test_job_id_defaults_to_a_new_uuid_and_system_trigger(redis: Any) -> None:
    async with Tracker(redis, STREAM) as tracker:
        async with tracker.job(kind="morning") as first, tracker.job(job_id=str(uuid.uuid4())) as second:
            pass
    assert isinstance(first.job_id, uuid.UUID) and first.job_id != second.job_id
    events = await read_events(redis)
    assert {(e.job_id, e.seq) for e in events if e.__struct_config__.tag == "job.started"} == {
        (first.job_id, 0),
        (second.job_id, 0),
    }
    assert events[0].trigger_source.value == "system" and events[0].kind.value == "morning"


async def test_failing_block_emits_failed_events_and_propagates(redis: Any) -> None:
    async with Tracker(redis, STREAM) as tracker:
        with pytest.raises(ValueError, match="boom"):
            async with tracker.job() as job:
                async with job.stage("dedup", total=10) as stage:
                    stage.advance(4)
                    raise ValueError("boom")

    events = await read_events(redis)
    assert types(events) == ["job.started", "stage.started", "stage.progress", "stage.failed", "job.failed"]
    assert events[2].done == 4
    assert events[3].stage == "dedup" and events[3].error == "ValueError: boom"
    assert events[4].stage == "dedup" and events[4].error == "ValueError: boom"


async def test_failure_outside_a_stage_has_no_stage(redis: Any) -> None:
    async with Tracker(redis, STREAM) as tracker:
        with pytest.raises(KeyError):
            async with tracker.job() as job:
                async with job.stage("fetch"):
                    pass
                raise KeyError("x")
    failed = (await read_events(redis))[-1]
    assert failed.__struct_config__.tag == "job.failed" and failed.stage is None


async def test_cancellation_emits_job_cancelled(redis: Any) -> None:
    async with Tracker(redis, STREAM) as tracker:

        async def pipeline() -> None:
            async with tracker.job() as job, job.stage("fetch"):
                await asyncio.sleep(10)

        task = asyncio.create_task(pipeline())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert types(await read_events(redis))[-2:] == ["stage.failed", "job.cancelled"]


async def test_explicit_terminal_events_end_the_job(redis: Any) -> None:
    async with Tracker(redis, STREAM) as tracker:
        async with tracker.job() as cancelled:
            await cancelled.cancel("operator asked")
            await cancelled.genre("tech", status="running")  # after the end: not reported
        async with tracker.job() as failed, failed.stage("select"):
            await failed.fail("no articles")

    events = await read_events(redis)
    first = [e for e in events if e.job_id == cancelled.job_id]
    assert types(first) == ["job.started", "job.cancelled"] and first[-1].reason == "operator asked"
    second = [e for e in events if e.job_id == failed.job_id]
    assert types(second) == ["job.started", "stage.started", "job.failed"]
    assert (second[-1].error, second[-1].stage) == ("no articles", "select")


async def test_progress_is_coalesced_and_the_final_value_reported(redis: Any) -> None:
    async with Tracker(redis, STREAM) as tracker:
        async with tracker.job() as job:
            async with job.stage("fetch", total=10_000) as stage:
                started = time.perf_counter()
                for _ in range(10_000):
                    stage.advance()
                per_call = (time.perf_counter() - started) / 10_000
            async with job.stage("persist") as unchanged:
                unchanged.set(done=0)

    events = await read_events(redis)
    progress = [e for e in events if isinstance(e, StageProgress)]
    assert 1 <= len(progress) <= 3
    assert progress[-1].done == 10_000 and progress[-1].total == 10_000
    assert types(events)[types(events).index("stage.completed") - 1] == "stage.progress"
    assert all(e.stage == "fetch" for e in progress)  # persist never changed: no progress
    assert per_call < 20e-6


async def test_latest_progress_is_reported_within_the_interval(redis: Any) -> None:
    async with Tracker(redis, STREAM, progress_interval=0.05) as tracker:
        async with tracker.job() as job, job.stage("fetch") as stage:
            stage.advance()  # reported at once
            stage.advance()  # held back, then reported by the timer
            stage.set(total=5)
            await asyncio.sleep(0.15)
            assert await tracker.flush(1)
            seen = [(e.done, e.total) for e in await read_events(redis) if isinstance(e, StageProgress)]
            assert seen == [(1, None), (2, 5)]


async def test_heartbeats_while_the_job_is_open(redis: Any) -> None:
    async with Tracker(redis, STREAM, heartbeat_interval=0.02) as tracker:
        async with tracker.job():
            await asyncio.sleep(0.15)
        await asyncio.sleep(0.06)
    events = await read_events(redis)
    beats = [e for e in events if isinstance(e, JobHeartbeat)]
    assert len(beats) >= 3
    assert isinstance(events[-1], JobCompleted)  # none after the end


async def test_full_buffer_drops_oldest_progress_never_state_changes(redis: Any) -> None:
    tracker = Tracker(redis, STREAM, buffer_size=10, progress_interval=0)  # not started: nothing is sent
    async with tracker.job() as job:
        async with job.stage("fetch") as stage:
            for i in range(1, 21):
                stage.set(done=i)
                if i % 4 == 0:
                    await job.genre(f"g{i}", status="running")
    stats = tracker.stats
    assert stats.pending == 10 and stats.dropped == stats.emitted - 10

    async with tracker:  # start, then flush on exit
        pass
    events = await read_events(redis)
    assert state_changes(events) == ["job.started", "stage.started"] + ["genre.status"] * 5 + [
        "stage.completed",
        "job.completed",
    ]
    assert [e.done for e in events if isinstance(e, StageProgress)] == [20]  # the newest survives
    assert [e.seq for e in events] == sorted(e.seq for e in events)


async def test_state_changes_exceed_the_bound_rather_than_being_dropped(redis: Any) -> None:
    tracker = Tracker(redis, STREAM, buffer_size=5, progress_interval=0)
    async with tracker.job() as job:
        for i in range(8):
            await job.genre(f"g{i}", status="pending")
        async with job.stage("fetch") as stage:
            stage.advance()  # buffer full of state changes: this one is dropped
    assert tracker.stats.dropped == 1 and tracker.stats.pending == 12
    async with tracker:
        pass
    assert len(state_changes(await read_events(redis))) == 12


async def test_redis_down_then_back(redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = redis.connection_pool.connection_kwargs["server"]
    async with Tracker(redis, STREAM, max_backoff=0.05) as tracker:
        server.connected = False
        async with tracker.job() as job:
            started = time.perf_counter()
            for i in range(50):
                await job.genre(f"g{i}", status="running")
            assert time.perf_counter() - started < 0.05
            await asyncio.sleep(0.2)
            assert tracker.stats.retries >= 2 and tracker.stats.pending == 51
            server.connected = True
        assert await tracker.flush(2)
    assert len(state_changes(await read_events(redis))) == 52
    warnings = [r.getMessage() for r in caplog.records if r.name == "tracker.client"]
    assert sum("cannot send" in m for m in warnings) == 1
    recovered = [m for m in warnings if "reachable again" in m]
    assert len(recovered) == 1 and re.search(r"5[12] buffered events sent late", recovered[0])


async def test_close_gives_up_after_close_timeout(redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    redis.connection_pool.connection_kwargs["server"].connected = False
    tracker = Tracker(redis, STREAM, close_timeout=0.2, max_backoff=0.05)
    started = time.perf_counter()
    async with tracker:
        async with tracker.job():
            pass
    assert time.perf_counter() - started < 1
    assert tracker.stats.lost == 2
    assert any("2 events lost" in r.getMessage() for r in caplog.records)


async def test_invalid_input_is_logged_never_raised(redis: Any, caplog: pytest.LogCaptureFixture) -> None:
    async with Tracker(redis, STREAM) as tracker:
        async with tracker.job() as job:
            await job.genre("", status="bogus")
            await job.articles([{"article_id": "a", "nope": 1}])
            async with job.stage("fetch") as stage:
                stage.advance("many")  # type: ignore[arg-type]
            await job.fail("x" * 20_000)
    events = await read_events(redis)
    assert types(events) == ["job.started", "stage.started", "stage.completed", "job.failed"]
    assert [e.seq for e in events] == [0, 1, 2, 3]
    assert len(events[-1].error) == 8_192
    assert tracker.stats.invalid == 1
    assert any("genre" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


async def test_articles_are_split_into_small_events(redis: Any) -> None:
    articles = [
        Article(article_id=f"article-{i}", feed_id=uuid.uuid4(), original_user_id=uuid.uuid4())
        for i in range(1_200)
    ]
    async with Tracker(redis, STREAM) as tracker, tracker.job() as job:
        await job.articles(articles)
        await job.articles([{"article_id": "dict-form"}])
    added = [e for e in await read_events(redis) if isinstance(e, ArticlesAdded)]
    assert [a for e in added for a in e.articles] == articles + [Article(article_id="dict-form")]
    assert all(len(e.articles) <= 500 and len(encode_event(e)) <= 50 * 1024 for e in added[:-1])


async def test_emit_event_adds_one_entry(redis: Any) -> None:
    event = event_from_fields(
        "job.heartbeat", {"event_id": uuid.uuid4(), "job_id": uuid.uuid4(), "seq": 0, "at": utcnow()}
    )
    entry_id = await emit_event(redis, STREAM, event)
    [(read_id, fields)] = await redis.xrange(STREAM)
    assert read_id == entry_id and decode_event(fields[b"event"]) == event


def test_sync_tracker_has_the_same_shape() -> None:
    server = fakeredis.FakeServer()
    reader = fakeredis.FakeRedis(server=server)
    with SyncTracker(fakeredis.FakeAsyncRedis(server=server), STREAM, heartbeat_interval=0.02) as tracker:
        with tracker.job(genres=["tech"]) as job:
            with job.stage("fetch", total=10) as stage:
                for _ in range(10):
                    stage.advance(1)
            job.genre("tech", status="partial", error="2 of 3")
            job.articles([Article(article_id="a1")])
            time.sleep(0.1)
        with pytest.raises(RuntimeError), tracker.job() as failing, failing.stage("genre"):
            raise RuntimeError("bad genre")
        assert tracker.flush(2)

    events = [decode_event(f[b"event"]) for _, f in reader.xrange(STREAM)]
    first = [e for e in events if e.job_id == job.job_id]
    assert state_changes(first) == [
        "job.started", "stage.started", "stage.completed", "genre.status", "articles.added", "job.completed",
    ]  # fmt: skip
    assert [e.seq for e in first] == list(range(len(first)))
    assert [e.done for e in first if isinstance(e, StageProgress)][-1] == 10
    assert "job.heartbeat" in types(first)
    assert [e for e in first if isinstance(e, GenreStatusChanged)][0].error == "2 of 3"
    second = [e for e in events if e.job_id == failing.job_id]
    assert state_changes(second)[-2:] == ["stage.failed", "job.failed"] and second[-1].stage == "genre"
    assert tracker.stats.pending == 0


def test_sync_tracker_calls_return_while_redis_is_down() -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    tracker = SyncTracker(fakeredis.FakeAsyncRedis(server=server), STREAM, max_backoff=0.05)
    with tracker, tracker.job() as job:
        started = time.perf_counter()
        for i in range(200):
            job.genre(f"g{i}", status="running")
        assert time.perf_counter() - started < 0.1
        assert not tracker.flush(0.1)
        server.connected = True
    assert tracker.stats.sent == 202 and tracker.stats.retries >= 1
    assert len(fakeredis.FakeRedis(server=server).xrange(STREAM)) == 202


# --------------------------------------------------------------------------- recap-status emit


def emit_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    emit.add_arguments(parser)
    return parser.parse_args(argv)


def test_emit_builds_events_from_options() -> None:
    job = str(uuid.uuid4())
    progress = emit.build_event(emit_args("stage.progress", "--job", job, "--stage", "fetch", "--done", "10"))
    assert (progress.stage, progress.done, progress.total, str(progress.job_id)) == ("fetch", 10, None, job)
    assert progress.seq > 1_600_000_000_000  # milliseconds since the epoch
    later = emit.build_event(emit_args("stage.progress", "--job", job, "--stage", "fetch", "--done", "11"))
    assert later.seq >= progress.seq

    added = emit.build_event(
        emit_args("articles.added", "--job", job, "--seq", "3", "--articles", '[{"article_id":"a"}]')
    )
    assert added.seq == 3 and added.articles == [Article(article_id="a")]
    started = emit.build_event(emit_args("job.started", "--job", job, "--note", "2024", "--window-days", "7"))
    assert (started.note, started.window_days) == ("2024", 7)
    genre = emit.build_event(
        emit_args(
            *("genre.status", "--job", job, "--genre", "tech", "--status", "partial", "--cluster_count", "3"),
            *("--at", "2024-05-01T00:00:00Z", "--event-id", job),
        )
    )
    assert (genre.cluster_count, genre.at.year, str(genre.event_id)) == (3, 2024, job)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stage.progress", "--stage", "fetch", "--done", "ten"], "bad --done 'ten'"),
        (["stage.progress", "--done", "1"], "missing --stage"),
        (["stage.progress", "--stage", "fetch", "--done", "1", "--genre", "x"], "--genre is not a field"),
        (["genre.status", "--genre", "x", "--status", "done"], "bad --status 'done'"),
        (["articles.added", "--articles", '[{"article_id":""}]'], "bad --articles"),
        (["job.completed", "--at", "yesterday"], "bad --at"),
    ],
)
async def test_emit_rejects_bad_input_naming_the_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = emit_args(*argv, "--job", str(uuid.uuid4()))
    assert await emit.run(args, Settings(redis_url="redis://127.0.0.1:1")) == 2
    assert message in capsys.readouterr().err


async def test_emit_rejects_a_bad_job_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert await emit.run(emit_args("job.completed", "--job", "42"), Settings(redis_url="redis://x:1")) == 2
    assert "bad --job '42'" in capsys.readouterr().err
