"""Progress reporting for pipeline code.

    async with Tracker.connect(redis_url) as tracker:
        async with tracker.job(kind="recap", trigger_source="user", user_id=uid) as job:
            async with job.stage("fetch", total=1200) as stage:
                stage.advance(100)
            await job.genre("tech", status="running", phase="clustering")

`SyncTracker` offers the same shape with plain context managers for synchronous
code; it runs the sender on an event loop in a daemon thread.

Reporting never blocks or raises into the pipeline. Every call validates the
event (as the tracker will), assigns `event_id`, the job's next `seq` and `at`,
and appends it to an in-memory buffer; a background sender drains the buffer to
the Redis stream in pipelined batches, in order, retrying with backoff while
Redis is down. The buffer is bounded: when it is full the oldest progress and
heartbeat events are dropped; state changes are never dropped. Re-sent events
keep their `event_id`, so the tracker applies them once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from .events import (
    EVENT_FIELD,
    Article,
    ArticlesAdded,
    Event,
    GenreStatusChanged,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobHeartbeat,
    JobStarted,
    StageCompleted,
    StageFailed,
    StageProgress,
    StageStarted,
    decode_event,
    encode_event,
    new_event_id,
    utcnow,
)

__all__ = ["Article", "Job", "Stage", "SyncJob", "SyncTracker", "Tracker", "TrackerStats", "emit_event"]

log = logging.getLogger(__name__)

DEFAULT_STREAM = "recap:events"
#: Events the buffer may drop when full (newer ones supersede them).
_DROPPABLE = (StageProgress, JobHeartbeat)
#: Longest free text an event may carry (events.Text).
_MAX_TEXT = 8_192
_MIN_BACKOFF = 0.1
_LINGER = 0.002
#: Articles per `articles.added` event, and a size cap well under the tracker's
#: default RECAP_MAX_EVENT_BYTES (64 KiB): 500 articles with two UUIDs are ~64 KB.
_ARTICLES_PER_EVENT = 500
_ARTICLES_BYTES_PER_EVENT = 48 * 1024

_article_encoder = msgspec.json.Encoder()
F = TypeVar("F", bound=Callable[..., Any])


async def emit_event(redis: Any, stream: str, event: Event) -> bytes:
    """XADD one event to `stream` (field `event`, no MAXLEN); returns the entry id."""
    entry_id = await redis.xadd(stream, {EVENT_FIELD: encode_event(event)})
    return entry_id.encode() if isinstance(entry_id, str) else entry_id


@dataclass(frozen=True)
class TrackerStats:
    """Counters since the tracker was created.

    emitted: valid events accepted; sent: events written to Redis (each once);
    dropped: progress/heartbeat events dropped because the buffer was full;
    pending: events not yet written; retries: failed send attempts;
    invalid: events rejected by validation (logged, never sent);
    lost: events given up on at close, or emitted after close.
    """

    emitted: int
    sent: int
    dropped: int
    pending: int
    retries: int
    invalid: int
    lost: int


def _never_raise(method: F) -> F:
    """Reporting must not break the pipeline: log our own failures instead of raising them."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception:
            log.exception("tracker client: %s failed; the event is not reported", method.__name__)
            return None

    return wrapper  # type: ignore[return-value]


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= _MAX_TEXT:
        return text
    return text[: _MAX_TEXT - 1] + "…"


def _describe(exc: BaseException) -> str:
    """`TypeName: message`, for job.failed / stage.failed."""
    try:
        message = str(exc)
    except Exception:
        message = ""
    name = type(exc).__name__
    return _clip(f"{name}: {message}" if message else name) or name


# --------------------------------------------------------------------------- buffer


class _Entry:
    __slots__ = ("data", "droppable", "dropped")

    def __init__(self, data: bytes, droppable: bool) -> None:
        self.data = data
        self.droppable = droppable
        self.dropped = False


