"""Shared fixtures for the whole test suite (tests/unit, tests/integration, tests/browser).

Servers: by default the session starts an embedded Postgres and an embedded valkey
(tracker.embedded) in a temporary directory (under /dev/shm when it has room, else
/tmp) and removes both at the end, so no local services are needed. Set
TEST_DATABASE_URL (a role allowed to CREATE DATABASE) and/or TEST_REDIS_URL to use
existing servers instead.

Fixture names below are stable; tests everywhere rely on them.

Session-scoped:
    database_admin_url  DSN of the admin database (e.g. `postgres`) on the test server.
    redis_url           redis:// URL of the test Redis.
    template_database   name of a database migrated once with tracker.migrate.migrate;
                        every per-test database is cloned from it.

Function-scoped (a fresh one per test):
    database_url        DSN of a new, fully migrated database of this test alone
                        (CREATE DATABASE ... TEMPLATE, ~40 ms); dropped afterwards.
    settings            tracker.settings.Settings on database_url / redis_url, with
                        per-test stream keys `t:<hex>:events` and `t:<hex>:deltas`;
                        every key `t:<hex>:*` is deleted after the test.
    pg_pool             asyncpg pool on database_url (closed afterwards).
    redis               redis.asyncio.Redis on redis_url, decode_responses=False.

Async fixtures run in the session event loop (pyproject: asyncio_mode=auto and
session loop scope); async tests need no marker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tracker.embedded import create_database, drop_database, start_postgres, start_redis, with_database
from tracker.migrate import migrate
from tracker.settings import Settings, load_settings

# Durability does not matter for a throwaway test cluster; speed does.
_FAST_UNSAFE = ("fsync = off", "synchronous_commit = off", "full_page_writes = off")


def _scratch_base() -> str:
    # Creating a database writes ~7 MB in ~300 files; on a busy disk that alone took
    # ~0.3 s per test here, against ~0.04 s in memory. Use /dev/shm when it is roomy
    # (Docker's default is 64 MB, too small), else /tmp.
    try:
        if shutil.disk_usage("/dev/shm").free >= 2 << 30 and os.access("/dev/shm", os.W_OK):
            return "/dev/shm"
    except OSError:
        pass
    return "/tmp"


@pytest.fixture(scope="session")
def _embedded_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="recap-status-test-", dir=_scratch_base()))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def database_admin_url(_embedded_dir: Path) -> AsyncIterator[str]:
    """TEST_DATABASE_URL, else an embedded Postgres started once for the session."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    dsn, stop = start_postgres(_embedded_dir)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            for setting in _FAST_UNSAFE:
                await conn.execute(f"ALTER SYSTEM SET {setting}")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        yield dsn
    finally:
        stop()


@pytest.fixture(scope="session")
def redis_url(_embedded_dir: Path) -> Iterator[str]:
    """TEST_REDIS_URL, else an embedded valkey on a free port for the session."""
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
        return
    url, stop = start_redis(_embedded_dir)
    try:
        yield url
    finally:
        stop()


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def template_database(database_admin_url: str) -> AsyncIterator[str]:
    """A database migrated once per session; per-test databases are cloned from it."""
    name = f"recap_test_tmpl_{uuid.uuid4().hex[:12]}"
    await create_database(database_admin_url, name)
    try:
        await migrate(with_database(database_admin_url, name))  # closes its connection: cloning needs none open
        yield name
    finally:
        await drop_database(database_admin_url, name)


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(database_admin_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh migrated database for this test; dropped (connections terminated) afterwards."""
    name = f"recap_test_{uuid.uuid4().hex[:16]}"
    url = await create_database(database_admin_url, name, template=template_database)
    try:
        yield url
    finally:
        await drop_database(database_admin_url, name)


@pytest_asyncio.fixture(loop_scope="session")
async def settings(database_url: str, redis_url: str) -> AsyncIterator[Settings]:
    """Settings for this test, with stream keys no other test uses; its keys are deleted afterwards."""
    prefix = f"t:{uuid.uuid4().hex}"
    yield load_settings(
        {},
        database_url=database_url,
        redis_url=redis_url,
        events_stream=f"{prefix}:events",
        deltas_stream=f"{prefix}:deltas",
    )
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def pg_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool on this test's database."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
    try:
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A redis.asyncio client on the test Redis (bytes in, bytes out)."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()
