"""Every SQL statement of the REST API, once, named.

Scoping: `$user` is the user whose jobs are shown (NULL: every job, admins
only); a user's view never includes system jobs because NULL = $user is never
true. Jobs of a window are the jobs kicked off within it.
"""

from __future__ import annotations

_JOB_SUMMARY = """
    job_id, kind, status, current_stage, last_stage, stages, expected_genres, kicked_at, updated_at,
    finished_at, last_event_at, trigger_source, user_id, error, article_count
"""

# $1 since, $2 user, $3 kind, $4 trigger_source, $5 statuses, $6 stalled before, $7 limit.
# `stalled` is derived: a running job whose last event is older than $6.
RECENT_JOBS = f"""
SELECT {_JOB_SUMMARY}
FROM recap_jobs
WHERE kicked_at >= $1
  AND ($2::uuid IS NULL OR user_id = $2)
  AND ($3::text IS NULL OR kind = $3)
  AND ($4::text IS NULL OR trigger_source = $4)
  AND ($5::text[] IS NULL OR status = ANY($5)
       OR ('stalled' = ANY($5) AND status = 'running' AND last_event_at < $6))
ORDER BY kicked_at DESC, job_id
LIMIT $7
"""

# Every running job, whatever its age, most recently started first.
# $1 user, $2 kind, $3 trigger_source, $4 cap.
ACTIVE_JOBS = f"""
SELECT {_JOB_SUMMARY},
       CASE WHEN $1::uuid IS NULL THEN NULL
            ELSE (SELECT count(*) FROM recap_job_articles a
                  WHERE a.job_id = j.job_id AND a.original_user_id = $1)::int
       END AS user_article_count
FROM recap_jobs j
WHERE status = 'running'
  AND ($1::uuid IS NULL OR user_id = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND ($3::text IS NULL OR trigger_source = $3)
ORDER BY kicked_at DESC, job_id
LIMIT $4
"""

# Status histories of many jobs in one query (the original ran one per job).
HISTORIES = """
SELECT job_id, id, status, stage, transitioned_at, reason, actor
FROM recap_job_status_history
WHERE job_id = ANY($1::uuid[])
ORDER BY job_id, seq, id
"""

STAGES = """
SELECT job_id, stage, position, status, started_at, finished_at, done, total, error, attempts
FROM recap_job_stages
WHERE job_id = ANY($1::uuid[])
ORDER BY job_id, position, stage
"""

GENRES = """
SELECT job_id, genre, status, phase, cluster_count, article_count, attempts, started_at, finished_at, error
FROM recap_job_genres
WHERE job_id = ANY($1::uuid[])
ORDER BY job_id, genre
"""

# One row per kind: counts of the window's jobs, running and stalled jobs of any
# age, and durations of the window's finished jobs only; the same counts and
# durations (prev_*) for the window of the same length just before it.
# $1 since, $2 user, $3 stalled before, $4 trigger_source, $5 since of the previous window.
STATS_BY_KIND = """
SELECT kind,
       count(*) FILTER (WHERE kicked_at >= $1) AS total,
       count(*) FILTER (WHERE kicked_at >= $1 AND status = 'completed') AS completed,
       count(*) FILTER (WHERE kicked_at >= $1 AND status = 'failed') AS failed,
       count(*) FILTER (WHERE kicked_at >= $1 AND status = 'cancelled') AS cancelled,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'running' AND last_event_at < $3) AS stalled,
       avg(duration) AS avg_secs,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration) AS p50_secs,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration) AS p95_secs,
       count(*) FILTER (WHERE previous) AS prev_total,
       count(*) FILTER (WHERE previous AND status = 'completed') AS prev_completed,
       count(*) FILTER (WHERE previous AND status = 'failed') AS prev_failed,
       count(*) FILTER (WHERE previous AND status = 'cancelled') AS prev_cancelled,
       avg(prev_duration) AS prev_avg_secs,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY prev_duration) AS prev_p50_secs,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY prev_duration) AS prev_p95_secs
FROM (
    SELECT kind, status, kicked_at, last_event_at, previous,
           CASE WHEN kicked_at >= $1 THEN duration END AS duration,
           CASE WHEN previous THEN duration END AS prev_duration
    FROM (
        SELECT kind, status, kicked_at, last_event_at,
               kicked_at >= $5 AND kicked_at < $1 AS previous,
               CASE WHEN finished_at IS NOT NULL
                    THEN greatest(extract(epoch FROM finished_at - kicked_at), 0)::float8
               END AS duration
        FROM recap_jobs
        WHERE (kicked_at >= $5 OR status = 'running')
          AND ($2::uuid IS NULL OR user_id = $2)
          AND ($4::text IS NULL OR trigger_source = $4)
    ) AS jobs
) AS scoped
GROUP BY kind
"""

