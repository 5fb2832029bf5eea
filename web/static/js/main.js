// The page: reads the token, connects, and re-renders whenever something moved
// (at most once a frame, and once a second for the clocks).
import { createApi, storeToken, takeToken } from "./api.js";
import { createConnection } from "./connection.js";
import { h, morph } from "./dom.js";
import * as fmt from "./format.js";
import { createStore } from "./store.js";
import { ActiveJobCard } from "./components/ActiveJobCard.js";
import { ConnectionIndicator } from "./components/ConnectionIndicator.js";
import { JobHistoryTable } from "./components/JobHistoryTable.js";
import { metricCards } from "./components/MetricCard.js";
import { WindowPills } from "./components/WindowPills.js";

const HISTORY_LIMIT = 100; // the push protocol allows up to 200 jobs in a snapshot
const EXTRAS_EVERY_MS = 60_000;
const STATS_REFETCH_MS = 1000;
const $ = (id) => document.getElementById(id);

const ui = {
  window: 86400, kind: "", source: "", user: "", status: "",
  paused: false, mode: "connecting", modeDetail: {},
  expanded: new Set(), details: new Map(),
  deadLetters: null, isAdmin: null, kindStats: new Map(),
};
readFiltersFromUrl();

let token = takeToken();
const api = createApi(() => token);
const store = createStore({ statsFit, onUnfitStats: refetchStats });
let connection = null;
let extrasTimer = null;

// --- rendering ---------------------------------------------------------------

let scheduled = false;
let firstRender = true;

function schedule() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(render);
}

function render() {
  scheduled = false;
  const started = performance.now();
  const now = store.now();
  const retryIn = (ui.modeDetail.retryAt - Date.now()) / 1000;
  morph($("connection"), ConnectionIndicator({ mode: ui.mode, paused: ui.paused, retryIn, message: ui.modeDetail.message }));
  const since = store.state.updatedAt;
  $("updated").textContent = ui.mode !== "live" && since ? `data from ${fmt.ago(new Date(since).toISOString(), Date.now())}` : "";
  if (ui.paused || !store.state.stats) return;

  const stats = store.state.stats;
  const w = fmt.windowLabel(ui.window);
  const source = stats.trigger_source ? ` · ${stats.trigger_source}-triggered` : "";
  $("metrics-title").textContent = `${stats.kind[0].toUpperCase()}${stats.kind.slice(1)} jobs · last ${w}${source}`;
  morph($("metrics"), h("div", { id: "metrics", class: "metrics" },
    metricCards({ stats, deadLetters: ui.deadLetters, window: ui.window })));

  const active = store.activeJobs();
  $("active-title").textContent = `Running now · ${active.length}`;
  morph($("active"), h("div", { id: "active", class: "active-grid" }, active.length
    ? active.map((entry) => ActiveJobCard({ entry, now, stalled: store.isStalled(entry, now) }))
    : h("p", { class: "empty-state", "data-key": "none" }, "No job is running.")));

  const rows = store.history(ui.window, ui.status, now);
  morph($("history-table"), h("div", { id: "history-table" }, JobHistoryTable({
    rows, expanded: ui.expanded, details: ui.details, averages, now, windowLabel: w, limit: HISTORY_LIMIT,
    isStalled: (entry) => store.isStalled(entry, now),
  })));
  updateUserOptions();
  document.title = `${active.length ? `${active.length} running · ` : ""}recap-status`;

  if (firstRender) {
    firstRender = false;
    // Read by the browser test: the cost of the first full render (reading offsetHeight
    // makes the browser compute style and layout now, so they are counted), and when it happened.
    void document.body.offsetHeight;
    performance.measure("recap:first-render", { start: started, end: performance.now() });
    performance.mark("recap:first-data");
  }
}

/** Window averages of a job kind, for the fast / normal / slow verdicts. */
function averages(kind) {
  const stats = store.state.stats?.kind === kind ? store.state.stats : ui.kindStats.get(kind);
  if (!stats) {
    if (!ui.kindStats.has(kind)) fetchKindStats(kind);
    return { job: null, stages: new Map() };
  }
  return { job: stats.avg_duration_secs, stages: new Map(stats.stage_durations.map((s) => [s.stage, s.avg_duration_secs])) };
}

async function fetchKindStats(kind) {
  ui.kindStats.set(kind, null);
  try {
    ui.kindStats.set(kind, await api.stats({ ...statsFilters(), kind }));
    schedule();
  } catch (err) {
    if (err.status === 401) authFailed();
  }
}

