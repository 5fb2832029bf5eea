// Says honestly how fresh the view is: pushed live, polled, or not updating.
import { h } from "../dom.js";

const TEXT = {
  connecting: ["Connecting…", "Opening the live connection"],
  live: ["Live", "Changes are pushed as they happen"],
  polling: ["Polling", "The live connection is down: refreshing every 5 s while it reconnects"],
  offline: ["Offline", "The server cannot be reached; retrying"],
  paused: ["Paused", "Updates are paused; press Resume"],
};

export function ConnectionIndicator({ mode, paused, retryIn, message }) {
  const shown = paused ? "paused" : mode;
  const [text, title] = TEXT[shown];
  const every = !paused && mode === "polling" ? " · every 5 s" : "";
  // The countdown changes every second: kept out of the live region's announcements.
  const retry = !paused && (mode === "offline" || mode === "polling") && retryIn > 0 ? ` · retry in ${Math.ceil(retryIn)} s` : "";
  return h("div", { id: "connection", class: "conn", role: "status", "aria-live": "polite", "data-mode": shown, title: message ? `${title} (${message})` : title },
    h("span", { class: "conn-dot", "aria-hidden": "true" }),
    h("span", { class: "conn-text" }, text),
    h("span", { class: "conn-extra" }, every),
    h("span", { class: "conn-extra", "aria-hidden": "true" }, retry));
}
