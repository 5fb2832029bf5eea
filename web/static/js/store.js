// What the page knows: one entry per job (its job, stage and genre rows), the
// stats, and the push cursor. Push messages carry rows with versions and are
// applied by version (docs/push-protocol.md, "How a client must behave"); a
// REST poll replaces the whole view, keeping what REST does not return (a
// job's note, a recent job's stage rows) from rows that have not moved since.

/** RECAP_STALL_AFTER until the first stats (which publish it as `stall_after_secs`) arrive. */
const DEFAULT_STALL_AFTER_SECS = 300;

/**
 * `statsFit(stats)` says whether stats are for the filters in effect; a pushed
 * `stats` message that is not (one for the previous filters, or one the server
 * computed without the trigger-source filter) is not shown, and
 * `onUnfitStats()` is called so the page can fetch the right ones.
 */
export function createStore({ statsFit = () => true, onUnfitStats = () => {} } = {}) {
  const state = { jobs: new Map(), stats: null, cursor: null, skew: 0, updatedAt: 0 };
  const listeners = new Set();

  function emit(changed) {
    state.updatedAt = Date.now();
    for (const fn of listeners) fn(changed);
  }

  function entryFor(job) {
    let entry = state.jobs.get(job.job_id);
    if (!entry) {
      entry = { job, stages: new Map(), genres: new Map(), stalled: false, flaggedAt: null, history: null, stagesKnown: true };
      state.jobs.set(job.job_id, entry);
    }
    return entry;
  }

  function applyChanges(changes, changed) {
    for (const change of changes) {
      const entry = entryFor(change.job);
      if (change.job.version > entry.job.version) entry.job = change.job;
      for (const row of change.stages) keepNewest(entry.stages, row.stage, row);
      for (const row of change.genres) keepNewest(entry.genres, row.genre, row);
      changed.add(change.job.job_id);
    }
  }

  function flagFromProgress(progress) {
    for (const j of [...progress.active_jobs, ...progress.recent_jobs]) {
      const entry = state.jobs.get(j.job_id);
      if (!entry) continue;
      entry.stalled = j.stalled;
      entry.flaggedAt = entry.job.last_event_at;
      if (j.status_history) entry.history = j.status_history;
    }
  }

  function takeServerTime(iso) {
    if (iso) state.skew = Date.parse(iso) - Date.now();
  }

  return {
    state,
    onChange(fn) {
      listeners.add(fn);
    },
    now: () => Date.now() + state.skew,

    /** A push message; returns false for messages it does not know. */
    applyPush(msg) {
      const changed = new Set();
      if (msg.type === "snapshot") {
        state.jobs = new Map();
        applyChanges(msg.jobs, changed);
        flagFromProgress(msg.progress);
        state.stats = msg.progress.stats;
        takeServerTime(msg.progress.generated_at);
      } else if (msg.type === "delta" || msg.type === "resumed") {
        applyChanges(msg.changes, changed);
      } else if (msg.type === "stats") {
        if (statsFit(msg.stats)) state.stats = msg.stats;
        else onUnfitStats(msg.stats);
      } else if (msg.type !== "heartbeat") {
        return false;
      }
      if (msg.cursor) advance(state, msg.cursor);
      if (msg.type !== "heartbeat") emit(changed);
      return true;
    },

    /** A GET /v1/dashboard/job-progress body: the whole view. */
    applyProgress(body) {
      const old = state.jobs;
      const jobs = new Map();
      for (const a of body.active_jobs) jobs.set(a.job_id, fromActive(a, old.get(a.job_id)));
      for (const r of body.recent_jobs) {
        const prev = jobs.get(r.job_id) || old.get(r.job_id);
        jobs.set(r.job_id, fromRecent(r, prev, jobs.has(r.job_id)));
      }
      state.jobs = jobs;
      state.stats = body.stats;
      takeServerTime(body.generated_at);
      emit(new Set(jobs.keys()));
    },

    /** A GET /v1/dashboard/job-stats body, taken when it is for the filters in effect. */
    applyStats(stats) {
      if (!statsFit(stats)) return;
      state.stats = stats;
      emit(new Set());
    },

    /** The server's flag while the job has not reported since; then the server's rule, by our clock. */
    isStalled(entry, now) {
      const job = entry.job;
      if (job.status !== "running") return false;
      if (entry.stalled && entry.flaggedAt === job.last_event_at) return true;
      const after = state.stats?.stall_after_secs ?? DEFAULT_STALL_AFTER_SECS;
      return now - Date.parse(job.last_event_at) > after * 1000;
    },

    /** Every running job, the most recently started first (as the server orders them). */
    activeJobs() {
      return sortByKick([...state.jobs.values()].filter((e) => e.job.status === "running"));
    },

    /** Jobs started within the window, newest first; `status` may be "stalled". */
    history(windowSeconds, status, now) {
      const since = now - windowSeconds * 1000;
      return sortByKick([...state.jobs.values()].filter((e) => {
        if (Date.parse(e.job.kicked_at) < since) return false;
        if (!status) return true;
        return status === "stalled" ? this.isStalled(e, now) : e.job.status === status && !(status === "running" && this.isStalled(e, now));
      }));
    },

    userIds() {
      return [...new Set([...state.jobs.values()].map((e) => e.job.user_id).filter(Boolean))].sort();
    },
  };
}

