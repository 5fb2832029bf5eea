// The KPI row. Each figure is compared with the window before this one, from the
// stats' `previous` object (the same figures for the window of the same length
// just before). Running and stalled are "now" figures and have no trend.
import { h } from "../dom.js";
import * as fmt from "../format.js";

export function MetricCard({ id, label, value, sub, trend, zero = false }) {
  return h("article", { class: "metric", "data-key": id, "data-metric": id, "aria-labelledby": `m-${id}` },
    h("h3", { class: "metric-label", id: `m-${id}` }, label),
    h("p", { class: zero ? "metric-value is-zero" : "metric-value" }, value),
    h("p", { class: "metric-sub" }, sub || "\u00a0"),
    trend
      ? h("p", { class: "metric-trend", "data-tone": trend.tone, title: trend.title },
          h("span", { "aria-hidden": "true" }, trend.arrow), " ", trend.text,
          h("span", { class: "muted" }, ` vs prev ${trend.window}`))
      : h("p", { class: "metric-trend muted" }, trend === null ? "no earlier data" : "\u00a0"));
}

const finishedOf = (s) => s.completed_jobs_24h + s.failed_jobs_24h + s.cancelled_jobs_24h;

// higherIs: "good", "bad" or "neutral"; kind: how the difference is written.
function trend(current, previous, { higherIs, kind, window, shown }) {
  if (current == null || previous == null) return null;
  const diff = current - previous;
  const flat = kind === "rate" ? Math.abs(diff) < 0.0005 : kind === "duration" ? Math.abs(diff) < 0.5 : diff === 0;
  const arrow = flat ? "=" : diff > 0 ? "▲" : "▼";
  let text;
  if (flat) text = "no change";
  else if (kind === "rate") text = `${Math.abs(diff * 100).toFixed(1)} pt`;
  else if (kind === "duration") text = previous ? `${Math.round(Math.abs(diff / previous) * 100)}%` : fmt.duration(Math.abs(diff));
  else text = fmt.count(Math.abs(diff));
  const tone = flat || higherIs === "neutral" ? "neutral" : (diff > 0) === (higherIs === "good") ? "good" : "bad";
  return { arrow, text, tone, window, title: `previous ${window}: ${shown(previous)}` };
}

export function metricCards({ stats, deadLetters, window }) {
  const s = stats;
  const w = fmt.windowLabel(window);
  const finished = finishedOf(s);
  const opts = (higherIs, kind, shown) => ({ higherIs, kind, window: w, shown });
  const previous = s.previous;
  const p = previous || {};
  const cards = [
    MetricCard({
      id: "success", label: "Success rate",
      value: finished ? fmt.percent(s.success_rate_24h) : fmt.DASH,
      zero: finished > 0 && s.success_rate_24h === 0,
      sub: finished ? `${fmt.count(s.completed_jobs_24h)} of ${fmt.count(finished)} finished` : "no finished jobs",
      trend: previous && trend(finished ? s.success_rate_24h : null, finishedOf(p) ? p.success_rate_24h : null,
        opts("good", "rate", fmt.percent)),
    }),
    MetricCard({
      id: "avg", label: "Avg duration", value: fmt.duration(s.avg_duration_secs), zero: s.avg_duration_secs === 0,
      sub: s.p50_duration_secs != null ? `median ${fmt.duration(s.p50_duration_secs)}` : "finished jobs only",
      trend: previous && trend(s.avg_duration_secs, p.avg_duration_secs, opts("bad", "duration", fmt.duration)),
    }),
    MetricCard({
      id: "p95", label: "p95 duration", value: fmt.duration(s.p95_duration_secs), zero: s.p95_duration_secs === 0,
      sub: `over ${fmt.count(finished)} finished`,
      trend: previous && trend(s.p95_duration_secs, p.p95_duration_secs, opts("bad", "duration", fmt.duration)),
    }),
    MetricCard({
      id: "jobs", label: `Jobs · ${w}`, value: fmt.count(s.total_jobs_24h), zero: s.total_jobs_24h === 0,
      sub: `${fmt.count(s.running_jobs)} running`,
      trend: previous && trend(s.total_jobs_24h, p.total_jobs_24h, opts("neutral", "count", fmt.count)),
    }),
    MetricCard({
      id: "failed", label: "Failed", value: fmt.count(s.failed_jobs_24h), zero: s.failed_jobs_24h === 0,
      sub: s.cancelled_jobs_24h ? `${fmt.count(s.cancelled_jobs_24h)} cancelled` : "0 cancelled",
      trend: previous && trend(s.failed_jobs_24h, p.failed_jobs_24h, opts("bad", "count", fmt.count)),
    }),
    MetricCard({
      id: "stalled", label: "Stalled", value: fmt.count(s.stalled_jobs), zero: s.stalled_jobs === 0,
      sub: `of ${fmt.count(s.running_jobs)} running, now`,
    }),
  ];
  if (deadLetters) {
    cards.push(MetricCard({
      id: "dead", label: "Dead letters", value: `${deadLetters.capped ? "≥" : ""}${fmt.count(deadLetters.current)}`,
      zero: deadLetters.current === 0, sub: `${fmt.count(deadLetters.total)} in total`,
      trend: trend(deadLetters.current, deadLetters.previous, opts("bad", "count", fmt.count)),
    }));
  }
  return cards;
}
