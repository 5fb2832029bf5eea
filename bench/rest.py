"""REST polling: requests/s and p50/p99 latency of GET /v1/dashboard/job-progress
with 100,000 finished jobs in history and 5 running.

The history is bulk-loaded with COPY straight into the status tables (a year of
jobs, each with its stages, genres and status history); the 5 running jobs go
through the real projector. One web server process (the real application) is
started, with one extra route that only this bench adds: the baseline, which
answers the same request the original way (one status-history query per recent
job). A load generator in a separate process keeps N connections busy for a
fixed time against each route in turn.

    .venv/bin/python bench/rest.py [--jobs 100000] [--concurrency 16] [--seconds 15]

Uses BENCH_DATABASE_URL (a role allowed to CREATE DATABASE) and BENCH_REDIS_URL
when set, else embedded servers in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from servers import bench_servers  # noqa: E402
from tracker import events as ev  # noqa: E402
from tracker.statuses import DEFAULT_STAGES  # noqa: E402

TOKEN = "bench-admin-token"
PATH = "/v1/dashboard/job-progress"
BASELINE_PATH = "/bench/baseline/job-progress"
GENRES = ["tech", "world", "sports", "business", "science"]
USERS = [uuid.UUID(int=0xB0000 + i) for i in range(50)]


# --- filling the database ----------------------------------------------------------


class History:
    """Rows of N finished jobs spread over the last year, for COPY."""

    def __init__(self, jobs: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.now = datetime.now(timezone.utc)
        self.jobs: list[tuple] = []
        self.stages: list[tuple] = []
        self.genres: list[tuple] = []
        self.history: list[tuple] = []
        for i in range(jobs):
            self._job(self.now - timedelta(days=365) * (i + 1) / jobs - timedelta(hours=1))

    def _job(self, kicked_at: datetime) -> None:
        rng = self.rng
        job_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        kind = "morning" if rng.random() < 0.15 else "recap"
        outcome = rng.choices(["completed", "failed", "cancelled"], weights=[90, 8, 2])[0]
        user = rng.choice(USERS) if rng.random() < 0.2 else None
        reached = len(DEFAULT_STAGES) if outcome == "completed" else rng.randint(1, len(DEFAULT_STAGES))
        clock, seq = kicked_at, 0
        self._history(job_id, seq, "running", None, clock)
        for position, stage in enumerate(DEFAULT_STAGES[:reached]):
            started = clock
            clock += timedelta(seconds=rng.uniform(5, 90))
            failed = outcome == "failed" and position == reached - 1
            status = "failed" if failed else "completed"
            seq += 2
            self._history(job_id, seq - 1, "running", stage, started)
            self.stages.append((job_id, stage, position, status, started, clock, 100, 100,
                                "boom" if failed else None, 1, clock, 3))  # fmt: skip
        if reached > 5:
            for genre in GENRES:
                self.genres.append((job_id, genre, "succeeded", "summarization", rng.randint(1, 9),
                                    rng.randint(10, 200), 1, clock, clock, None, clock, 2))  # fmt: skip
        seq += 1
        self._history(job_id, seq, outcome, None, clock)
        self.jobs.append((
            job_id, kicked_at, None, outcome, DEFAULT_STAGES[reached - 1], clock, user,
            "user" if user else "system", 1, kind, None, list(DEFAULT_STAGES), list(GENRES), clock,
            "boom" if outcome == "failed" else None, None, clock, 0, seq, uuid.uuid4(), seq + 1,
        ))  # fmt: skip

    def _history(self, job_id: uuid.UUID, seq: int, status: str, stage: str | None, at: datetime) -> None:
        self.history.append((job_id, uuid.UUID(int=self.rng.getrandbits(128), version=4), seq, status, stage, at, None))


JOB_COLUMNS = [
    "job_id", "kicked_at", "note", "status", "last_stage", "updated_at", "user_id", "trigger_source",
    "window_days", "kind", "current_stage", "stages", "expected_genres", "finished_at", "error",
    "failed_stage", "last_event_at", "article_count", "last_seq", "last_event_id", "version",
]  # fmt: skip
STAGE_COLUMNS = ["job_id", "stage", "position", "status", "started_at", "finished_at", "done", "total", "error",
                 "attempts", "updated_at", "version"]  # fmt: skip
GENRE_COLUMNS = ["job_id", "genre", "status", "phase", "cluster_count", "article_count", "attempts", "started_at",
                 "finished_at", "error", "updated_at", "version"]  # fmt: skip
HISTORY_COLUMNS = ["job_id", "event_id", "seq", "status", "stage", "transitioned_at", "reason"]


async def fill(dsn: str, jobs: int) -> dict[str, int]:
    """COPY the history in, project 5 running jobs, ANALYZE. Returns row counts."""
    history = History(jobs)
    conn = await asyncpg.connect(dsn)
    try:
        for table, columns, rows in (
            ("recap_jobs", JOB_COLUMNS, history.jobs),
            ("recap_job_stages", STAGE_COLUMNS, history.stages),
            ("recap_job_genres", GENRE_COLUMNS, history.genres),
            ("recap_job_status_history", HISTORY_COLUMNS, history.history),
        ):
            await conn.copy_records_to_table(table, records=rows, columns=columns)
        from tracker.projector import project_batch

        await project_batch(conn, [e for i in range(5) for e in running_job(i)])
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return {"jobs": len(history.jobs) + 5, "stages": len(history.stages), "genres": len(history.genres),
            "history": len(history.history)}  # fmt: skip


def running_job(i: int) -> list[ev.AnyEvent]:
    """A job in its evidence stage with genres in flight, started i minutes ago."""
    job_id, clock, out = uuid.uuid4(), datetime.now(timezone.utc) - timedelta(minutes=10 + i), []

    def emit(cls: type, **fields: Any) -> None:
        nonlocal clock
        clock += timedelta(seconds=3)
        out.append(cls(event_id=uuid.uuid4(), job_id=job_id, seq=len(out), at=clock, **fields))

    emit(ev.JobStarted, genres=GENRES)
    for stage in DEFAULT_STAGES[:5]:
        emit(ev.StageStarted, stage=stage, total=1000)
        emit(ev.StageProgress, stage=stage, done=500)
        emit(ev.StageCompleted, stage=stage)
    emit(ev.StageStarted, stage="evidence", total=len(GENRES))
    for genre in GENRES[:3]:
        emit(ev.GenreStatusChanged, genre=genre, status=ev.GenreStatus.RUNNING, phase=ev.GenrePhase.CLUSTERING)
    return out


# --- the server (a subprocess: `bench/rest.py serve`) --------------------------------


def serve(port: int) -> None:
    """The real application plus the baseline route, until SIGTERM."""
    from aiohttp import web

    from tracker.settings import load_settings
    from web import api
    from web import queries as q
    from web.app import AccessLogger, create_app
    from web.auth import authenticate
    from web.errors import json_response
    from web.keys import POOL, SETTINGS
    from web.params import progress_params

    class PerJobHistories:
        """A connection that answers the histories query the original way: one query per job."""

        def __init__(self, conn: asyncpg.Connection) -> None:
            self._conn = conn

        async def fetch(self, query: str, *args: Any) -> list:
            if query != q.HISTORIES:
                return await self._conn.fetch(query, *args)
            rows = []
            for job_id in args[0]:
                rows += await self._conn.fetch(q.HISTORIES, [job_id])
            return rows

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

    async def baseline(request: web.Request) -> web.Response:
        params = progress_params(request.query, request.app[SETTINGS])
        async with request.app[POOL].acquire() as conn:
            body = await api.job_progress_response(PerJobHistories(conn), authenticate(request), params)
        return json_response(body)

    app = create_app(load_settings(port=port))
    app.router.add_get(BASELINE_PATH, baseline, name="bench_baseline")
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, access_log_class=AccessLogger, print=None)


# --- the load generator (a subprocess: `bench/rest.py load`) --------------------------


async def load(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    """Keep `concurrency` connections busy with GETs for `seconds`; latencies in ms."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(int(q * len(sorted_values)), len(sorted_values) - 1)] if sorted_values else float("nan")