function updateUserOptions() {
  const select = $("f-user");
  const ids = store.userIds();
  if (ui.user && !ids.includes(ui.user)) ids.unshift(ui.user);
  const have = Array.from(select.options).slice(1).map((o) => o.value);
  if (have.join() === ids.join()) return;
  select.replaceChildren(select.options[0], ...ids.map((id) => h("option", { value: id }, id)));
  select.value = ui.user;
}

// --- data beside the push: who we are, stats the push lacks, dead letters, job detail

/** The stats' parameters for the filters in effect. */
function statsFilters() {
  return { window: ui.window, kind: ui.kind || "recap", trigger_source: ui.source || null, user_id: ui.user || null };
}

/** Whether stats (pushed, polled or fetched) are for the filters in effect. */
function statsFit(stats) {
  const want = statsFilters();
  return stats.kind === want.kind && stats.window === want.window && (stats.trigger_source ?? null) === want.trigger_source;
}

let statsTimer = null;

/** A pushed `stats` message did not fit the filters (the push may compute them without the
 *  trigger-source filter): fetch the right ones from job-stats, at most once a second. */
function refetchStats() {
  if (statsTimer) return;
  statsTimer = setTimeout(async () => {
    try {
      store.applyStats(await api.stats(statsFilters())); // dropped if the filters changed meanwhile
    } catch (err) {
      if (err.status === 401) authFailed();
    } finally {
      statsTimer = null;
    }
  }, STATS_REFETCH_MS);
}

async function loadExtras() {
  if (!token) return;
  if (ui.isAdmin === null) await loadMe();
  if (ui.isAdmin) await loadDeadLetters();
  schedule();
}

/** Admin or user token: GET /v1/me (a user token gets no dead letters and no user filter). */
async function loadMe() {
  try {
    const me = await api.me();
    ui.isAdmin = me.is_admin;
    $("f-user-field").hidden = !me.is_admin;
  } catch (err) {
    if (err.status === 401) authFailed(); // otherwise asked again with the next extras
  }
}

async function loadDeadLetters() {
  try {
    const body = await api.deadLetters(500);
    const now = store.now();
    const age = (d) => (now - Date.parse(d.received_at)) / 1000;
    const oldest = body.dead_letters.length ? age(body.dead_letters[body.dead_letters.length - 1]) : 0;
    ui.deadLetters = {
      total: body.total,
      current: body.dead_letters.filter((d) => age(d) <= ui.window).length,
      previous: body.total > body.dead_letters.length && oldest < 2 * ui.window
        ? null // the list does not reach back far enough to count the previous window
        : body.dead_letters.filter((d) => age(d) > ui.window && age(d) <= 2 * ui.window).length,
      capped: body.total > body.dead_letters.length && oldest < ui.window,
    };
  } catch (err) {
    if (err.status === 401) authFailed(); // otherwise the card keeps its last figures
  }
}

const detailFetchedAt = new Map();
const detailTimers = new Map();

/** Fetch a job's detail soon: at most once a second per job. */
function loadDetail(id) {
  if (detailTimers.has(id)) return;
  const wait = Math.max(0, 1000 - (Date.now() - (detailFetchedAt.get(id) || 0)));
  detailTimers.set(id, setTimeout(() => fetchDetail(id), wait));
}

async function fetchDetail(id) {
  detailTimers.delete(id); // a change while this is in flight asks again
  detailFetchedAt.set(id, Date.now());
  try {
    ui.details.set(id, { data: await api.job(id) });
  } catch (err) {
    if (err.status === 401) return authFailed();
    ui.details.set(id, { ...ui.details.get(id), error: err.message });
  }
  schedule();
}

store.onChange((changed) => {
  for (const id of ui.expanded) {
    const entry = store.state.jobs.get(id);
    const data = ui.details.get(id)?.data;
    if (changed.has(id) && entry && data && (entry.job.updated_at !== data.updated_at || entry.job.status !== data.status)) {
      loadDetail(id);
    }
  }
  schedule();
});

// --- filters -----------------------------------------------------------------

function filters() {
  return {
    window: ui.window, limit: HISTORY_LIMIT,
    kind: ui.kind || null, trigger_source: ui.source || null, user_id: ui.user || null,
  };
}

function readFiltersFromUrl() {
  const q = new URLSearchParams(location.search);
  const w = fmt.WINDOWS.find((x) => x.label === q.get("window"));
  if (w) ui.window = w.seconds;
  if (["recap", "morning"].includes(q.get("kind"))) ui.kind = q.get("kind");
  if (["system", "user"].includes(q.get("source"))) ui.source = q.get("source");
  if (/^[0-9a-f-]{36}$/i.test(q.get("user") || "")) ui.user = q.get("user");
  if (Array.from($("f-status").options).some((o) => o.value && o.value === q.get("status"))) ui.status = q.get("status");
}

