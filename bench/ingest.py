"""Ingest throughput: events/s from the events stream into the projection.

Emits N events (default 200,000) of realistic interleaved recap jobs into a
fresh stream, then starts one tracker process and times it until every event
is projected (lag 0, nothing pending). Baseline, same run: the same kind of
events projected one transaction per event (the naive projector), on a
sample, since it is much slower.

    .venv/bin/python bench/ingest.py [--events 200000] [--baseline-events 10000]

Uses BENCH_DATABASE_URL / BENCH_REDIS_URL when set, else embedded servers in
a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracker import events as ev  # noqa: E402
from tracker.consumer import GROUP  # noqa: E402
from servers import bench_servers  # noqa: E402
from tracker.embedded import create_database  # noqa: E402
from tracker.migrate import migrate  # noqa: E402
from tracker.projector import project_batch  # noqa: E402
from tracker.settings import load_settings  # noqa: E402
from tracker.statuses import DEFAULT_STAGES  # noqa: E402

GENRES = ["tech", "world", "sports", "business", "science", "health", "culture", "politics", "games", "travel", "food", "auto"]


def job_events(rng: random.Random, start: datetime) -> list[ev.AnyEvent]:
    """About 230 events: the shape of a real recap job with coalesced progress."""
    job_id, seq, clock = uuid.uuid4(), 0, start
    out: list[ev.AnyEvent] = []

    def emit(cls: type, **fields: object) -> None:
        nonlocal seq, clock
        clock += timedelta(milliseconds=rng.randint(50, 500))
        out.append(cls(event_id=uuid.uuid4(), job_id=job_id, seq=seq, at=clock, **fields))
        seq += 1

    emit(ev.JobStarted, genres=GENRES, trigger_source=ev.TriggerSource.SYSTEM)
    for stage in DEFAULT_STAGES:
        total = rng.randint(500, 5000)
        emit(ev.StageStarted, stage=stage, total=total)
        for i in range(1, 21):
            emit(ev.StageProgress, stage=stage, done=total * i // 20)
        emit(ev.StageCompleted, stage=stage)
        if stage == "select":
            for batch in range(10):
                emit(ev.ArticlesAdded, articles=[
                    ev.Article(article_id=f"{batch}-{i}", feed_id=uuid.UUID(int=rng.randint(1, 50))) for i in range(100)
                ])
        if stage == "evidence":
            for genre in GENRES:
                for phase in (ev.GenrePhase.EVIDENCE, ev.GenrePhase.CLUSTERING):
                    emit(ev.GenreStatusChanged, genre=genre, status=ev.GenreStatus.RUNNING, phase=phase)
                emit(ev.GenreStatusChanged, genre=genre, status=ev.GenreStatus.SUCCEEDED, cluster_count=rng.randint(1, 9))
        if rng.random() < 0.5:
            emit(ev.JobHeartbeat)
    emit(ev.JobCompleted)
    return out


def interleaved(n: int, seed: int = 1, in_flight: int = 20) -> list[bytes]:
    """N encoded events from jobs running `in_flight` at a time, interleaved as they would be."""
    rng = random.Random(seed)
    start = datetime.now(timezone.utc) - timedelta(hours=2)
    running: list[list[ev.AnyEvent]] = []
    out: list[bytes] = []
    while len(out) < n:
        while len(running) < in_flight:
            running.append(job_events(rng, start))
        job = rng.choice(running)
        out.append(ev.encode_event(job.pop(0)))
        if not job:
            running.remove(job)
    return out


async def fill_stream(redis: aioredis.Redis, stream: str, payloads: list[bytes]) -> None:
    for i in range(0, len(payloads), 5_000):
        pipe = redis.pipeline(transaction=False)
        for p in payloads[i : i + 5_000]:
            pipe.xadd(stream, {"event": p})
        await pipe.execute()


async def tracker_rate(db_url: str, redis_url: str, payloads: list[bytes], prefilled: bool) -> float:
    """Events/s of one tracker process until every event is projected.

    prefilled=False: start the tracker, wait until it is ready, then emit every
    event while it runs (the emitter competes for the same two cores).
    prefilled=True: emit everything first, then time the tracker alone, from its
    first read (producers live on other machines in production).
    """
    stream = f"bench:{uuid.uuid4().hex[:8]}:events"
    redis = aioredis.from_url(redis_url)
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "RECAP_EVENTS_STREAM": stream,
           "RECAP_DELTAS_STREAM": stream.replace("events", "deltas"), "RECAP_LOG_EVERY": "5"}
    if prefilled:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await fill_stream(redis, stream, payloads)
    proc = subprocess.Popen([sys.executable, "-m", "tracker"], env=env)
    try:
        if prefilled:
            while (await group_info(redis, stream))["entries-read"] in (None, 0):
                await asyncio.sleep(0.005)
        else:
            while not await redis.exists(stream):  # the tracker creates its group and the stream
                await asyncio.sleep(0.05)
        started = time.perf_counter()
        if not prefilled:
            await fill_stream(redis, stream, payloads)
        while not await drained(redis, stream):
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait()
        await redis.delete(stream, stream.replace("events", "deltas"))
        await redis.aclose()
    return len(payloads) / elapsed


async def group_info(redis: aioredis.Redis, stream: str) -> dict:
    groups = await redis.xinfo_groups(stream)
    return next((g for g in groups if g["name"] == GROUP.encode()), {"entries-read": None, "lag": None})


async def drained(redis: aioredis.Redis, stream: str) -> bool:
    return (await group_info(redis, stream))["lag"] == 0 and (await redis.xpending(stream, GROUP))["pending"] == 0


async def naive_rate(db_url: str, payloads: list[bytes]) -> float:
    """The baseline: one transaction per event."""
    conn = await asyncpg.connect(db_url)
    started = time.perf_counter()
    for p in payloads:
        await project_batch(conn, [ev.decode_event(p)])
    elapsed = time.perf_counter() - started
    await conn.close()
    return len(payloads) / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--baseline-events", type=int, default=10_000)
    args = parser.parse_args()

    with bench_servers("recap-bench-ingest-") as (admin, redis_url, _):
        await run(args, admin, redis_url)


async def run(args: argparse.Namespace, admin: str, redis_url: str) -> None:
    dbs = []
    for name in ("bench_ingest_tracker", "bench_ingest_naive", "bench_ingest_alone"):
        url = await create_database(admin, f"{name}_{uuid.uuid4().hex[:6]}")
        await migrate(url)
        dbs.append(url)

    print(f"generating {args.events:,} events ...", flush=True)
    payloads = interleaved(args.events)
    print("tracker, events emitted while it runs ...", flush=True)
    fast = await tracker_rate(dbs[0], redis_url, payloads, prefilled=False)
    print("tracker alone, on a stream filled beforehand ...", flush=True)
    alone = await tracker_rate(dbs[2], redis_url, payloads, prefilled=True)
    print(f"naive baseline (one transaction per event) on {args.baseline_events:,} events ...", flush=True)
    slow = await naive_rate(dbs[1], interleaved(args.baseline_events, seed=2))
    conn = await asyncpg.connect(dbs[0])
    articles = await conn.fetchval("SELECT count(*) FROM recap_job_articles")
    await conn.close()
    settings = load_settings()
    print(f"\ntracker:  {fast:>10,.0f} events/s  ({args.events:,} events emitted while it runs, one process, "
          f"batch {settings.batch_size}, RECAP_PARALLEL={settings.parallel}; "
          f"{articles / (args.events / fast):,.0f} article rows/s besides)")
    print(f"alone:    {alone:>10,.0f} events/s  (the same, the stream filled beforehand: the tracker without the emitter)")
    print(f"baseline: {slow:>10,.0f} events/s  (one transaction per event)")
    print(f"ratio:    {fast / slow:>10.1f}x")
    print(f"target:       20,000 events/s -> {'met' if fast >= 20_000 else 'NOT met'} with the emitter, "
          f"{'met' if alone >= 20_000 else 'NOT met'} alone")


if __name__ == "__main__":
    asyncio.run(main())