function advance(state, cursor) {
  const c = state.cursor;
  if (!c || c.epoch !== cursor.epoch || cursor.offset > c.offset) state.cursor = cursor;
}

function keepNewest(rows, key, row) {
  const held = rows.get(key);
  if (!held || row.version > held.version) rows.set(key, row);
}

function sortByKick(entries) {
  // Parsed, not compared as text: "…:01Z" sorts after "…:01.5Z" as a string.
  const at = (e) => Date.parse(e.job.kicked_at);
  return entries.sort((a, b) => at(b) - at(a) || a.job.job_id.localeCompare(b.job.job_id));
}

/** A REST row replacing a held one: fields REST lacks survive only if the row has not moved. */
function mergeRow(held, fresh) {
  if (held && held.status === fresh.status && held.attempts === fresh.attempts) return { ...held, ...fresh };
  return { ...fresh, version: held ? held.version : -1 };
}

function mergeJob(held, fields) {
  return { ...(held ? held.job : {}), ...fields, version: held ? held.job.version : -1 };
}

function fromActive(a, held) {
  const job = mergeJob(held, {
    job_id: a.job_id, status: a.status, kind: a.kind, trigger_source: a.trigger_source, user_id: a.user_id,
    kicked_at: a.kicked_at, updated_at: a.updated_at, last_event_at: a.last_event_at, current_stage: a.current_stage,
    article_count: a.total_articles, stages: a.stages.map((s) => s.stage), expected_genres: Object.keys(a.genre_progress),
    finished_at: null,
  });
  const stages = new Map(a.stages.map((s, i) => [s.stage, mergeRow(held?.stages.get(s.stage), { ...s, position: i })])
    .filter(([, s]) => s.status !== "pending"));
  const genres = new Map(Object.entries(a.genre_progress).filter(([, g]) => g.status !== "pending" || g.attempts)
    .map(([name, g]) => [name, mergeRow(held?.genres.get(name), { genre: name, ...g })]));
  return {
    job, stages, genres, stalled: a.stalled, flaggedAt: a.last_event_at, history: held?.history || null,
    stagesKnown: true, stagesCompleted: a.stages_completed,
  };
}

function fromRecent(r, held, isActive) {
  const fields = {
    job_id: r.job_id, status: r.status, kind: r.kind, trigger_source: r.trigger_source, user_id: r.user_id,
    kicked_at: r.kicked_at, updated_at: r.updated_at, finished_at: r.finished_at, current_stage: r.current_stage,
    last_stage: r.last_stage, error: r.error, article_count: r.article_count, last_event_at: r.last_event_at,
    stages: r.stage_names,
  };
  const job = mergeJob(held, fields);
  // Recent jobs come without stage rows: rows held from before stay right only while the status has not moved.
  const same = held && held.job.status === r.status;
  return {
    job,
    stages: same || isActive ? held.stages : new Map(),
    genres: held ? held.genres : new Map(),
    stalled: r.stalled,
    flaggedAt: job.last_event_at,
    history: r.status_history,
    stagesKnown: Boolean(same || isActive) && held.stagesKnown,
    stagesCompleted: r.stages_completed,
  };
}

const DEFAULT_STAGES = ["fetch", "preprocess", "dedup", "genre", "select", "evidence", "dispatch", "persist"];

/** Every stage of a job in pipeline order, pending where nothing was reported. */
export function stagesOf(entry) {
  const names = [...(entry.job.stages || DEFAULT_STAGES)];
  for (const name of entry.stages.keys()) if (!names.includes(name)) names.push(name);
  return names.map((stage) => entry.stages.get(stage) || { stage, status: "pending", attempts: 0 });
}

/** Every genre: the expected ones (pending until reported) and those reported. */
export function genresOf(entry) {
  const rows = new Map((entry.job.expected_genres || []).map((genre) => [genre, { genre, status: "pending", attempts: 0 }]));
  for (const [name, row] of entry.genres) rows.set(name, row);
  return [...rows.values()];
}

/**
 * Each stage's status in pipeline order, for the history meter. A job known only
 * from polls has no stage rows (or only those pushed since): a stage without a
 * row is completed when the poll's `stages_completed` says so, failed when a
 * failed job stopped there, else pending.
 */
export function stageCells(entry) {
  if (entry.stagesKnown) return stagesOf(entry).map((s) => s.status);
  const completed = new Set(entry.stagesCompleted || []);
  const failedAt = entry.job.status === "failed" ? entry.job.last_stage : null;
  return stagesOf(entry).map((s) => (entry.stages.has(s.stage) ? s.status
    : completed.has(s.stage) ? "completed" : s.stage === failedAt ? "failed" : "pending"));
}
