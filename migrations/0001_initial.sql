-- recap-status initial schema.
-- The child tables carry job_id without a foreign key: only the projector
-- writes them, always with the job row in the same transaction, and a
-- per-row FK check would cost more than the rest of an article insert.
-- The event log is the truth; recap_jobs, recap_job_stages, recap_job_genres,
-- recap_job_articles and recap_job_status_history are its projection and can
-- be rebuilt from it (`recap-status rebuild`).

-- Every accepted event, once (unique on event_id). Append-only.
CREATE TABLE recap_events (
    event_id    UUID PRIMARY KEY,
    job_id      UUID NOT NULL,
    seq         BIGINT NOT NULL,
    type        TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    payload     JSON NOT NULL
);
CREATE INDEX recap_events_job_seq ON recap_events (job_id, seq);

-- One row per job. Columns of the original table first, then ours.
CREATE TABLE recap_jobs (
    job_id          UUID PRIMARY KEY,
    kicked_at       TIMESTAMPTZ NOT NULL,
    note            TEXT,
    status          TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    last_stage      TEXT,
    updated_at      TIMESTAMPTZ NOT NULL,
    user_id         UUID,
    trigger_source  TEXT NOT NULL DEFAULT 'system' CHECK (trigger_source IN ('system', 'user')),
    window_days     INT,
    kind            TEXT NOT NULL DEFAULT 'recap' CHECK (kind IN ('recap', 'morning')),
    current_stage   TEXT,
    stages          TEXT[] NOT NULL,
    expected_genres TEXT[],
    finished_at     TIMESTAMPTZ,
    error           TEXT,
    failed_stage    TEXT,
    last_event_at   TIMESTAMPTZ NOT NULL,
    article_count   INT NOT NULL DEFAULT 0,
    -- projection bookkeeping: the newest (seq, event_id) folded in, and how many events.
    last_seq        BIGINT NOT NULL,
    last_event_id   UUID NOT NULL,
    version         BIGINT NOT NULL
);
CREATE INDEX recap_jobs_kicked ON recap_jobs (kicked_at DESC);
CREATE INDEX recap_jobs_kind_kicked ON recap_jobs (kind, kicked_at DESC);
CREATE INDEX recap_jobs_user_kicked ON recap_jobs (user_id, kicked_at DESC);
CREATE INDEX recap_jobs_running ON recap_jobs (kicked_at DESC) WHERE status IN ('pending', 'running');
CREATE INDEX recap_jobs_finished ON recap_jobs (finished_at DESC) WHERE finished_at IS NOT NULL;

CREATE TABLE recap_job_stages (
    job_id      UUID NOT NULL,
    stage       TEXT NOT NULL,
    position    INT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    done        BIGINT,
    total       BIGINT,
    error       TEXT,
    attempts    INT NOT NULL DEFAULT 0,
    updated_at  TIMESTAMPTZ NOT NULL,
    version     BIGINT NOT NULL,
    PRIMARY KEY (job_id, stage)
);

CREATE TABLE recap_job_genres (
    job_id        UUID NOT NULL,
    genre         TEXT NOT NULL,
    status        TEXT NOT NULL
                  CHECK (status IN ('pending', 'running', 'succeeded', 'partial', 'failed')),
    phase         TEXT CHECK (phase IN ('evidence', 'clustering', 'summarization')),
    cluster_count INT,
    article_count INT,
    attempts      INT NOT NULL DEFAULT 0,
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    error         TEXT,
    updated_at    TIMESTAMPTZ NOT NULL,
    version       BIGINT NOT NULL,
    PRIMARY KEY (job_id, genre)
);

-- The seed's article table, with the per-user columns the original never filled.
CREATE TABLE recap_job_articles (
    job_id           UUID NOT NULL,
    article_id       TEXT COLLATE "C" NOT NULL,
    feed_id          UUID,
    original_user_id UUID,
    -- the reporting event; a later (seq, event_id) report of the same article wins
    seq              BIGINT NOT NULL,
    event_id         UUID NOT NULL,
    UNIQUE (job_id, article_id)
);
CREATE INDEX recap_job_articles_user ON recap_job_articles (original_user_id, job_id)
    WHERE original_user_id IS NOT NULL;

-- Job-level transitions, one row per lifecycle event; ordered by seq, not by id.
CREATE TABLE recap_job_status_history (
    id              BIGSERIAL PRIMARY KEY,
    job_id          UUID NOT NULL,
    event_id        UUID NOT NULL UNIQUE,
    seq             BIGINT NOT NULL,
    status          TEXT NOT NULL,
    stage           TEXT,
    transitioned_at TIMESTAMPTZ NOT NULL,
    reason          TEXT,
    actor           TEXT NOT NULL DEFAULT 'system'
);
CREATE INDEX recap_job_status_history_job ON recap_job_status_history (job_id, seq);

-- Stream entries the tracker rejected, with the reason. Unique on the entry id,
-- so that a replay after a crash does not record one twice.
CREATE TABLE recap_dead_letters (
    id          BIGSERIAL PRIMARY KEY,
    stream_id   TEXT NOT NULL UNIQUE,
    reason      TEXT NOT NULL,
    payload     TEXT,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX recap_dead_letters_received ON recap_dead_letters (received_at DESC);
