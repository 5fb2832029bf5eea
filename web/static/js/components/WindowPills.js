// The time window as a radio group: 4h, 24h, 3d, 7d (arrow keys move between them).
import { h } from "../dom.js";
import { WINDOWS } from "../format.js";

export function WindowPills({ selected }) {
  return h("div", { class: "pills", role: "radiogroup", "aria-label": "Time window", id: "window-pills" },
    WINDOWS.map((w) => h("button", {
      type: "button", class: "pill", role: "radio", "data-action": "window", "data-window": w.seconds,
      "aria-checked": String(w.seconds === selected), tabindex: w.seconds === selected ? 0 : -1,
    }, w.label)));
}
