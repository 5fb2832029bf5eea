// One running job: who started it, how long it has run, its pipeline and its genres.
import { h } from "../dom.js";
import * as fmt from "../format.js";
import { genresOf, stagesOf } from "../store.js";
import { GenreProgressList } from "./GenreProgressList.js";
import { PipelineProgress } from "./PipelineProgress.js";
import { StatusBadge } from "./StatusBadge.js";

const PHASES = ["evidence", "clustering", "summarization"];

/** The phase the genres as a whole are in: the least advanced unfinished genre's. */
function genrePhase(genres) {
  const open = genres.filter((g) => g.status === "running" || g.status === "pending");
  if (!open.length || !genres.some((g) => g.status !== "pending")) return null;
  return PHASES[Math.min(...open.map((g) => Math.max(0, PHASES.indexOf(g.phase))))];
}

export function ActiveJobCard({ entry, now, stalled }) {
  const job = entry.job;
  const id = job.job_id;
  const stages = stagesOf(entry);
  const genres = genresOf(entry);
  const done = stages.filter((s) => s.status === "completed").length;
  const current = stages.find((s) => s.status === "running");
  const elapsed = (now - Date.parse(job.kicked_at)) / 1000;
  const quiet = (now - Date.parse(job.last_event_at)) / 1000;
  return h("article", {
    class: "job-card", "data-key": id, "data-job-id": id, "data-status": stalled ? "stalled" : "running",
    "aria-labelledby": `job-${id}`,
  },
    h("header", { class: "job-card-head" },
      StatusBadge({ status: stalled ? "stalled" : "running" }),
      h("h3", { class: "job-title", id: `job-${id}` },
        h("span", { class: "mono", title: id }, fmt.shortId(id)),
        h("span", { class: "tag" }, job.kind),
        h("span", { class: "sr-only" }, `, stage ${current ? current.stage : "between stages"}`)),
      h("span", { class: "elapsed", title: "Elapsed since kick-off", "aria-label": `elapsed ${fmt.duration(elapsed)}` },
        fmt.clock(elapsed))),
    h("dl", { class: "facts" },
      fact("Source", job.trigger_source === "user" ? `user ${fmt.shortId(job.user_id)}` : "system", job.user_id),
      fact("Started", fmt.timeOfDay(job.kicked_at), fmt.absolute(job.kicked_at)),
      fact("Stage", `${done}/${stages.length}${current ? ` ${current.stage}` : ""}`),
      fact("Articles", fmt.count(job.article_count)),
      fact("Last event", fmt.ago(job.last_event_at, now), fmt.absolute(job.last_event_at), stalled || quiet > 60 ? "warn" : null)),
    job.note ? h("p", { class: "note" }, job.note) : null,
    PipelineProgress({ jobId: id, stages, now }),
    GenreProgressList({ jobId: id, genres, phase: genrePhase(genres) }));
}

function fact(label, value, title, tone) {
  return h("div", { class: tone ? `fact ${tone}` : "fact" },
    h("dt", null, label), h("dd", { title: title || null }, value));
}
