// Recent jobs, newest first; a row expands to the job's detail.
import { h } from "../dom.js";
import * as fmt from "../format.js";
import { stageCells } from "../store.js";
import { JobDetail } from "./JobDetail.js";
import { StatusBadge } from "./StatusBadge.js";

const COLUMNS = ["Status", "Job", "Kind", "Source", "Stages", "Duration", "Started"];

export function JobHistoryTable({ rows, expanded, details, averages, now, windowLabel, limit, isStalled }) {
  const body = rows.length
    ? rows.slice(0, limit).flatMap((entry) => {
        const id = entry.job.job_id;
        const open = expanded.has(id);
        const row = Row(entry, open, now, isStalled(entry));
        if (!open) return [row];
        return [row, h("tr", { class: "detail-row", "data-key": `d-${id}` },
          h("td", { colspan: COLUMNS.length, id: `detail-${id}` },
            JobDetail({ entry, detail: details.get(id), averages: averages(entry.job.kind), now, windowLabel })))];
      })
    : [h("tr", { "data-key": "empty" }, h("td", { colspan: COLUMNS.length, class: "empty" }, `No jobs in the last ${windowLabel}`))];
  return h("div", { class: "history-wrap" },
    h("table", { class: "history" },
      h("caption", { class: "sr-only" }, `Jobs started in the last ${windowLabel}, newest first. Select a job to see its detail.`),
      h("thead", null, h("tr", null, COLUMNS.map((c) => h("th", { scope: "col", class: `col-${c.toLowerCase()}` }, c)))),
      h("tbody", null, body)),
    rows.length > limit ? h("p", { class: "muted more" }, `Showing the ${limit} most recent of ${rows.length} jobs.`) : null);
}

function Row(entry, open, now, stalled) {
  const job = entry.job;
  const id = job.job_id;
  const status = stalled ? "stalled" : job.status;
  const cells = stageCells(entry);
  const total = cells.length;
  const done = cells.filter((s) => s === "completed").length;
  const running = job.status === "running";
  const took = running ? (now - Date.parse(job.kicked_at)) / 1000 : fmt.seconds(job.kicked_at, job.finished_at);
  return h("tr", { class: open ? "job-row open" : "job-row", "data-key": id, "data-job-id": id, "data-status": status },
    h("td", { class: "col-status" }, StatusBadge({ status })),
    h("td", { class: "col-job" },
      h("button", {
        type: "button", class: "row-toggle mono", "data-action": "toggle", "data-job": id,
        "aria-expanded": String(open), "aria-controls": open ? `detail-${id}` : null, title: id,
        "aria-label": `Job ${fmt.shortId(id)}, ${status}: ${open ? "hide" : "show"} detail`,
      }, h("span", { class: "chevron", "aria-hidden": "true" }), fmt.shortId(id))),
    h("td", { class: "col-kind" }, h("span", { class: "tag" }, job.kind)),
    h("td", { class: "col-source" }, job.trigger_source === "user" ? `user ${fmt.shortId(job.user_id)}` : "system"),
    h("td", { class: "col-stages" }, StageMeter(cells), h("span", { class: "num" }, `${done}/${total}`)),
    h("td", { class: running ? "col-duration num ticking" : "col-duration num" }, fmt.duration(took)),
    h("td", { class: "col-started", title: fmt.absolute(job.kicked_at) }, fmt.ago(job.kicked_at, now)));
}

function StageMeter(cells) {
  return h("span", { class: "meter", "aria-hidden": "true" }, cells.map((status) => h("i", { "data-status": status })));
}
