"""The projection comes out the same for any arrival order, duplication and batching
of the same events, and `rebuild` reproduces it (hypothesis, real Postgres)."""

from __future__ import annotations

import asyncio

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import job_histories
from tests.projection_snapshot import projection, reset
from tracker.projector import project_batch
from tracker.rebuild import rebuild


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list, list[list]]:
    """Some jobs' events in emit order, and the same events permuted, partly
    duplicated and cut into batches, as several producers and retries deliver them."""
    jobs = draw(st.lists(job_histories(), min_size=1, max_size=3))
    in_order = [e for job in jobs for e in job]
    shuffled = draw(st.permutations(in_order))
    dupes = draw(st.lists(st.sampled_from(in_order), max_size=len(in_order) // 2))
    stream = list(shuffled)
    for d in dupes:
        stream.insert(draw(st.integers(0, len(stream))), d)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    bounds = [0, *cuts, len(stream)]
    batches = [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    return in_order, batches


def test_any_arrival_order_projects_the_same_rows(database_url: str) -> None:
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(database_url))

    async def check(in_order: list, batches: list[list]) -> None:
        await reset(conn)
        await project_batch(conn, in_order)
        expected = await projection(conn)
        await reset(conn)
        for batch in batches:
            await project_batch(conn, batch)
        assert await projection(conn) == expected
        await rebuild(conn)
        assert await projection(conn) == expected

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(deliveries())
    def run(delivery: tuple[list, list[list]]) -> None:
        loop.run_until_complete(check(*delivery))

    try:
        run()
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


async def test_late_progress_does_not_reopen_a_completed_stage(pg_pool: asyncpg.Pool) -> None:
    from tests.factories import JobScript

    job = JobScript()
    job.emit("job.started")
    job.emit("stage.started", stage="fetch", total=10)
    progress = job.emit("stage.progress", stage="fetch", done=3)
    job.emit("stage.completed", stage="fetch")
    async with pg_pool.acquire() as conn:
        await project_batch(conn, [e for e in job.events if e is not progress])
        await project_batch(conn, [progress])
        row = await conn.fetchrow("SELECT status, done, total FROM recap_job_stages WHERE stage = 'fetch'")
        history = await conn.fetch("SELECT seq FROM recap_job_status_history ORDER BY seq")
    assert dict(row) == {"status": "completed", "done": 10, "total": 10}
    assert [r["seq"] for r in history] == [0, 1]


async def test_an_article_reported_again_in_a_later_batch_is_merged(pg_pool: asyncpg.Pool) -> None:
    """The plain insert of new articles meets a stored one: the batch falls back to
    the merging upsert, the later report wins, and the article counts once."""
    from tests.factories import FEEDS, JobScript

    job = JobScript()
    job.emit("job.started")
    job.emit("articles.added", articles=[{"article_id": "a1", "feed_id": str(FEEDS[0])}])
    job.emit("articles.added", articles=[{"article_id": "a1", "feed_id": str(FEEDS[1])},
                                         {"article_id": "a2", "feed_id": str(FEEDS[1])}])
    async with pg_pool.acquire() as conn:
        await project_batch(conn, job.events[:2])
        await project_batch(conn, job.events[2:])
        rows = await conn.fetch("SELECT article_id, feed_id FROM recap_job_articles ORDER BY article_id")
        count = await conn.fetchval("SELECT article_count FROM recap_jobs")
    assert [(r["article_id"], r["feed_id"]) for r in rows] == [("a1", FEEDS[1]), ("a2", FEEDS[1])]
    assert count == 2