# Average duration of each completed stage over the window's finished jobs of a kind,
# in pipeline order. $1 since, $2 user, $3 kind, $4 trigger_source.
STAGE_AVERAGES = """
SELECT s.stage,
       avg(greatest(extract(epoch FROM s.finished_at - s.started_at), 0))::float8 AS avg_secs,
       count(*) AS jobs
FROM recap_jobs j
JOIN recap_job_stages s ON s.job_id = j.job_id
WHERE j.kicked_at >= $1 AND ($2::uuid IS NULL OR j.user_id = $2) AND j.kind = $3
  AND ($4::text IS NULL OR j.trigger_source = $4)
  AND j.finished_at IS NOT NULL
  AND s.status = 'completed' AND s.started_at IS NOT NULL AND s.finished_at IS NOT NULL
GROUP BY s.stage
ORDER BY min(s.position), s.stage
"""

# A user's articles (original_user_id) and jobs (user_id) among the window's jobs. $1 user, $2 since.
USER_CONTEXT = """
WITH mine AS (
    SELECT a.article_id, a.feed_id
    FROM recap_job_articles a
    JOIN recap_jobs j ON j.job_id = a.job_id
    WHERE a.original_user_id = $1 AND j.kicked_at >= $2
)
SELECT (SELECT count(DISTINCT article_id) FROM mine)::int AS article_count,
       (SELECT count(*) FROM recap_jobs WHERE user_id = $1 AND kicked_at >= $2)::int AS jobs_count,
       (SELECT coalesce(array_agg(DISTINCT feed_id ORDER BY feed_id), '{}')
        FROM mine WHERE feed_id IS NOT NULL) AS feed_ids
"""

JOB = """
SELECT job_id, kind, status, current_stage, last_stage, stages, expected_genres, kicked_at, updated_at,
       finished_at, last_event_at, trigger_source, user_id, error, article_count,
       note, window_days, failed_stage
FROM recap_jobs
WHERE job_id = $1
"""

JOB_FEEDS = "SELECT count(DISTINCT feed_id)::int FROM recap_job_articles WHERE job_id = $1"

# The newest events of a job; an article list is replaced by its length. $1 job, $2 limit.
LAST_EVENTS = """
SELECT event_id, seq, type, at, received_at,
       CASE WHEN type = 'articles.added'
            THEN ((payload::jsonb - 'articles')
                  || jsonb_build_object('article_count', jsonb_array_length(payload::jsonb -> 'articles')))::text
            ELSE payload::text
       END AS payload
FROM recap_events
WHERE job_id = $1
ORDER BY seq DESC, event_id DESC
LIMIT $2
"""

DEAD_LETTERS = """
SELECT id, stream_id, reason, payload, received_at
FROM recap_dead_letters
ORDER BY received_at DESC, id DESC
LIMIT $1
"""

COUNT_DEAD_LETTERS = "SELECT count(*) FROM recap_dead_letters"

METRICS_COUNTS = """
SELECT (SELECT count(*) FROM recap_events) AS events,
       (SELECT count(*) FROM recap_dead_letters) AS dead_letters
"""

JOBS_BY_STATUS = "SELECT status, count(*) AS jobs FROM recap_jobs GROUP BY status"

PING = "SELECT 1"
