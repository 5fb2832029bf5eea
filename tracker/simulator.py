"""A simulated recap pipeline that reports through the tracker client exactly as
pipeline code would: `recap-status simulate`, the demo, the tests and the benchmarks.

Each job is planned up front from a seeded random generator (so a seed gives the
same scenario) and then played in real time divided by `speed`:

- recap jobs (system or user-triggered) arrive at `rate` per minute of real time;
  a morning run (`kind=morning`) starts every half hour of simulated time;
- the eight stages run in order with plausible item counts and durations; the
  fetch stage reports articles from several feeds of several users;
- the evidence and dispatch stages fan out to a dozen genres, a few at a time,
  through the evidence, clustering and summarization phases, with occasional
  retries, `partial` results and failed genres;
- now and then a job fails (a stage raises), and now and then one stalls: its
  worker dies and nothing more is heard from it, not even heartbeats.

Every job runs in its own `Tracker` on a shared Redis client, like a worker
process of its own. `Simulator.run()` returns, per job, what it meant the
projection to show (`JobOutcome`), so a test can compare it with the tracker's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from .client import Job, Stage, Tracker, emit_event
from .events import JobFailed, new_event_id, utcnow
from .settings import Settings
from .statuses import (
    DEFAULT_STAGES,
    TERMINAL_GENRE_STATUSES,
    GenrePhase,
    GenreStatus,
    JobKind,
    JobStatus,
    StageStatus,
    TriggerSource,
)

GENRES = (
    "politics", "world", "business", "economy", "tech", "science",
    "health", "sports", "entertainment", "culture", "travel", "food",
)
_NAMESPACE = uuid.UUID("5d1f3c1e-6a0b-4f4e-9a53-2a7c2f0e9b11")
#: Stable ids, so that the user filter means the same people across runs.
USERS = tuple(uuid.uuid5(_NAMESPACE, f"user-{i}") for i in range(1, 7))
#: Each user's feeds (2 to 4 of them).
FEEDS = {user: tuple(uuid.uuid5(_NAMESPACE, f"feed-{u}-{f}") for f in range(2 + u % 3)) for u, user in enumerate(USERS)}
_FANOUT_STAGES = ("evidence", "dispatch")
_GENRES_AT_ONCE = 4
_STEPS = 25  # progress steps per stage
_STAGE_ERRORS = {
    "fetch": "feed server timed out after 30 s",
    "preprocess": "tokenizer worker exited with code 137",
    "dedup": "embedding service returned 503",
    "genre": "classifier model failed to load",
    "select": "no articles left after filtering",
    "evidence": "vector index is read-only",
    "dispatch": "LLM quota exhausted",
    "persist": "could not write the recap: deadlock detected",
}


class SimulatedFailure(RuntimeError):
    """Raised inside a stage to make a job fail, as a real pipeline error would."""


class _WorkerDied(Exception):
    """The worker running a job is gone: nothing more is emitted for it."""


@dataclass(frozen=True)
class SimOptions:
    """How much to simulate, and how fast.

    rate: recap jobs started per minute of real time; concurrency: most jobs
    running at once (arrivals wait for a slot); speed: simulated seconds per
    real second; jobs: stop starting jobs after this many (morning runs
    included); duration: stop starting jobs after this many real seconds;
    morning_every: simulated seconds between morning runs (0: none);
    failure_rate / stall_rate: share of jobs that fail / stall; reap_after:
    real seconds after which the orchestrator fails a stalled job (None: never).
    """

    rate: float = 5.0
    concurrency: int = 4
    speed: float = 30.0
    jobs: int | None = None
    duration: float | None = None
    seed: int | None = None
    morning_every: float = 1800.0
    failure_rate: float = 0.04
    stall_rate: float = 0.02
    reap_after: float | None = None


@dataclass
class GenreOutcome:
    """A genre's final status, and how many attempts it took."""

    status: str
    attempts: int


@dataclass
class JobOutcome:
    """What the simulator meant the projection to show for one job.

    status: the job's final status (`running` for a stalled job); stages: the
    status of every stage reached; genres: each genre's outcome; articles: the
    number of distinct articles reported.
    """

    job_id: uuid.UUID
    kind: str
    trigger_source: str
    user_id: uuid.UUID | None
    status: str = JobStatus.RUNNING.value
    stalled: bool = False
    failed_stage: str | None = None
    stages: dict[str, str] = field(default_factory=dict)
    genres: dict[str, GenreOutcome] = field(default_factory=dict)
    articles: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class SimulationReport:
    """The seed used, what every job that started meant to produce, and the events sent."""

    seed: int
    outcomes: list[JobOutcome]
    events_sent: int


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class StagePlan:
    name: str
    total: int
    seconds: float  # simulated, for the whole stage (fan-out stages: per genre, see GenrePlan)


