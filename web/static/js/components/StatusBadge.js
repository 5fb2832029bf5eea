// A status as a glyph and a word, never colour alone: each status has its own shape.
import { h, svg } from "../dom.js";

const ring = () => svg("circle", { cx: 8, cy: 8, r: 6.25, class: "g-line" });

const GLYPHS = {
  completed: () => [ring(), svg("path", { d: "M5 8.3l2 2 4-4.3", class: "g-line" })],
  failed: () => [ring(), svg("path", { d: "M5.8 5.8l4.4 4.4M10.2 5.8l-4.4 4.4", class: "g-line" })],
  running: () => [svg("circle", { cx: 8, cy: 8, r: 6.25, class: "g-pulse" }), svg("circle", { cx: 8, cy: 8, r: 3.6, class: "g-fill" })],
  pending: () => [svg("circle", { cx: 8, cy: 8, r: 5, class: "g-line g-dash" })],
  cancelled: () => [ring(), svg("path", { d: "M3.6 12.4l8.8-8.8", class: "g-line" })],
  stalled: () => [ring(), svg("path", { d: "M6.6 5.4v5.2M9.4 5.4v5.2", class: "g-line" })],
  partial: () => [ring(), svg("path", { d: "M8 1.75a6.25 6.25 0 0 1 0 12.5z", class: "g-fill" })],
};
GLYPHS.succeeded = GLYPHS.completed;

export function glyph(status) {
  const draw = GLYPHS[status] || GLYPHS.pending;
  return svg("svg", { viewBox: "0 0 16 16", class: "glyph", "aria-hidden": "true", "data-status": status }, draw());
}

/** StatusBadge({status: "failed"}) or with a label other than the status name. */
export function StatusBadge({ status, label, compact = false }) {
  return h("span", { class: compact ? "badge compact" : "badge", "data-status": status },
    glyph(status), h("span", { class: compact ? "sr-only" : "badge-text" }, label || status));
}
