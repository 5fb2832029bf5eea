"""Every SQL statement of the projection, built once and named."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from .fold import GenreRow, JobRow, StageRow

JOB_COLUMNS: tuple[str, ...] = JobRow.__struct_fields__
STAGE_COLUMNS: tuple[str, ...] = StageRow.__struct_fields__
GENRE_COLUMNS: tuple[str, ...] = GenreRow.__struct_fields__

# Tracker batches hold this lock shared; `rebuild` holds it exclusively.
PROJECTION_LOCK = 7_201_555_002
# Namespace of the per-job advisory locks (two-key form, apart from the lock above).
JOB_LOCK_NAMESPACE = 7_201


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


def _select(table: str, columns: Sequence[str], where: str) -> str:
    return f"SELECT {', '.join(columns)} FROM {table} WHERE {where}"


LOCK_SHARED = f"SELECT pg_advisory_xact_lock_shared({PROJECTION_LOCK})"
LOCK_EXCLUSIVE = f"SELECT pg_advisory_xact_lock({PROJECTION_LOCK})"
LOCK_JOBS = f"SELECT count(pg_advisory_xact_lock({JOB_LOCK_NAMESPACE}, k)) FROM unnest($1::int[]) AS k"

# The events of a batch, each logged once; RETURNING names the ones that were new.
_LOG_EVENTS = """
INSERT INTO recap_events (event_id, job_id, seq, type, at, payload)
SELECT e, j, s, t, a, p::json
FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::timestamptz[], $6::text[])
    AS u(e, j, s, t, a, p)
"""
INSERT_EVENTS = _LOG_EVENTS + "ON CONFLICT (event_id) DO NOTHING\nRETURNING event_id\n"
# The common case, cheaper: no event of the batch is logged yet (else a unique violation).
INSERT_NEW_EVENTS = _LOG_EVENTS

LOAD_JOBS = _select("recap_jobs", JOB_COLUMNS, "job_id = ANY($1::uuid[])")
LOAD_STAGES = _select("recap_job_stages", STAGE_COLUMNS, "job_id = ANY($1::uuid[])")
LOAD_GENRES = _select("recap_job_genres", GENRE_COLUMNS, "job_id = ANY($1::uuid[])")

# The logged events of some jobs, for a refold. Article lists are left out: the
# fold counts those events but does not read them.
LOAD_JOB_LOG = """
SELECT job_id, CASE WHEN type = 'articles.added'
                    THEN jsonb_set(payload::jsonb, '{articles}', '[]'::jsonb)::json
                    ELSE payload END::text AS payload
FROM recap_events WHERE job_id = ANY($1::uuid[])
"""

UPSERT_JOB = _upsert("recap_jobs", JOB_COLUMNS, ["job_id"])
UPSERT_STAGE = _upsert("recap_job_stages", STAGE_COLUMNS, ["job_id", "stage"])
UPSERT_GENRE = _upsert("recap_job_genres", GENRE_COLUMNS, ["job_id", "genre"])


_ARTICLE_COLUMNS = "job_id, article_id, feed_id, original_user_id, seq, event_id"


def _article_rows_from_log(where: str) -> str:
    """The articles listed by logged `articles.added` events, one row per mention
    (`n`: its place in its event), in the order of _ARTICLE_COLUMNS."""
    return f"""
SELECT e.job_id, x.v->>'article_id' AS article_id, (x.v->>'feed_id')::uuid AS feed_id,
       (x.v->>'original_user_id')::uuid AS original_user_id, e.seq, e.event_id, x.n
FROM recap_events e, jsonb_array_elements(e.payload::jsonb->'articles') WITH ORDINALITY AS x(v, n)
WHERE e.type = 'articles.added' AND {where}
"""


def _articles_from_log(where: str) -> str:
    """Upsert the articles listed by logged `articles.added` events.

    The same article reported twice: the report with the higher (seq, event_id)
    wins, the order the fold uses, and within one event the last mention. Returns
    the number of new articles per job (`xmax = 0` marks a row inserted rather
    than updated).
    """
    return f"""