def run_load(url: str, concurrency: int, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "load", url, str(concurrency), str(seconds)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout)


# --- the run -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the web server exited; see its log")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the web server did not answer {url}")


async def prepare(admin_dsn: str, jobs: int) -> str:
    from tracker.embedded import create_database
    from tracker.migrate import migrate

    dsn = await create_database(admin_dsn, f"recap_bench_rest_{uuid.uuid4().hex[:8]}")
    await migrate(dsn)
    started = time.perf_counter()
    counts = await fill(dsn, jobs)
    print(f"filled in {time.perf_counter() - started:.0f}s: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
    return dsn


@contextmanager
def web_server(dsn: str, redis_url: str, cache_ms: int, log_path: Path) -> Iterator[str]:
    """The web server in a subprocess with this poll cache; yields its base URL."""
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": dsn, "REDIS_URL": redis_url, "RECAP_TOKENS": f"{TOKEN}=admin",
           "RECAP_LOG_LEVEL": "WARNING", "RECAP_POLL_CACHE_MS": str(cache_ms),
           "RECAP_EVENTS_STREAM": f"bench:{port}:events", "RECAP_DELTAS_STREAM": f"bench:{port}:deltas"}  # fmt: skip
    with open(log_path, "a") as log:
        server = subprocess.Popen([sys.executable, __file__, "serve", str(port)], env=env, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/health/live", server)
        yield base
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def measure(args: argparse.Namespace, dsn: str, redis_url: str, log_path: Path) -> dict[str, dict[str, Any]]:
    """Each configuration: a 2 s warm-up (connections, prepared statements), then the measured run."""
    query = f"?limit={args.limit}"
    runs = {}
    with web_server(dsn, redis_url, 0, log_path) as base:
        for name, path in ((OURS_UNCACHED, PATH), (BASELINE, BASELINE_PATH)):
            run_load(base + path + query, args.concurrency, 2.0)
            runs[name] = run_load(base + path + query, args.concurrency, args.seconds)
    with web_server(dsn, redis_url, 1000, log_path) as base:
        run_load(base + PATH + query, args.concurrency, 2.0)
        runs[OURS] = run_load(base + PATH + query, args.concurrency, args.seconds)
    return runs


OURS = "ours, as shipped (poll cache 1 s)"
OURS_UNCACHED = "ours, poll cache off"
BASELINE = "baseline: a history query per job, no cache"


def report(runs: dict[str, dict[str, Any]], args: argparse.Namespace, load_before: float) -> None:
    print(f"GET {PATH}?limit={args.limit}: {args.concurrency} connections, {args.seconds:.0f} s per run, "
          f"{args.jobs:,} finished jobs + 5 running; {os.cpu_count()} CPUs shared by the server, Postgres "
          f"and the load generator; load average before: {load_before:.1f}")  # fmt: skip
    for name in (OURS, OURS_UNCACHED, BASELINE):
        r = runs[name]
        print(f"  {name:<45} {r['rps']:7.0f} req/s   p50 {r['p50_ms']:6.1f} ms   p99 {r['p99_ms']:6.1f} ms"
              f"   ({r['requests']:,} requests, {r['errors']} errors)")  # fmt: skip
    base = runs[BASELINE]
    for name in (OURS_UNCACHED, OURS):
        r = runs[name]
        print(f"  {name} vs baseline: {r['rps'] / base['rps']:.1f}x the requests/s, "
              f"p99 {base['p99_ms'] / r['p99_ms']:.1f}x lower")  # fmt: skip
    shipped = runs[OURS]
    met = shipped["p99_ms"] < 50 and shipped["rps"] >= 1000 and shipped["errors"] == 0
    print(f"  target (p99 < 50 ms and >= 1,000 req/s, as shipped): {'met' if met else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--limit", type=int, default=50, help="the `limit` of each poll (the seed's default)")
    args = parser.parse_args()
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    with bench_servers("recap-bench-rest-") as (admin_dsn, redis_url, _):
        dsn = asyncio.run(prepare(admin_dsn, args.jobs))
        load_before = os.getloadavg()[0]
        runs = measure(args, dsn, redis_url, out / "rest-server.log")
        report(runs, args, load_before)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]))
    elif sys.argv[1:2] == ["load"]:
        print(json.dumps(asyncio.run(load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))))
    else:
        main()
