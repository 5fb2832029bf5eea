"""A realistic dashboard state, backdated from `now`: two days of finished recap and
morning jobs (completed, failed at various stages, cancelled), and running jobs at
different stages with genres in every status, one of them stalled and one with a
failed stage awaiting its retry. Deterministic for a given seed."""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from tracker.events import event_from_fields, new_event_id
from tracker.statuses import DEFAULT_STAGES

GENRES = ("politics", "world", "business", "tech", "science", "health", "sports", "culture", "climate", "travel")
USERS = tuple(uuid.uuid5(uuid.NAMESPACE_URL, f"https://example.com/users/{i}") for i in range(1, 4))
FEEDS = tuple(uuid.uuid5(uuid.NAMESPACE_URL, f"https://example.com/feeds/{i}") for i in range(1, 13))
#: Typical seconds per stage (fetch .. persist).
STAGE_SECONDS = (95, 40, 28, 130, 30, 310, 160, 18)
STAGE_ERRORS = {
    "fetch": "feed timeout: 3 of 41 sources did not answer within 30 s",
    "genre": "classifier returned HTTP 503 (model overloaded)",
    "evidence": "evidence store: connection reset by peer",
    "dispatch": "SMTP relay refused: 421 too many concurrent connections",
}


class JobBuilder:
    """One job's events in order; `at` advances on the job's own clock, counted from a
    start time that is fixed when the events are taken (`events(start)`)."""

    def __init__(self, rng: random.Random) -> None:
        self.job_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        self.elapsed = 0.0
        self.rng = rng
        self.steps: list[tuple[float, str, dict[str, Any]]] = []

    def emit(self, type_: str, after: float = 0.0, **fields: Any) -> None:
        self.elapsed += after
        self.steps.append((self.elapsed, type_, fields))

    def events(self, start: datetime) -> list[Any]:
        return [
            event_from_fields(type_, {
                "event_id": str(new_event_id()), "job_id": str(self.job_id), "seq": seq,
                "at": (start + timedelta(seconds=offset)).isoformat(), **fields,
            })
            for seq, (offset, type_, fields) in enumerate(self.steps)
        ]

    def run_stage(self, stage: str, seconds: float, total: int | None, finish: str = "completed") -> None:
        self.emit("stage.started", 0.5, stage=stage, **({"total": total} if total else {}))
        if total:
            for part in (0.3, 0.65):
                self.emit("stage.progress", seconds * 0.33, stage=stage, done=int(total * part))
        if finish == "completed":
            self.emit("stage.completed", seconds * (0.34 if total else 1), stage=stage)
        elif finish == "failed":
            self.emit("stage.failed", seconds * 0.2, stage=stage, error=STAGE_ERRORS.get(stage, "worker crashed"))

    def genres(self, names: tuple[str, ...], outcomes: dict[str, str] | None = None) -> None:
        for name in names:
            outcome = (outcomes or {}).get(name) or self.rng.choices(["succeeded", "partial", "failed"], [14, 3, 1])[0]
            self.emit("genre.status", 1, genre=name, status="running", phase="evidence")
            if outcome == "retry":
                self.emit("genre.status", 4, genre=name, status="failed", error="LLM call timed out after 120 s")
                self.emit("genre.status", 2, genre=name, status="running", phase="clustering")
                outcome = "succeeded"
            fields: dict[str, Any] = {"cluster_count": self.rng.randint(3, 14), "article_count": self.rng.randint(20, 160)}
            if outcome == "failed":
                fields = {"error": "summarizer: context window exceeded (41k tokens)"}
            self.emit("genre.status", 3, genre=name, status=outcome, phase="summarization", **fields)


def articles(rng: random.Random, n: int) -> list[dict[str, str]]:
    return [{"article_id": f"a{i}", "feed_id": str(rng.choice(FEEDS))} for i in range(n)]


def started(b: JobBuilder, rng: random.Random, kind: str = "recap") -> None:
    user = rng.choice([None, None, *USERS]) if kind == "recap" else None
    b.emit("job.started", kind=kind, trigger_source="user" if user else "system",
           **({"user_id": str(user)} if user else {}), genres=list(GENRES) if kind == "recap" else ["world", "politics", "business"],
           window_days=7 if kind == "recap" else 1)