function writeFiltersToUrl() {
  const q = new URLSearchParams();
  const w = fmt.WINDOWS.find((x) => x.seconds === ui.window);
  if (w && w.seconds !== 86400) q.set("window", w.label);
  for (const [name, value] of [["kind", ui.kind], ["source", ui.source], ["user", ui.user], ["status", ui.status]]) {
    if (value) q.set(name, value);
  }
  const search = q.toString();
  history.replaceState(history.state, "", location.pathname + (search ? `?${search}` : ""));
}

function filtersChanged({ server = true } = {}) {
  writeFiltersToUrl();
  if (server) {
    ui.kindStats.clear();
    connection?.refresh();
    loadExtras();
  }
  schedule();
}

function setWindow(seconds) {
  if (seconds === ui.window) return;
  ui.window = seconds;
  morph($("window-pills"), WindowPills({ selected: ui.window }));
  filtersChanged();
}

// --- events (delegated: rendered nodes carry data-action, never handlers) ----

document.addEventListener("click", (event) => {
  const target = event.target.closest("[data-action]") || event.target.closest("tr.job-row");
  if (!target) return;
  if (target.dataset.action === "window") setWindow(Number(target.dataset.window));
  else if (target.dataset.action === "toggle" || target.matches("tr.job-row")) {
    if (target.matches("tr.job-row") && getSelection().toString()) return; // selecting text, not toggling
    toggle(target.dataset.job || target.dataset.jobId);
  }
});

function toggle(id) {
  if (ui.expanded.has(id)) ui.expanded.delete(id);
  else {
    ui.expanded.add(id);
    loadDetail(id);
  }
  schedule();
}

document.addEventListener("keydown", (event) => {
  const el = event.target;
  if (el.matches?.(".row-toggle") && ["ArrowDown", "ArrowUp", "Home", "End"].includes(event.key)) {
    const all = Array.from(document.querySelectorAll(".row-toggle"));
    const i = all.indexOf(el);
    const next = { ArrowDown: i + 1, ArrowUp: i - 1, Home: 0, End: all.length - 1 }[event.key];
    all[Math.max(0, Math.min(all.length - 1, next))]?.focus();
    event.preventDefault();
  } else if (el.matches?.(".pill") && ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"].includes(event.key)) {
    const step = event.key === "ArrowLeft" || event.key === "ArrowUp" ? -1 : 1;
    const i = fmt.WINDOWS.findIndex((w) => w.seconds === ui.window);
    setWindow(fmt.WINDOWS[(i + step + fmt.WINDOWS.length) % fmt.WINDOWS.length].seconds);
    document.querySelector('.pill[aria-checked="true"]').focus();
    event.preventDefault();
  } else if (!event.ctrlKey && !event.metaKey && !event.altKey && !el.closest?.("input, select, textarea")) {
    if (event.key === "r") refresh();
    else if (event.key === "p") togglePause();
  }
});

function bindSelect(id, key, server = true) {
  const select = $(id);
  select.value = ui[key];
  select.addEventListener("change", () => {
    ui[key] = select.value;
    filtersChanged({ server });
  });
}

function refresh() {
  connection?.refresh();
  loadExtras();
  for (const id of ui.expanded) loadDetail(id);
}

function togglePause() {
  ui.paused = !ui.paused;
  $("pause").setAttribute("aria-pressed", String(ui.paused));
  $("pause").textContent = ui.paused ? "Resume" : "Pause";
  schedule();
}

// --- start -------------------------------------------------------------------

function onMode(mode, detail) {
  ui.mode = mode;
  ui.modeDetail = detail;
  schedule();
}

function authFailed() {
  connection?.stop();
  connection = null;
  clearInterval(extrasTimer);
  token = null;
  storeToken(null);
  showLogin("That token was not accepted. Enter a valid one.");
}

function showLogin(message = "") {
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-message").textContent = message;
  $("token-input").focus();
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  ui.isAdmin = null; // this token's role: asked of /v1/me
  ui.deadLetters = null;
  connection = createConnection({ store, api, getToken: () => token, getFilters: filters, onMode, onAuthError: authFailed });
  connection.start();
  loadExtras();
  extrasTimer = setInterval(loadExtras, EXTRAS_EVERY_MS);
}

morph($("window-pills"), WindowPills({ selected: ui.window }));
bindSelect("f-kind", "kind");
bindSelect("f-source", "source");
bindSelect("f-user", "user");
bindSelect("f-status", "status", false);
$("refresh").addEventListener("click", refresh);
$("pause").addEventListener("click", togglePause);
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token-input").value.trim();
  $("token-input").value = "";
  storeToken(token);
  start();
});
setInterval(schedule, 1000);

if (token) start();
else showLogin();