@dataclass(frozen=True)
class GenrePlan:
    name: str
    articles: int
    clusters: int
    evidence_s: float
    clustering_s: float
    summarization_s: float
    attempts: int  # clustering attempts; all but the last time out
    final: GenreStatus


@dataclass(frozen=True)
class JobPlan:
    kind: JobKind
    user_id: uuid.UUID | None
    window_days: int
    articles: list[dict[str, Any]]
    stages: list[StagePlan]
    genres: list[GenrePlan]
    fail_at: tuple[str, float] | None = None  # (stage, fraction of it done)
    stall_at: tuple[str, float] | None = None


def plan_job(rng: random.Random, kind: JobKind, options: SimOptions) -> JobPlan:
    """A job's whole script, drawn from `rng`."""
    morning = kind is JobKind.MORNING
    user = None if morning or rng.random() < 0.6 else rng.choice(USERS)
    feeds = [(f, u) for u in ([user] if user else USERS) for f in FEEDS[u]]
    n = rng.randint(40, 250) if morning else rng.randint(600, 2400)
    articles = [
        {"article_id": f"{rng.getrandbits(48):012x}", "feed_id": str(feed), "original_user_id": str(owner)}
        for feed, owner in (rng.choice(feeds) for _ in range(n))
    ]
    unique = int(n * rng.uniform(0.75, 0.92))
    selected = max(1, int(unique * rng.uniform(0.4, 0.6)))
    genres = [] if morning else [_plan_genre(rng, g, selected) for g in GENRES]
    fanout = len(genres) or selected
    stages = [
        StagePlan("fetch", n, n * rng.uniform(0.05, 0.1)),
        StagePlan("preprocess", n, n * rng.uniform(0.02, 0.04)),
        StagePlan("dedup", n, rng.uniform(20, 60)),
        StagePlan("genre", unique, unique * rng.uniform(0.02, 0.05)),
        StagePlan("select", unique, rng.uniform(15, 40)),
        StagePlan("evidence", fanout, rng.uniform(20, 60)),
        StagePlan("dispatch", fanout, rng.uniform(30, 90)),
        StagePlan("persist", fanout, rng.uniform(10, 30)),
    ]
    fail_at = stall_at = None
    luck = rng.random()
    if luck < options.failure_rate:
        fail_at = (rng.choice(DEFAULT_STAGES), rng.uniform(0.1, 0.9))
    elif luck < options.failure_rate + options.stall_rate:
        sequential = [s for s in DEFAULT_STAGES if s not in _FANOUT_STAGES]
        stall_at = (rng.choice(sequential), rng.uniform(0.1, 0.9))
    return JobPlan(kind, user, 1 if morning else 7, articles, stages, genres, fail_at, stall_at)


def _plan_genre(rng: random.Random, name: str, selected: int) -> GenrePlan:
    luck = rng.random()
    final = GenreStatus.FAILED if luck < 0.04 else GenreStatus.PARTIAL if luck < 0.12 else GenreStatus.SUCCEEDED
    retries = 1 if rng.random() < 0.1 else 0
    return GenrePlan(
        name=name,
        articles=max(1, int(selected / len(GENRES) * rng.uniform(0.3, 1.7))),
        clusters=rng.randint(3, 14),
        evidence_s=rng.uniform(10, 40),
        clustering_s=rng.uniform(20, 60),
        summarization_s=rng.uniform(30, 90),
        attempts=1 + retries + (final is GenreStatus.FAILED),
        final=final,
    )


# --------------------------------------------------------------------------- playing one job


