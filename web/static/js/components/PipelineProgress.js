// The eight stages of a job in pipeline order: done ones with their duration,
// the running one with its done/total bar and rate, a failed one in red with
// its error shown on hover and on keyboard focus.
import { h } from "../dom.js";
import * as fmt from "../format.js";
import { glyph } from "./StatusBadge.js";

export function PipelineProgress({ jobId, stages, now }) {
  return h("ol", { class: "pipeline", "aria-label": "Pipeline stages" },
    stages.map((s, i) => Stage(jobId, s, i, now)));
}

function Stage(jobId, s, index, now) {
  const tipId = `tip-${jobId}-${index}`;
  const failed = s.status === "failed" && s.error;
  const { meta, bar, spoken } = describe(s, now);
  return h("li", {
    class: "stage", "data-key": s.stage, "data-stage": s.stage, "data-status": s.status,
    tabindex: failed ? 0 : null, "aria-describedby": failed ? tipId : null,
    "aria-label": `${index + 1}. ${s.stage}: ${s.status}${spoken ? `, ${spoken}` : ""}`,
  },
    h("span", { class: "stage-head" },
      h("span", { class: "stage-num", "aria-hidden": "true" }, index + 1),
      glyph(s.status),
      h("span", { class: "stage-name" }, s.stage)),
    bar,
    h("span", { class: "stage-meta" }, meta),
    failed ? h("span", { class: "tip", role: "tooltip", id: tipId }, s.error) : null);
}

function describe(s, now) {
  const attempt = s.attempts > 1 ? ` · try ${s.attempts}` : "";
  if (s.status === "completed") {
    const d = fmt.duration(s.duration_secs ?? fmt.seconds(s.started_at, s.finished_at));
    return { meta: d + attempt, spoken: `took ${d}` };
  }
  if (s.status === "failed") {
    const d = fmt.duration(fmt.seconds(s.started_at, s.finished_at));
    return { meta: `failed after ${d}`, spoken: `failed after ${d}` };
  }
  if (s.status !== "running") return { meta: "\u00a0", spoken: "" };

  const elapsed = s.started_at ? Math.max(0, (now - Date.parse(s.started_at)) / 1000) : null;
  const perSecond = s.done != null && elapsed ? s.done / elapsed : null;
  const counts = s.done != null ? (s.total != null ? `${fmt.count(s.done)}/${fmt.count(s.total)}` : fmt.count(s.done)) : "";
  const left = s.total != null && perSecond ? (s.total - s.done) / perSecond : null;
  const pace = [fmt.rate(perSecond), left != null && left > 0 ? `~${fmt.duration(left)} left` : ""].filter(Boolean).join(" · ");
  const meta = [counts, pace].filter(Boolean).join(" · ");
  const share = s.total ? Math.min(1, (s.done || 0) / s.total) : null;
  const bar = h("span", {
    class: share == null ? "bar indeterminate" : "bar", role: "progressbar", "aria-label": `${s.stage} progress`,
    "aria-valuemin": 0, "aria-valuemax": s.total ?? null, "aria-valuenow": share == null ? null : s.done || 0,
  }, h("span", { class: "bar-fill", style: share == null ? null : { "--p": `${(share * 100).toFixed(1)}%` } }));
  // Two lines: the counts, then the rate and what is left.
  const shown = counts ? [h("span", null, counts + attempt), pace ? h("span", null, pace) : null] : `running ${fmt.duration(elapsed)}${attempt}`;
  return { meta: shown, bar, spoken: meta };
}
