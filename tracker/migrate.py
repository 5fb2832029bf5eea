"""Applies migrations/*.sql in order, each once, under an advisory lock.

An applied file is recorded with its SHA-256; if it was edited afterwards the
run refuses to continue (a landed migration is never edited: add a new one).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Arbitrary constant shared by every process that migrates this database.
_MIGRATION_LOCK = 7_201_555_001

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    filename   TEXT PRIMARY KEY,
    sha256     TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""


class MigrationError(Exception):
    """A migration could not be applied, or an applied one was edited."""


@dataclass(frozen=True)
class Migration:
    filename: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    return [Migration(p.name, p.read_text()) for p in sorted(directory.glob("*.sql"))]


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; returns the filenames applied by this call."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            return await _apply_pending(conn, discover(directory))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()


async def _apply_pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(_CREATE_LEDGER)
    applied = {r["filename"]: r["sha256"] for r in await conn.fetch("SELECT filename, sha256 FROM schema_migrations")}
    done: list[str] = []
    for migration in migrations:
        recorded = applied.get(migration.filename)
        if recorded is not None:
            if recorded != migration.sha256:
                raise MigrationError(
                    f"{migration.filename} was edited after it was applied; add a new migration instead"
                )
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (filename, sha256) VALUES ($1, $2)",
                migration.filename,
                migration.sha256,
            )
        log.info("applied migration %s", migration.filename)
        done.append(migration.filename)
    return done


async def pending(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Filenames not yet applied (for readiness checks)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = set()
    if exists:
        applied = {r["filename"] for r in await conn.fetch("SELECT filename FROM schema_migrations")}
    return [m.filename for m in discover(directory) if m.filename not in applied]