class _Play:
    """Plays one job's plan through the client, recording each state it reports."""

    def __init__(self, plan: JobPlan, tracker: Tracker, job: Job, outcome: JobOutcome, speed: float) -> None:
        self.plan, self.tracker, self.job, self.outcome, self.speed = plan, tracker, job, outcome, speed
        self.reported_articles: set[str] = set()

    async def sleep(self, simulated_seconds: float) -> None:
        await asyncio.sleep(simulated_seconds / self.speed)

    async def run(self) -> None:
        for stage in self.plan.stages:
            async with self.stage(stage) as reporter:
                if stage.name in _FANOUT_STAGES and self.plan.genres:
                    await self.fan_out(stage, reporter)
                else:
                    await self.work_through(stage, reporter)
                if self.plan.fail_at and self.plan.fail_at[0] == stage.name and stage.name in _FANOUT_STAGES:
                    raise SimulatedFailure(_STAGE_ERRORS[stage.name])
            if stage.name == "genre":
                for genre in self.plan.genres:
                    await self.genre(genre.name, GenreStatus.PENDING)

    @contextlib.asynccontextmanager
    async def stage(self, plan: StagePlan) -> AsyncIterator[Stage]:
        self.outcome.stages[plan.name] = StageStatus.RUNNING.value
        try:
            async with self.job.stage(plan.name, total=plan.total) as reporter:
                yield reporter
        except _WorkerDied:
            raise  # nothing was reported: the stage stays running
        except BaseException:
            self.outcome.stages[plan.name] = StageStatus.FAILED.value
            raise
        self.outcome.stages[plan.name] = StageStatus.COMPLETED.value

    async def work_through(self, plan: StagePlan, reporter: Stage) -> None:
        """Items done in steps; fetch reports its articles page by page."""
        steps = min(_STEPS, plan.total) or 1
        fail = _fraction(self.plan.fail_at, plan.name)
        stall = _fraction(self.plan.stall_at, plan.name)
        for step in range(steps):
            if fail is not None and step >= fail * steps:
                raise SimulatedFailure(_STAGE_ERRORS[plan.name])
            if stall is not None and step >= stall * steps:
                await self.die()
            await self.sleep(plan.seconds / steps)
            lo, hi = plan.total * step // steps, plan.total * (step + 1) // steps
            if plan.name == "fetch":
                await self.report_articles(self.plan.articles[lo:hi])
            reporter.advance(hi - lo)

    async def fan_out(self, plan: StagePlan, reporter: Stage) -> None:
        """The genres, a few at a time; the stage counts finished genres."""
        slots = asyncio.Semaphore(_GENRES_AT_ONCE)
        work = self.evidence if plan.name == "evidence" else self.dispatch

        async def one(genre: GenrePlan) -> None:
            async with slots:
                await work(genre)
                reporter.advance()

        async with asyncio.TaskGroup() as group:
            for genre in self.plan.genres:
                group.create_task(one(genre))

    async def evidence(self, genre: GenrePlan) -> None:
        await self.genre(genre.name, GenreStatus.RUNNING, GenrePhase.EVIDENCE, article_count=genre.articles)
        await self.sleep(genre.evidence_s)

    async def dispatch(self, genre: GenrePlan) -> None:
        for attempt in range(1, genre.attempts + 1):
            await self.genre(genre.name, GenreStatus.RUNNING, GenrePhase.CLUSTERING)
            await self.sleep(genre.clustering_s)
            last = attempt == genre.attempts
            if not last or genre.final is GenreStatus.FAILED:
                error = f"clustering timed out (attempt {attempt} of {genre.attempts})"
                await self.genre(genre.name, GenreStatus.FAILED, GenrePhase.CLUSTERING, error=error)
                if last:
                    return
                await self.sleep(5)  # back off before the retry
        await self.genre(genre.name, GenreStatus.RUNNING, GenrePhase.SUMMARIZATION, cluster_count=genre.clusters)
        await self.sleep(genre.summarization_s)
        error = None
        if genre.final is GenreStatus.PARTIAL:
            error = f"{max(1, genre.clusters // 3)} of {genre.clusters} clusters could not be summarized"
        await self.genre(genre.name, genre.final, GenrePhase.SUMMARIZATION, error=error)

    async def genre(self, name: str, status: GenreStatus, phase: GenrePhase | None = None, **fields: Any) -> None:
        previous = self.outcome.genres.get(name)
        attempts = previous.attempts if previous else 0
        if status is GenreStatus.RUNNING and (previous is None or previous.status != GenreStatus.RUNNING.value):
            attempts += 1
        elif status in TERMINAL_GENRE_STATUSES:
            attempts = max(attempts, 1)
        self.outcome.genres[name] = GenreOutcome(status.value, attempts)
        await self.job.genre(name, status.value, phase=phase.value if phase else None, **fields)

    async def report_articles(self, articles: list[dict[str, Any]]) -> None:
        await self.job.articles(articles)
        self.reported_articles.update(a["article_id"] for a in articles)
        self.outcome.articles = len(self.reported_articles)

    async def die(self) -> None:
        """The worker is gone: what it sent is in Redis, then silence (no heartbeats either)."""
        self.outcome.stalled = True
        await self.tracker.close()
        raise _WorkerDied


