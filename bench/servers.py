"""The Postgres and Redis a bench runs against: BENCH_DATABASE_URL /
BENCH_REDIS_URL when set, else embedded ones in a fresh temporary directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def bench_servers(prefix: str = "recap-bench-") -> Iterator[tuple[str, str, Path]]:
    """(admin DSN, Redis URL, scratch directory); embedded servers are stopped afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    stops = []
    dsn, redis_url = os.environ.get("BENCH_DATABASE_URL"), os.environ.get("BENCH_REDIS_URL")
    try:
        if not dsn or not redis_url:
            from tracker.embedded import start_postgres, start_redis

            if not dsn:
                dsn, stop = start_postgres(tmp)
                stops.append(stop)
            if not redis_url:
                redis_url, stop = start_redis(tmp)
                stops.append(stop)
        yield dsn, redis_url, tmp
    finally:
        for stop in reversed(stops):
            stop()
