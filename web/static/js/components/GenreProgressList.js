// Per-genre progress of one job, running and failed genres first.
import { h } from "../dom.js";
import * as fmt from "../format.js";
import { StatusBadge } from "./StatusBadge.js";

const ORDER = { running: 0, failed: 1, partial: 2, pending: 3, succeeded: 4 };

export function sortGenres(genres) {
  return [...genres].sort((a, b) => (ORDER[a.status] ?? 5) - (ORDER[b.status] ?? 5) || a.genre.localeCompare(b.genre));
}

export function genreSummary(genres) {
  const by = (status) => genres.filter((g) => g.status === status).length;
  const done = by("succeeded") + by("partial") + by("failed");
  const parts = [`${done}/${genres.length} done`];
  for (const status of ["running", "failed", "partial"]) if (by(status)) parts.push(`${by(status)} ${status}`);
  return parts.join(" · ");
}

/** Genres that have reported, in a table; those still waiting, on one line. */
export function GenreProgressList({ jobId, genres, phase, finished = false }) {
  if (!genres.length) return h("p", { class: "muted genres-empty" }, "No genres reported yet");
  const title = `genres-${jobId}`;
  const started = sortGenres(genres.filter((g) => g.status !== "pending"));
  const waiting = genres.filter((g) => g.status === "pending").map((g) => g.genre).sort();
  return h("div", { class: "genres" },
    h("p", { class: "genres-summary", id: title },
      h("span", { class: "genres-title" }, "Genres"), " ", genreSummary(genres), phase ? ` · phase ${phase}` : ""),
    started.length ? h("div", { class: "genres-scroll", role: "region", tabindex: 0, "aria-labelledby": title },
      h("table", { class: "genre-table" },
        h("thead", null, h("tr", null,
          h("th", { scope: "col" }, "Genre"), h("th", { scope: "col" }, "Status"), h("th", { scope: "col", class: "col-phase" }, "Phase"),
          h("th", { scope: "col", class: "num" }, "Clusters"), h("th", { scope: "col", class: "num" }, "Articles"),
          h("th", { scope: "col", class: "num col-tries" }, h("abbr", { title: "Attempts" }, "Tries")))),
        h("tbody", null, started.flatMap((g) => GenreRows(g))))) : null,
    waiting.length ? h("p", { class: "genres-waiting", "data-status": "pending" },
      h("span", { class: "waiting-label" }, `${finished ? "Not run" : "Waiting"} (${waiting.length})`), " ", waiting.join(" · ")) : null);
}

function GenreRows(g) {
  const row = h("tr", { "data-key": `g:${g.genre}`, "data-status": g.status, class: g.error ? "genre has-error" : "genre" },
    h("th", { scope: "row", class: "genre-name" }, g.genre),
    h("td", null, StatusBadge({ status: g.status })),
    h("td", { class: "muted col-phase" }, g.phase || fmt.DASH),
    h("td", { class: "num" }, fmt.count(g.cluster_count)),
    h("td", { class: "num" }, fmt.count(g.article_count)),
    h("td", { class: g.attempts > 1 ? "num col-tries retried" : "num col-tries" }, fmt.count(g.attempts)));
  if (!g.error) return [row];
  return [row, h("tr", { "data-key": `e:${g.genre}`, class: "genre-error" },
    h("td", { colspan: 6 }, h("span", { class: "error-text" }, g.error)))];
}