WITH upserted AS (
    INSERT INTO recap_job_articles AS a ({_ARTICLE_COLUMNS})
    SELECT DISTINCT ON (job_id, article_id) {_ARTICLE_COLUMNS}
    FROM ({_article_rows_from_log(where)}) AS m
    ORDER BY job_id, article_id, seq DESC, event_id DESC, n DESC
    ON CONFLICT (job_id, article_id) DO UPDATE
        SET feed_id = EXCLUDED.feed_id, original_user_id = EXCLUDED.original_user_id,
            seq = EXCLUDED.seq, event_id = EXCLUDED.event_id
        WHERE (EXCLUDED.seq, EXCLUDED.event_id) > (a.seq, a.event_id)
    RETURNING job_id, (xmax = 0) AS inserted
)
SELECT job_id, count(*) FILTER (WHERE inserted)::int AS added FROM upserted GROUP BY job_id
"""


_OF_EVENTS = "e.event_id = ANY($1::uuid[])"
UPSERT_ARTICLES_OF_EVENTS = _articles_from_log(_OF_EVENTS)
# The common case, cheaper: articles none of which is stored or mentioned twice.
# Fails with a unique violation otherwise (then UPSERT_ARTICLES_OF_EVENTS merges).
INSERT_NEW_ARTICLES_OF_EVENTS = f"""
INSERT INTO recap_job_articles ({_ARTICLE_COLUMNS})
SELECT {_ARTICLE_COLUMNS} FROM ({_article_rows_from_log(_OF_EVENTS)}) AS m
"""

INSERT_HISTORY = """
INSERT INTO recap_job_status_history (job_id, event_id, seq, status, stage, transitioned_at, reason)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
ON CONFLICT (event_id) DO NOTHING
"""

STALLED_JOBS = """
SELECT job_id FROM recap_jobs
WHERE status IN ('pending', 'running') AND last_event_at < now() - make_interval(secs => $1)
ORDER BY last_event_at LIMIT 20
"""

INSERT_DEAD_LETTER = """
INSERT INTO recap_dead_letters (stream_id, reason, payload) VALUES ($1, $2, $3)
ON CONFLICT (stream_id) DO NOTHING
"""

# --- rebuild -----------------------------------------------------------------

PROJECTION_TABLES = (
    "recap_job_status_history",
    "recap_job_articles",
    "recap_job_genres",
    "recap_job_stages",
    "recap_jobs",
)
TRUNCATE_PROJECTION = f"TRUNCATE {', '.join(PROJECTION_TABLES)} RESTART IDENTITY"
COUNT_EVENTS = "SELECT count(*) FROM recap_events"
ALL_EVENTS_BY_JOB = "SELECT job_id, payload::text FROM recap_events ORDER BY job_id, seq, event_id"
REBUILD_ARTICLES = _articles_from_log("true")

# --- retention (recap-status prune) -------------------------------------------

# A job is old once it finished before $1, or, never finished, was last heard of before it.
_OLD_JOB = "coalesce(finished_at, last_event_at) < $1"
COUNT_OLD_JOBS = f"SELECT count(*) FROM recap_jobs WHERE {_OLD_JOB}"
# One page of old jobs after job_id $2 (keyset pagination).
OLD_JOBS_AFTER = f"SELECT job_id FROM recap_jobs WHERE {_OLD_JOB} AND job_id > $2 ORDER BY job_id LIMIT $3"
# The jobs of $2 still old once locked (a late event may have arrived meanwhile).
STILL_OLD_JOBS = f"SELECT job_id FROM recap_jobs WHERE {_OLD_JOB} AND job_id = ANY($2::uuid[])"
PRUNED_TABLES = ("recap_events", *PROJECTION_TABLES)
DELETE_JOBS = {table: f"DELETE FROM {table} WHERE job_id = ANY($1::uuid[])" for table in PRUNED_TABLES}
DELETE_OLD_DEAD_LETTERS = "DELETE FROM recap_dead_letters WHERE received_at < $1"


def job_lock_keys(job_ids: Sequence[uuid.UUID]) -> list[int]:
    """Sorted int4 lock keys, so that concurrent trackers lock jobs in one order."""
    return sorted({int.from_bytes(j.bytes[:4], "big", signed=True) for j in job_ids})


def job_values(row: JobRow) -> tuple:
    return tuple(getattr(row, c) for c in JOB_COLUMNS)


def stage_values(row: StageRow) -> tuple:
    return tuple(getattr(row, c) for c in STAGE_COLUMNS)


def genre_values(row: GenreRow) -> tuple:
    return tuple(getattr(row, c) for c in GENRE_COLUMNS)
