"""Reads the whole projection as comparable, sorted rows (history ids left out)."""

from __future__ import annotations

import asyncpg

_QUERIES = {
    "jobs": "SELECT * FROM recap_jobs ORDER BY job_id",
    "stages": "SELECT * FROM recap_job_stages ORDER BY job_id, stage",
    "genres": "SELECT * FROM recap_job_genres ORDER BY job_id, genre",
    "articles": "SELECT * FROM recap_job_articles ORDER BY job_id, article_id",
    "history": "SELECT job_id, event_id, seq, status, stage, transitioned_at, reason, actor "
    "FROM recap_job_status_history ORDER BY job_id, seq, event_id",
}


async def projection(conn: asyncpg.Connection) -> dict[str, list[dict]]:
    return {name: [dict(r) for r in await conn.fetch(sql)] for name, sql in _QUERIES.items()}


async def event_log(conn: asyncpg.Connection) -> list[dict]:
    return [dict(r) for r in await conn.fetch("SELECT event_id, job_id, seq, type, at, payload FROM recap_events ORDER BY event_id")]


async def reset(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "TRUNCATE recap_events, recap_jobs, recap_job_stages, recap_job_genres, recap_job_articles, "
        "recap_job_status_history, recap_dead_letters RESTART IDENTITY"
    )