def _fraction(at: tuple[str, float] | None, stage: str) -> float | None:
    return at[1] if at and at[0] == stage else None


# --------------------------------------------------------------------------- the simulator


class Simulator:
    """Starts planned jobs on schedule and plays them; see the module docstring.

    `redis` is a redis.asyncio client shared by the jobs' trackers; `on_job`
    is called with each job's outcome when it ends.
    """

    def __init__(
        self,
        redis: Any,
        stream: str,
        options: SimOptions = SimOptions(),
        on_job: Callable[[JobOutcome], None] | None = None,
        **client_options: Any,
    ) -> None:
        self.redis, self.stream, self.options, self.on_job = redis, stream, options, on_job
        self.client_options = client_options
        self.seed = options.seed if options.seed is not None else random.randrange(2**32)
        self.outcomes: list[JobOutcome] = []
        self.events_sent = 0
        self._counts = {kind: 0 for kind in JobKind}
        self._running: set[asyncio.Task[None]] = set()
        self._reapers: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()

    async def run(self, stop: asyncio.Event | None = None) -> SimulationReport:
        """Start jobs until `jobs` or `duration` is reached, then wait for the running
        ones to end (and for stalled ones to be reaped). When `stop` is set,
        running jobs are cancelled (they report job.cancelled) instead."""
        stop = stop or asyncio.Event()
        try:
            await self._schedule(stop)
            while (self._running or self._reapers) and not stop.is_set():
                await self._idle(stop, None)
        finally:
            pending = self._running | self._reapers
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return SimulationReport(self.seed, self.outcomes, self.events_sent)

    async def _schedule(self, stop: asyncio.Event) -> None:
        o = self.options
        loop = asyncio.get_running_loop()
        arrivals = random.Random(f"{self.seed}/arrivals")
        start = loop.time()
        next_at = {
            JobKind.RECAP: start if o.rate > 0 else float("inf"),
            JobKind.MORNING: start if o.morning_every > 0 else float("inf"),
        }
        started = 0
        while not stop.is_set() and (o.jobs is None or started < o.jobs):
            now = loop.time()
            if o.duration is not None and now - start >= o.duration:
                return
            kind = min(next_at, key=next_at.__getitem__)
            if next_at[kind] == float("inf"):
                return
            if next_at[kind] > now or len(self._running) >= o.concurrency:
                wait = None if len(self._running) >= o.concurrency else next_at[kind] - now
                if o.duration is not None:
                    wait = min(wait if wait is not None else o.duration, start + o.duration - now)
                await self._idle(stop, wait)
                continue
            self._start(kind)
            started += 1
            if kind is JobKind.RECAP:
                next_at[kind] += arrivals.expovariate(o.rate / 60)
            else:
                next_at[kind] += o.morning_every / o.speed

    def _start(self, kind: JobKind) -> None:
        index = self._counts[kind]
        self._counts[kind] += 1
        plan = plan_job(random.Random(f"{self.seed}/{kind.value}/{index}"), kind, self.options)
        task = asyncio.create_task(self._play(plan), name=f"simulated-{kind.value}-{index}")
        self._running.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._reapers.discard(task)
        self._slot_freed.set()

    async def _idle(self, stop: asyncio.Event, timeout: float | None) -> None:
        """Until `timeout` passes, a job ends, or `stop` is set."""
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._slot_freed.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._slot_freed.clear()

    async def _play(self, plan: JobPlan) -> None:
        tracker = Tracker(self.redis, self.stream, **self.client_options)
        await tracker.start()
        began = time.monotonic()
        job = tracker.job(kind=plan.kind.value, user_id=plan.user_id, window_days=plan.window_days,
                          genres=[g.name for g in plan.genres] or None)
        trigger = TriggerSource.USER if plan.user_id else TriggerSource.SYSTEM
        outcome = JobOutcome(job.job_id, plan.kind.value, trigger.value, plan.user_id)
        try:
            async with job:
                await _Play(plan, tracker, job, outcome, self.options.speed).run()
            outcome.status = JobStatus.COMPLETED.value
        except SimulatedFailure:
            outcome.status = JobStatus.FAILED.value
            outcome.failed_stage = next(s for s, st in outcome.stages.items() if st == StageStatus.FAILED.value)
        except _WorkerDied:
            # It stays running (shown stalled after RECAP_STALL_AFTER) until the orchestrator gives up on it.
            if self.options.reap_after is not None:
                reaper = asyncio.create_task(self._reap(outcome))
                self._reapers.add(reaper)
                reaper.add_done_callback(self._ended)
        except asyncio.CancelledError:
            outcome.status = JobStatus.CANCELLED.value
            raise
        finally:
            await tracker.close()
            outcome.seconds = time.monotonic() - began
            self.events_sent += tracker.stats.sent
            self.outcomes.append(outcome)
            if self.on_job:
                self.on_job(outcome)

    async def _reap(self, outcome: JobOutcome) -> None:
        """Fail a stalled job after `reap_after` seconds, as an operator would with
        `recap-status emit job.failed` (a millisecond clock as seq sorts it last)."""
        await asyncio.sleep(self.options.reap_after or 0)
        stage = next((name for name, status in outcome.stages.items() if status == StageStatus.RUNNING.value), None)
        error = f"worker lost: no heartbeat for {self.options.reap_after:g} s"
        event = JobFailed(event_id=new_event_id(), job_id=outcome.job_id, seq=time.time_ns() // 1_000_000,
                          at=utcnow(), error=error, stage=stage)
        await emit_event(self.redis, self.stream, event)
        outcome.status, outcome.failed_stage = JobStatus.FAILED.value, stage
        if stage:
            outcome.stages[stage] = StageStatus.FAILED.value


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser, *, demo: bool = False) -> None:
    """Options shared by `recap-status simulate` and `recap-status demo`."""
    d = SimOptions()
    parser.add_argument("--rate", type=_non_negative, default=d.rate, metavar="N",
                        help=f"recap jobs started per minute of real time (default {d.rate:g})")
    parser.add_argument("--concurrency", type=_positive_int, default=d.concurrency, metavar="N",
                        help=f"most jobs running at once (default {d.concurrency})")
    parser.add_argument("--speed", type=_positive, default=d.speed, metavar="X",
                        help=f"simulated seconds per real second (default {d.speed:g}; a recap job takes ~13 min unsped)")
    parser.add_argument("--seed", type=int, default=None, help="seed for a repeatable scenario (default random)")
    parser.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                        help="start this many jobs, then stop starting (default: no limit)")
    parser.add_argument("--duration", type=_positive, default=None, metavar="SECONDS",
                        help="stop starting jobs after this many seconds (default: no limit)")
    parser.add_argument("--no-morning", action="store_true", help="no half-hourly morning runs")
    if not demo:
        parser.add_argument("--quiet", action="store_true", help="no line per finished job")