def finished_job(start: datetime, rng: random.Random, kind: str, ending: str) -> list[Any]:
    b = JobBuilder(rng)
    started(b, rng, kind)
    fail_at = rng.choice(["fetch", "genre", "evidence", "dispatch"]) if ending == "failed" else None
    scale = 0.25 if kind == "morning" else rng.uniform(0.7, 1.5)
    b.emit("articles.added", 2, articles=articles(rng, rng.randint(40, 90)))
    for stage, seconds in zip(DEFAULT_STAGES, STAGE_SECONDS):
        if ending == "cancelled" and stage == "select":
            b.emit("job.cancelled", 5, reason="superseded by a newer run")
            return b.events(start)
        b.run_stage(stage, seconds * scale * rng.uniform(0.8, 1.25), rng.randint(200, 2400), "failed" if stage == fail_at else "completed")
        if stage == fail_at:
            b.emit("job.failed", 1, error=STAGE_ERRORS[stage], stage=stage)
            return b.events(start)
        if stage == "evidence":
            b.genres(tuple(rng.sample(GENRES, 6)) if kind == "recap" else ("world", "politics", "business"))
    b.emit("job.completed", 1)
    return b.events(start)


def running_job(now: datetime, rng: random.Random, reached: int, *, quiet: float = 4.0, genre_plan: dict[str, str] | None = None,
                failed_stage: bool = False) -> list[Any]:
    """A job whose stages before `reached` completed and whose stage `reached` is running;
    its last event was `quiet` seconds before now."""
    durations = [s * rng.uniform(0.8, 1.2) for s in STAGE_SECONDS[:reached]]
    b = JobBuilder(rng)
    started(b, rng)
    b.emit("articles.added", 2, articles=articles(rng, rng.randint(50, 120)))
    for stage, seconds in zip(DEFAULT_STAGES, durations):
        b.run_stage(stage, seconds, rng.randint(300, 2400))
    stage = DEFAULT_STAGES[reached]
    total = rng.randint(600, 2000)
    if failed_stage:
        b.emit("stage.started", 1, stage=stage, total=total)
        b.emit("stage.failed", 20, stage=stage, error=STAGE_ERRORS.get(stage, "worker crashed"))
    else:
        b.emit("stage.started", 1, stage=stage, total=total)
        b.emit("stage.progress", 30, stage=stage, done=int(total * rng.uniform(0.25, 0.7)))
    if genre_plan:
        for name, status in genre_plan.items():
            if status == "pending":
                continue
            b.emit("genre.status", 2, genre=name, status="running", phase="evidence")
            if status == "running":
                b.emit("genre.status", 2, genre=name, status="running", phase=rng.choice(["clustering", "summarization"]))
            elif status == "failed":
                b.emit("genre.status", 2, genre=name, status="failed", error="summarizer: upstream returned 502 Bad Gateway")
            else:
                b.emit("genre.status", 2, genre=name, status=status, phase="summarization",
                       cluster_count=rng.randint(3, 12), article_count=rng.randint(15, 140))
    b.emit("job.heartbeat", 1)
    return b.events(now - timedelta(seconds=quiet + b.elapsed))


def dashboard_state(now: datetime, seed: int = 7) -> list[Any]:
    """Every event of the state, jobs in kick-off order (a running job's events come last)."""
    rng = random.Random(seed)
    events: list[Any] = []
    # Two days of history: 36 recap jobs about every 78 minutes, a morning run every 4 hours.
    for n in range(36):
        ending = rng.choices(["completed", "failed", "cancelled"], [16, 3, 1])[0]
        events += finished_job(now - timedelta(hours=47) + timedelta(minutes=78 * n + rng.randint(0, 20)), rng, "recap", ending)
    for n in range(12):
        ending = rng.choices(["completed", "failed"], [12, 1])[0]
        events += finished_job(now - timedelta(hours=46, minutes=30) + timedelta(hours=4 * n), rng, "morning", ending)
    plan = {"politics": "running", "world": "running", "business": "succeeded", "tech": "failed", "science": "partial",
            "health": "succeeded", "sports": "running", "culture": "pending", "climate": "succeeded", "travel": "pending"}
    events += running_job(now, rng, 5, genre_plan=plan)
    events += running_job(now, rng, 2)
    events += running_job(now, rng, 0, quiet=2)
    events += running_job(now, rng, 4, quiet=9 * 60)  # stalled: nothing heard for 9 minutes
    events += running_job(now, rng, 6, genre_plan={g: "succeeded" for g in GENRES[:6]}, failed_stage=True)
    return events
