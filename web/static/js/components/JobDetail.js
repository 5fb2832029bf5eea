// A job's detail inside the history table: how long each stage took against
// the window's average, how its status moved, its genres and its errors.
// Shows what the page already holds at once, and the full detail
// (GET /v1/dashboard/jobs/{id}) when it has arrived.
import { h } from "../dom.js";
import * as fmt from "../format.js";
import { genresOf, stagesOf } from "../store.js";
import { GenreProgressList } from "./GenreProgressList.js";
import { StatusBadge } from "./StatusBadge.js";

export function JobDetail({ entry, detail, averages, now, windowLabel }) {
  const data = detail?.data;
  const job = data || entry.job;
  const stages = data ? data.stages : stagesOf(entry);
  const genres = data ? data.genres : genresOf(entry);
  const history = data ? data.status_history : entry.history || [];
  const took = job.finished_at ? fmt.seconds(job.kicked_at, job.finished_at) : (now - Date.parse(job.kicked_at)) / 1000;
  // Against the average of finished jobs: meaningful for a job that ran to the end.
  const pace = job.status === "completed" ? fmt.pace(took, averages.job) : null;
  return h("div", { class: "detail" },
    detail?.error ? h("p", { class: "notice", role: "alert" }, `Could not load the full detail: ${detail.error}`) : null,
    h("dl", { class: "facts detail-facts" },
      fact("Job", h("span", { class: "mono selectable" }, job.job_id)),
      fact("Duration", [fmt.duration(took), job.finished_at ? "" : " so far", pace ? PaceTag(pace, windowLabel) : null]),
      fact("Started", fmt.absolute(job.kicked_at)),
      fact("Finished", job.finished_at ? fmt.absolute(job.finished_at) : fmt.DASH),
      fact("Source", job.trigger_source === "user" ? h("span", { class: "mono" }, job.user_id) : "system"),
      data ? fact("Articles", `${fmt.count(data.article_count)}${data.feed_count ? ` from ${fmt.count(data.feed_count)} feeds` : ""}`) : null,
      data?.window_days != null ? fact("Window", `${data.window_days} days`) : null),
    data?.note ? h("p", { class: "note" }, data.note) : null,
    Errors(job, stages, genres),
    h("div", { class: "detail-grid" },
      h("section", { class: "detail-block", "aria-label": "Stage durations" },
        h("h4", null, "Stages", h("span", { class: "muted" }, ` · against the ${windowLabel} average`)),
        StageBars(stages, averages, now)),
      h("section", { class: "detail-block", "aria-label": "Status transitions" },
        h("h4", null, "Status transitions"),
        Timeline(history, job.kicked_at))),
    h("section", { class: "detail-block", "aria-label": "Genre results" },
      GenreProgressList({ jobId: `d-${job.job_id}`, genres, finished: Boolean(job.finished_at) })),
    !data && !detail?.error ? h("p", { class: "muted" }, "Loading the full detail…") : null);
}

function fact(label, value) {
  return h("div", { class: "fact" }, h("dt", null, label), h("dd", null, value));
}

function PaceTag(pace, windowLabel) {
  return h("span", { class: "pace", "data-pace": pace.label, title: `${pace.ratio.toFixed(2)}× the ${windowLabel} average` },
    ` ${pace.label} · ${pace.ratio.toFixed(2)}×`);
}

function Errors(job, stages, genres) {
  const items = [];
  if (job.error) items.push([job.failed_stage ? `job (at ${job.failed_stage})` : "job", job.error]);
  for (const s of stages) if (s.error) items.push([`stage ${s.stage}`, s.error]);
  for (const g of genres) if (g.error) items.push([`genre ${g.genre}`, g.error]);
  if (!items.length) return null;
  return h("section", { class: "errors", "aria-label": "Errors" },
    h("h4", null, `Errors (${items.length})`),
    h("ul", null, items.map(([where, text]) => h("li", null, h("span", { class: "error-where" }, where), " ", h("span", { class: "error-text" }, text)))));
}

function StageBars(stages, averages, now) {
  const took = stages.map((s) =>
    s.status === "running" && s.started_at ? (now - Date.parse(s.started_at)) / 1000 : s.duration_secs ?? fmt.seconds(s.started_at, s.finished_at));
  const scale = Math.max(1, ...took.filter((t) => t != null), ...stages.map((s) => averages.stages.get(s.stage) || 0));
  return h("ol", { class: "stage-bars" }, stages.map((s, i) => {
    const avg = averages.stages.get(s.stage);
    const pace = s.status === "completed" ? fmt.pace(took[i], avg) : null;
    return h("li", { class: "stage-bar", "data-key": s.stage, "data-status": s.status },
      h("span", { class: "stage-bar-name" }, h("span", { class: "stage-num" }, i + 1), " ", s.stage),
      h("span", { class: "track", role: "img", "aria-label": `${s.stage}: ${s.status}, ${fmt.duration(took[i])}${avg ? `, average ${fmt.duration(avg)}` : ""}` },
        took[i] != null ? h("span", { class: "track-fill", style: { "--p": pct(took[i], scale) } }) : null,
        avg ? h("span", { class: "track-avg", style: { "--p": pct(avg, scale) }, title: `average ${fmt.duration(avg)}` }) : null),
      h("span", { class: "num stage-bar-time" }, fmt.duration(took[i])),
      h("span", { class: "pace", "data-pace": pace ? pace.label : "none" }, pace ? pace.label : s.status === "completed" ? "" : s.status));
  }));
}

function pct(value, scale) {
  return `${Math.min(100, (value / scale) * 100).toFixed(1)}%`;
}

function Timeline(history, kickedAt) {
  if (!history.length) return h("p", { class: "muted" }, "No transitions recorded");
  return h("ol", { class: "timeline" }, history.map((t) =>
    h("li", { "data-key": String(t.id), "data-status": t.status },
      h("time", { datetime: t.transitioned_at, title: fmt.absolute(t.transitioned_at) }, fmt.timeOfDay(t.transitioned_at)),
      h("span", { class: "num muted offset" }, `+${fmt.duration(fmt.seconds(kickedAt, t.transitioned_at))}`),
      StatusBadge({ status: t.status }),
      t.stage ? h("span", { class: "tl-stage" }, t.stage) : null,
      t.reason ? h("span", { class: "tl-reason" }, t.reason) : null,
      t.actor && t.actor !== "system" ? h("span", { class: "tag" }, t.actor) : null)));
}