class _Buffer:
    """FIFO of encoded events, bounded by dropping the oldest droppable entries.

    Not thread-safe: the emitter holds its lock around every call. Dropped
    entries stay in the queue as tombstones (skipped on take) so that a drop is
    O(1); the queue is compacted when tombstones outnumber live entries.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._queue: deque[_Entry] = deque()
        # Exactly the queued, not dropped, droppable entries, in queue order.
        self._droppable: deque[_Entry] = deque()
        self._live = 0
        self._tombstones = 0

    def __len__(self) -> int:
        return self._live

    def push(self, entry: _Entry) -> int:
        """Append `entry`; returns how many events were dropped to stay in bounds."""
        dropped = 0
        if self._live >= self._size:
            if self._drop_oldest():
                dropped = 1
            elif entry.droppable:
                return 1
            # else: only state changes are buffered; they are never dropped, so
            # the buffer grows past its bound.
        self._queue.append(entry)
        if entry.droppable:
            self._droppable.append(entry)
        self._live += 1
        return dropped

    def take(self, max_count: int, max_bytes: int) -> list[_Entry]:
        """Remove and return the oldest entries, up to `max_count` / about `max_bytes`."""
        batch: list[_Entry] = []
        size = 0
        while self._queue and len(batch) < max_count and size < max_bytes:
            entry = self._queue.popleft()
            if entry.dropped:
                self._tombstones -= 1
                continue
            batch.append(entry)
            size += len(entry.data)
            if entry.droppable:
                self._droppable.popleft()  # it is this entry (same order)
        self._live -= len(batch)
        return batch

    def requeue(self, batch: list[_Entry]) -> int:
        """Put a batch that failed to send back in front; returns how many were dropped."""
        for entry in reversed(batch):
            self._queue.appendleft(entry)
            if entry.droppable:
                self._droppable.appendleft(entry)
        self._live += len(batch)
        dropped = 0
        while self._live > self._size and self._drop_oldest():
            dropped += 1
        return dropped

    def _drop_oldest(self) -> bool:
        if not self._droppable:
            return False
        self._droppable.popleft().dropped = True
        self._live -= 1
        self._tombstones += 1
        if self._tombstones > max(self._live, 1_000):
            self._queue = deque(e for e in self._queue if not e.dropped)
            self._tombstones = 0
        return True


# --------------------------------------------------------------------------- emitter


class _Emitter:
    """The shared core: validates and buffers events (any thread), sends them (its loop)."""

    def __init__(
        self,
        redis: Any,
        stream: str,
        *,
        owns_redis: bool,
        buffer_size: int,
        progress_interval: float,
        heartbeat_interval: float,
        close_timeout: float,
        max_backoff: float,
        batch_size: int,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.progress_interval = progress_interval
        self._owns_redis = owns_redis
        self._heartbeat_interval = heartbeat_interval
        self._close_timeout = close_timeout
        self._max_backoff = max_backoff
        self._batch_size = batch_size

        self._lock = threading.Lock()
        self._buffer = _Buffer(buffer_size)
        self._in_flight = 0
        self._open_jobs: set[_JobBase] = set()
        self._counts = dict.fromkeys(("emitted", "sent", "dropped", "retries", "invalid", "lost"), 0)
        self._drops_unreported = 0
        self._sender_idle = False
        self._closing = False
        self._closed = False

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wakeup: asyncio.Event | None = None
        self._kick: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- producer side (any thread) --

    def emit(self, job: _JobBase, cls: type[Event], fields: Mapping[str, Any], *, terminal: bool = False) -> bool:
        """Validate, number and buffer one event of `job`. Never raises; False if not buffered."""
        event_id, at = new_event_id(), utcnow()
        wake = False
        try:
            with self._lock:
                if job.terminated:
                    return False
                if self._closed:
                    self._counts["lost"] += 1
                    return False
                event = cls(event_id=event_id, job_id=job.job_id, seq=job.next_seq, at=at, **fields)
                data = encode_event(event)
                decode_event(data)  # reject here what the tracker would dead-letter
                job.next_seq += 1
                if terminal:
                    job.terminated = True
                dropped = self._buffer.push(_Entry(data, isinstance(event, _DROPPABLE)))
                self._counts["emitted"] += 1
                if dropped:
                    self._note_drops(dropped)
                wake, self._sender_idle = self._sender_idle, False
        except Exception as exc:
            with self._lock:
                self._counts["invalid"] += 1
            log.error("tracker client: not reporting invalid %s event of job %s: %s", cls.__name__, job.job_id, exc)
            return False
        if wake:
            self._wake_sender()
        return True

    def call_later(self, delay: float, callback: Callable[[], None]) -> bool:
        """Run `callback` on the sender's loop after `delay` seconds (from any thread); False if not running."""
        loop = self._loop
        if loop is None or self._closing:
            return False
        try:
            if threading.get_ident() == self._loop_thread:
                loop.call_later(delay, callback)
            else:
                loop.call_soon_threadsafe(loop.call_later, delay, callback)
        except RuntimeError:  # loop closed meanwhile
            return False
        return True

    def register(self, job: _JobBase) -> None:
        with self._lock:
            self._open_jobs.add(job)

    def unregister(self, job: _JobBase) -> None:
        with self._lock:
            self._open_jobs.discard(job)

    def stats(self) -> TrackerStats:
        with self._lock:
            return TrackerStats(pending=len(self._buffer) + self._in_flight, **self._counts)

    def _note_drops(self, dropped: int) -> None:
        # Lock held. Log the first drop of a burst; the total is logged when the buffer drains.
        self._counts["dropped"] += dropped
        if not self._drops_unreported:
            log.warning(
                "tracker client: event buffer full; dropping the oldest progress and heartbeat events"
            )
        self._drops_unreported += dropped

    def _wake_sender(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None:
            return
        if threading.get_ident() == self._loop_thread:
            wakeup.set()
        else:
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(wakeup.set)

    # -- loop side --

    async def start(self) -> None:
        """Start the sender and heartbeat tasks on the running loop."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wakeup = asyncio.Event()
        self._kick = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._run_sender(), name="tracker-client-sender"),
            asyncio.create_task(self._run_heartbeats(), name="tracker-client-heartbeats"),
        ]

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event emitted so far is sent (or dropped); False on timeout."""
        with self._lock:
            target = self._counts["emitted"]
            if self._loop is None:  # not started: nothing will be sent
                return len(self._buffer) == 0

        async def settled() -> None:
            while True:
                with self._lock:
                    if self._counts["sent"] + self._counts["dropped"] >= target:
                        return
                await asyncio.sleep(0.005)

        try:
            await asyncio.wait_for(settled(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Flush (waiting at most `close_timeout`), stop the tasks, close the Redis client we own."""
        if self._closing:
            return
        self._closing = True
        if self._loop is not None:
            sender, heartbeats = self._tasks
            heartbeats.cancel()
            assert self._wakeup is not None and self._kick is not None
            self._wakeup.set()
            self._kick.set()  # retry now rather than after the current backoff
            try:
                await asyncio.wait_for(asyncio.shield(sender), self._close_timeout)
            except TimeoutError:
                sender.cancel()
                with suppress(asyncio.CancelledError):
                    await sender
            except Exception:
                log.exception("tracker client: the sender failed")
            with suppress(asyncio.CancelledError):
                await heartbeats
        with self._lock:
            self._closed = True
            lost = len(self._buffer) + self._in_flight
            self._counts["lost"] += lost
        if lost:
            log.error(
                "tracker client: gave up flushing to Redis after %.1f s; %d events lost",
                self._close_timeout,
                lost,
            )
        if self._owns_redis:
            with suppress(Exception):
                await self.redis.aclose()

    async def _run_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            with self._lock:
                jobs = list(self._open_jobs)
            for job in jobs:
                job._heartbeat()

    async def _run_sender(self) -> None:
        assert self._wakeup is not None
        backoff = _MIN_BACKOFF
        outage_since: float | None = None
        while True:
            batch = self._take()
            if not batch:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                if not self._closing:
                    # Let a burst collect into one round trip; and when the
                    # producer is another thread, hand its GIL back at once.
                    await asyncio.sleep(_LINGER)
                continue
            try:
                await self._send(batch)
            except Exception as exc:
                self._requeue(batch)
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("tracker client: cannot send events to Redis (%r); buffering and retrying", exc)
                await self._sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            late = self._sent(batch)
            backoff = _MIN_BACKOFF
            if outage_since is not None:
                log.warning(
                    "tracker client: Redis reachable again after %.1f s; %d buffered events sent late",
                    time.monotonic() - outage_since,
                    late,
                )
                outage_since = None

    def _take(self) -> list[_Entry]:
        with self._lock:
            batch = self._buffer.take(self._batch_size, 1 << 20)
            self._in_flight = len(batch)
            self._sender_idle = not batch
            return batch

    async def _send(self, batch: list[_Entry]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for entry in batch:
            pipe.xadd(self.stream, {EVENT_FIELD: entry.data})
        await pipe.execute()

    def _requeue(self, batch: list[_Entry]) -> None:
        with self._lock:
            self._in_flight = 0
            self._counts["retries"] += 1
            dropped = self._buffer.requeue(batch)
            if dropped:
                self._note_drops(dropped)

    def _sent(self, batch: list[_Entry]) -> int:
        """Count a sent batch; returns the batch size plus what is still waiting."""
        with self._lock:
            self._in_flight = 0
            self._counts["sent"] += len(batch)
            waiting = len(self._buffer)
            drops = 0
            if not waiting:
                drops, self._drops_unreported = self._drops_unreported, 0
        if drops:
            log.warning("tracker client: %d progress/heartbeat events were dropped while the buffer was full", drops)
        return len(batch) + waiting

    async def _sleep(self, delay: float) -> None:
        """Backoff sleep (with jitter) that `close()` cuts short."""
        assert self._kick is not None
        if self._closing:
            delay = min(delay, 1.0)
        delay *= random.uniform(0.5, 1.0)
        with suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), delay)
        self._kick.clear()


def _make_emitter(redis: Any, stream: str, owns_redis: bool, options: Mapping[str, Any]) -> _Emitter:
    settings: dict[str, Any] = {
        "buffer_size": 10_000,
        "progress_interval": 0.5,
        "heartbeat_interval": 10.0,
        "close_timeout": 10.0,
        "max_backoff": 5.0,
        "batch_size": 500,
    }
    unknown = set(options) - set(settings)
    if unknown:
        raise TypeError(f"unknown tracker option(s): {', '.join(sorted(unknown))}")
    settings.update(options)
    return _Emitter(redis, stream, owns_redis=owns_redis, **settings)


def _redis_from_url(url: str, socket_timeout: float) -> Any:
    """A client that fails fast (no built-in retries): the sender does its own retrying."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
    )


# --------------------------------------------------------------------------- jobs and stages


class Stage:
    """One stage of a job; a context manager (`with` or `async with`).

    Emits stage.started on enter, stage.completed on normal exit, stage.failed
    when the block raises. `advance()` and `set()` are plain calls, safe from
    any thread; progress is coalesced to at most one stage.progress per
    `progress_interval`, the latest value always reported within that interval,
    and a final one before the stage ends if it changed.
    """

    def __init__(self, job: _JobBase, name: str, total: int | None) -> None:
        self.job = job
        self.name = name
        self._done = 0
        self._total = total
        self._reported = (0, total)
        self._next_report = 0.0
        self._timer_armed = False
        self._closed = False
        self._lock = threading.Lock()

    @property
    def done(self) -> int:
        return self._done

    @property
    def total(self) -> int | None:
        return self._total

    @_never_raise
    def advance(self, n: int = 1) -> None:
        """Count `n` more items done."""
        with self._lock:
            self._done += n
            self._changed()

    @_never_raise
    def set(self, done: int | None = None, total: int | None = None) -> None:
        """Set the absolute progress (either or both)."""
        with self._lock:
            if done is not None:
                self._done = done
            if total is not None:
                self._total = total
            self._changed()

    def __enter__(self) -> Stage:
        self._open()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self._close(exc)
        return False

    async def __aenter__(self) -> Stage:
        self._open()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self._close(exc)
        return False

    @_never_raise
    def _open(self) -> None:
        self.job._stage_opened(self)
        self.job._emit(StageStarted, {"stage": self.name, "total": self._total})

    @_never_raise
    def _close(self, exc: BaseException | None) -> None:
        with self._lock:
            self._closed = True
            self._report_if_changed()
        if exc is None:
            self.job._emit(StageCompleted, {"stage": self.name})
        else:
            self.job._emit(StageFailed, {"stage": self.name, "error": _describe(exc)})
        self.job._stage_closed(self, exc)

    def _changed(self) -> None:
        # Lock held. Report now if the interval has passed, else once when it has.
        if self._closed or self._timer_armed:
            return
        now = time.monotonic()
        if now >= self._next_report:
            self._report_if_changed()
        else:
            self._timer_armed = self.job._emitter.call_later(self._next_report - now, self._on_timer)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer_armed = False
            if not self._closed:
                self._report_if_changed()

    def _report_if_changed(self) -> None:
        # Lock held.
        current = (self._done, self._total)
        if current == self._reported:
            return
        self._reported = current
        self._next_report = time.monotonic() + self.job._emitter.progress_interval
        self.job._emit(StageProgress, {"stage": self.name, "done": self._done, "total": self._total})


class _JobBase:
    """What `Job` and `SyncJob` share: numbering, stages, heartbeats, terminal events."""

    def __init__(self, emitter: _Emitter, job_id: uuid.UUID | str | None, started: dict[str, Any]) -> None:
        self._emitter = emitter
        #: The job's id (given, or a new uuid4).
        self.job_id = job_id if isinstance(job_id, uuid.UUID) else uuid.UUID(job_id) if job_id else uuid.uuid4()
        self.next_seq = 0  # guarded by the emitter's lock
        self.terminated = False  # a terminal event was emitted; guarded by the emitter's lock
        self._started = started
        self._stages: list[Stage] = []
        self._failure: tuple[BaseException, str] | None = None  # (exception, stage it failed)

    def stage(self, name: str, total: int | None = None) -> Stage:
        """A stage of this job, to use as a context manager."""
        return Stage(self, name, total)

    def _emit(self, cls: type[Event], fields: Mapping[str, Any], *, terminal: bool = False) -> bool:
        return self._emitter.emit(self, cls, fields, terminal=terminal)

    @_never_raise
    def _start(self) -> None:
        self._emit(JobStarted, self._started)
        self._emitter.register(self)

    @_never_raise
    def _finish(self, exc: BaseException | None) -> None:
        self._emitter.unregister(self)
        if exc is None:
            self._emit(JobCompleted, {}, terminal=True)
        elif isinstance(exc, Exception):
            self._emit(JobFailed, {"error": _describe(exc), "stage": self._stage_of(exc)}, terminal=True)
        else:  # CancelledError, KeyboardInterrupt, SystemExit: the job was stopped, it did not fail
            self._emit(JobCancelled, {"reason": _describe(exc)}, terminal=True)

    @_never_raise
    def _genre(self, fields: dict[str, Any]) -> None:
        self._emit(GenreStatusChanged, {**fields, "error": _clip(fields["error"])})

    @_never_raise
    def _articles(self, articles: Iterable[Article | Mapping[str, Any]]) -> None:
        items = [a if isinstance(a, Article) else Article(**a) for a in articles]
        for chunk in _chunk_articles(items):
            self._emit(ArticlesAdded, {"articles": chunk})

    @_never_raise
    def _cancel(self, reason: str | None) -> None:
        self._emitter.unregister(self)
        self._emit(JobCancelled, {"reason": _clip(reason)}, terminal=True)

    @_never_raise
    def _fail(self, error: str, stage: str | None) -> None:
        self._emitter.unregister(self)
        stage = stage or (self._stages[-1].name if self._stages else None)
        self._emit(JobFailed, {"error": _clip(str(error)), "stage": stage}, terminal=True)

    def _heartbeat(self) -> None:
        self._emit(JobHeartbeat, {})

    def _stage_opened(self, stage: Stage) -> None:
        self._stages.append(stage)

    def _stage_closed(self, stage: Stage, exc: BaseException | None) -> None:
        with suppress(ValueError):
            self._stages.remove(stage)
        if exc is not None:
            self._failure = (exc, stage.name)

    def _stage_of(self, exc: BaseException) -> str | None:
        """The stage a job-ending exception came from: the one it failed, else one still open."""
        failure, self._failure = self._failure, None  # do not keep the traceback alive
        if failure is not None and failure[0] is exc:
            return failure[1]
        return self._stages[-1].name if self._stages else None


def _chunk_articles(articles: list[Article]) -> Iterator[list[Article]]:
    chunk: list[Article] = []
    size = 0
    for article in articles:
        n = len(_article_encoder.encode(article)) + 1
        if chunk and (len(chunk) >= _ARTICLES_PER_EVENT or size + n > _ARTICLES_BYTES_PER_EVENT):
            yield chunk
            chunk, size = [], 0
        chunk.append(article)
        size += n
    if chunk:
        yield chunk


class Job(_JobBase):
    """A job, reported from async code: `async with tracker.job(...) as job:`.

    Emits job.started on enter and job.completed on normal exit. When the block
    raises, emits job.failed (error `Type: message`, stage: the stage that
    failed, else the open one) and lets the exception propagate; on
    cancellation (CancelledError, KeyboardInterrupt) emits job.cancelled.
    Nothing is emitted for the job after a terminal event. While the job is
    open, a job.heartbeat goes out every `heartbeat_interval`.

    The async methods only buffer the event and return at once.
    """

    async def __aenter__(self) -> Job:
        self._start()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self._finish(exc)
        return False

    async def genre(
        self,
        genre: str,
        status: str,
        phase: str | None = None,
        cluster_count: int | None = None,
        article_count: int | None = None,
        error: str | None = None,
    ) -> None:
        """Report a genre's status (`pending`, `running`, `succeeded`, `partial`, `failed`)."""
        self._genre(
            {
                "genre": genre,
                "status": status,
                "phase": phase,
                "cluster_count": cluster_count,
                "article_count": article_count,
                "error": error,
            }
        )

    async def articles(self, articles: Iterable[Article | Mapping[str, Any]]) -> None:
        """Report articles of the job (split into events of at most 500 articles / 48 KiB)."""
        self._articles(articles)

    async def cancel(self, reason: str | None = None) -> None:
        """Emit job.cancelled now; the block's exit then emits nothing more."""
        self._cancel(reason)

    async def fail(self, error: str, stage: str | None = None) -> None:
        """Emit job.failed now (stage defaults to the open stage); the block's exit then emits nothing more."""
        self._fail(error, stage)


class SyncJob(_JobBase):
    """A job, reported from synchronous code: `with tracker.job(...) as job:`. Same events as `Job`."""

    def __enter__(self) -> SyncJob:
        self._start()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self._finish(exc)
        return False

    def genre(
        self,
        genre: str,
        status: str,
        phase: str | None = None,
        cluster_count: int | None = None,
        article_count: int | None = None,
        error: str | None = None,
    ) -> None:
        """Report a genre's status (`pending`, `running`, `succeeded`, `partial`, `failed`)."""
        self._genre(
            {
                "genre": genre,
                "status": status,
                "phase": phase,
                "cluster_count": cluster_count,
                "article_count": article_count,
                "error": error,
            }
        )

    def articles(self, articles: Iterable[Article | Mapping[str, Any]]) -> None:
        """Report articles of the job (split into events of at most 500 articles / 48 KiB)."""
        self._articles(articles)

    def cancel(self, reason: str | None = None) -> None:
        """Emit job.cancelled now; the block's exit then emits nothing more."""
        self._cancel(reason)

    def fail(self, error: str, stage: str | None = None) -> None:
        """Emit job.failed now (stage defaults to the open stage); the block's exit then emits nothing more."""
        self._fail(error, stage)


def _started_fields(
    kind: str,
    trigger_source: str | None,
    user_id: uuid.UUID | str | None,
    genres: Iterable[str] | None,
    stages: Iterable[str] | None,
    window_days: int | None,
    note: str | None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "trigger_source": trigger_source or ("user" if user_id else "system"),
        "user_id": user_id,
        "genres": list(genres) if genres is not None else None,
        "stages": list(stages) if stages is not None else None,
        "window_days": window_days,
        "note": _clip(note),
    }


# --------------------------------------------------------------------------- trackers


class Tracker:
    """Reports jobs from async code. Use `Tracker.connect(url)` or `Tracker(redis_client)`.

    Options: `buffer_size` (10_000 events), `progress_interval` (0.5 s),
    `heartbeat_interval` (10 s), `close_timeout` (10 s), `max_backoff` (5 s),
    `batch_size` (500 events per round trip).
    """

    def __init__(self, redis: Any, stream: str = DEFAULT_STREAM, *, _owns_redis: bool = False, **options: Any) -> None:
        self._emitter = _make_emitter(redis, stream, _owns_redis, options)

    @classmethod
    def connect(
        cls, redis_url: str, stream: str = DEFAULT_STREAM, *, socket_timeout: float = 5.0, **options: Any
    ) -> Tracker:
        """A tracker on a new Redis client for `redis_url`; no I/O until events flow."""
        return cls(_redis_from_url(redis_url, socket_timeout), stream, _owns_redis=True, **options)

    async def __aenter__(self) -> Tracker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def start(self) -> None:
        """Start sending (on the running loop)."""
        await self._emitter.start()

    async def close(self) -> None:
        """Flush what is buffered (at most `close_timeout`) and stop."""
        await self._emitter.close()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything emitted so far is in Redis; False on timeout."""
        return await self._emitter.flush(timeout)

    @property
    def stats(self) -> TrackerStats:
        return self._emitter.stats()

    def job(
        self,
        *,
        job_id: uuid.UUID | str | None = None,
        kind: str = "recap",
        trigger_source: str | None = None,
        user_id: uuid.UUID | str | None = None,
        genres: Iterable[str] | None = None,
        stages: Iterable[str] | None = None,
        window_days: int | None = None,
        note: str | None = None,
    ) -> Job:
        """A job to use as `async with`.

        `trigger_source` defaults to `user` when `user_id` is given, else `system`.
        Raises ValueError if `job_id` is given and is not a UUID.
        """
        started = _started_fields(kind, trigger_source, user_id, genres, stages, window_days, note)
        return Job(self._emitter, job_id, started)


class SyncTracker:
    """Reports jobs from synchronous code; same options as `Tracker`.

    Runs the sender on an event loop in a daemon thread. Its methods never wait
    on Redis, except `flush()` and `close()` (and leaving the `with` block).
    """

    def __init__(self, redis: Any, stream: str = DEFAULT_STREAM, *, _owns_redis: bool = False, **options: Any) -> None:
        self._emitter = _make_emitter(redis, stream, _owns_redis, options)
        self._close_timeout = float(options.get("close_timeout", 10.0))
        self._stopped = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tracker-client", daemon=True)
        self._thread.start()
        self._call(self._emitter.start(), timeout=5.0)

    @classmethod
    def connect(
        cls, redis_url: str, stream: str = DEFAULT_STREAM, *, socket_timeout: float = 5.0, **options: Any
    ) -> SyncTracker:
        """A tracker on a new Redis client for `redis_url`; no I/O until events flow."""
        return cls(_redis_from_url(redis_url, socket_timeout), stream, _owns_redis=True, **options)

    def __enter__(self) -> SyncTracker:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Flush what is buffered (at most `close_timeout`), stop the thread."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._call(self._emitter.close(), timeout=self._close_timeout + 5.0)
        except Exception:
            log.exception("tracker client: closing failed")
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5.0)
            if not self._thread.is_alive():
                self._loop.close()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything emitted so far is in Redis; False on timeout."""
        return self._call(self._emitter.flush(timeout), timeout=None if timeout is None else timeout + 1.0)

    @property
    def stats(self) -> TrackerStats:
        return self._emitter.stats()

    def job(
        self,
        *,
        job_id: uuid.UUID | str | None = None,
        kind: str = "recap",
        trigger_source: str | None = None,
        user_id: uuid.UUID | str | None = None,
        genres: Iterable[str] | None = None,
        stages: Iterable[str] | None = None,
        window_days: int | None = None,
        note: str | None = None,
    ) -> SyncJob:
        """A job to use as `with`; arguments as for `Tracker.job`."""
        started = _started_fields(kind, trigger_source, user_id, genres, stages, window_days, note)
        return SyncJob(self._emitter, job_id, started)

    def _call(self, coro: Any, timeout: float | None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