def options_from(args: argparse.Namespace) -> SimOptions:
    return SimOptions(
        rate=args.rate, concurrency=args.concurrency, speed=args.speed, seed=args.seed,
        jobs=args.jobs, duration=args.duration, morning_every=0 if args.no_morning else SimOptions.morning_every,
    )


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """`recap-status simulate`: emit simulated jobs to REDIS_URL until done or Ctrl-C."""
    import redis.asyncio as aioredis

    from .runner import require, stop_on_signals

    require(settings, "redis_url")
    stop = asyncio.Event()
    stop_on_signals(stop)
    options = options_from(args)
    redis = aioredis.Redis.from_url(settings.redis_url)
    simulator = Simulator(redis, settings.events_stream, options, on_job=None if args.quiet else _print_job)
    print(f"simulating on {settings.events_stream} (seed {simulator.seed}, speed {options.speed:g}x); Ctrl-C stops",
          flush=True)
    try:
        report = await simulator.run(stop)
    finally:
        await redis.aclose()
    print(summary(report), flush=True)
    return 0


def summary(report: SimulationReport) -> str:
    """One line: how many jobs ended how, and how many events were sent."""
    counts: dict[str, int] = {}
    for o in report.outcomes:
        key = "stalled" if o.stalled else o.status
        counts[key] = counts.get(key, 0) + 1
    ended = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
    return f"{len(report.outcomes)} jobs ({ended}); {report.events_sent:,} events sent; seed {report.seed}"


def _print_job(o: JobOutcome) -> None:
    genres = {}
    for g in o.genres.values():
        genres[g.status] = genres.get(g.status, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(genres.items()))
    status = "stalled" if o.stalled else o.status + (f" in {o.failed_stage}" if o.failed_stage else "")
    who = f"user {str(o.user_id)[:8]}" if o.user_id else "system"
    print(f"job {o.job_id} {o.kind:<7} {who:<13} {status:<18} {o.seconds:6.1f} s  {o.articles:5} articles"
          + (f"  genres: {parts}" if parts else ""), flush=True)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value
