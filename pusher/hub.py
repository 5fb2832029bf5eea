"""The per-process hub: one reader of the deltas stream fanning out to subscribers.

Each subscriber has a bounded queue of frames, drained by its own task
(pusher.session.serve), so a slow socket only ever delays itself. A frame is
encoded once per batch and filter and shared by every subscriber it goes to;
to a subscriber whose queue is empty and whose socket has buffer room it is
written at once, without waking its task (the common case, and the cheap one
with thousands of subscribers). When a queue overflows it is coalesced into one frame holding the newest
version of each row; when even that is too big, the subscriber is marked for a
resync and its queue dropped (its drain task then sends a fresh snapshot).

The hub notices lost history itself: an entry of another epoch, a changed epoch
key, or a gap in the offsets (the hub fell behind the stream's cap) makes every
subscriber resync.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

import msgspec
import redis.asyncio as aioredis

from tracker.fold import JobRow
from tracker.settings import Settings

from .deltas import Change, Cursor, Delta, Stats, coalesce, encode, entry_id, epoch_key, offset_of, row_count
from .publish import new_epoch_id
from .recent import RecentChanges

log = logging.getLogger("pusher")


class HubOptions(msgspec.Struct, kw_only=True, frozen=True):
    """Tuning of the hub; the defaults suit a dashboard."""

    #: Frames a subscriber may have queued before they are coalesced.
    queue_limit: int = 64
    #: Rows a coalesced backlog may hold before the subscriber is resynced instead.
    max_rows: int = 4_000
    #: A send blocked this long (the client stopped reading): closed with TOO_SLOW.
    send_timeout: float = 10.0
    #: Idle interval of the application heartbeat; WebSocket pings use it too.
    heartbeat: float = 15.0
    #: Time a new socket has to send its subscribe message.
    subscribe_timeout: float = 10.0
    #: Longest block of one stream read; also how soon a changed epoch is noticed.
    block_ms: int = 500
    read_count: int = 2_000
    #: Shortest time between two dispatches: under a stream of changes each
    #: subscriber gets at most one frame per interval (cheaper for server and
    #: browser); an isolated change is still sent at once.
    linger: float = 0.025
    #: Stats are recomputed at most this often, and only after a job changed status.
    stats_interval: float = 1.0
    snapshot_concurrency: int = 4


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """What a subscriber may and wants to see. Hashable: subscribers group by it."""

    admin: bool
    #: Jobs of this user only (always set for user tokens); None: every job.
    user_id: uuid.UUID | None = None
    kind: str | None = None
    trigger_source: str | None = None
    #: Snapshot parameters (None: the REST defaults).
    window: int | None = None
    limit: int | None = None

    def admits(self, job: JobRow) -> bool:
        return (
            (self.user_id is None or job.user_id == self.user_id)
            and (self.kind is None or job.kind == self.kind)
            and (self.trigger_source is None or job.trigger_source == self.trigger_source)
        )

    @property
    def filter_key(self) -> tuple:
        return (self.user_id, self.kind, self.trigger_source)


class Frame:
    """One message for a subscriber: deltas (with their cursor) or stats.

    Shared by every subscriber it goes to; `wire` caches its bytes as the
    transport frames them, so that they are framed once too.
    """

    __slots__ = ("cursor", "changes", "data", "wire")

    def __init__(self, cursor: Cursor | None, changes: list[Change] | None, data: bytes | None) -> None:
        self.cursor = cursor
        self.changes = changes
        self.data = data
        self.wire: bytes | None = None

    def encoded(self) -> bytes:
        if self.data is None:
            assert self.cursor is not None and self.changes is not None
            self.data = encode(Delta(cursor=self.cursor, changes=self.changes))
        return self.data


class Subscriber:
    """One subscription's bounded queue; `offer` never blocks and never grows it past its limit."""

    def __init__(self, scope: Scope, options: HubOptions) -> None:
        self.scope = scope
        self.options = options
        self.frames: deque[Frame] = deque()
        #: Frames up to this offset are not wanted (the client already has them).
        self.after = -1
        #: Set when the queue had to be dropped: the drainer sends a snapshot next.
        self.resync_reason: str | None = None
        self.coalesced = 0
        #: A write that never blocks: True if the frame went out, False if the
        #: socket's buffer is full (or it is closing). Set by the transport.
        self.write_now: Callable[[Frame], bool] | None = None
        self._idle = False
        self._wake = asyncio.Event()

    def offer(self, frame: Frame) -> None:
        if self.resync_reason is not None:
            return  # a snapshot follows, which holds this change
        if frame.cursor is not None and frame.cursor.offset <= self.after:
            return
        # Nothing queued and the drainer waiting: write straight away when the
        # socket takes it without blocking (order is kept: the queue is empty).
        if self._idle and self.write_now is not None and self.write_now(frame):
            return
        self._idle = False
        self.frames.append(frame)
        if len(self.frames) > self.options.queue_limit:
            self._coalesce()
        self._wake.set()

    def resync(self, reason: str) -> None:
        self.frames.clear()
        self.resync_reason = reason
        self._idle = False
        self._wake.set()

    async def wait(self, timeout: float) -> bool:
        """Wait until there is something to send; False on timeout."""
        if self.frames or self.resync_reason:
            return True
        self._wake.clear()
        self._idle = True
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            return False
        finally:
            self._idle = False
        return True

    def _coalesce(self) -> None:
        deltas = [f for f in self.frames if f.changes is not None]
        stats = [f for f in self.frames if f.changes is None]
        merged = coalesce(c for f in deltas for c in f.changes)  # type: ignore[union-attr]
        if row_count(merged) > self.options.max_rows:
            self.resync("slow")
            return
        self.coalesced += 1
        self.frames.clear()
        if deltas:
            self.frames.append(Frame(deltas[-1].cursor, merged, None))
        if stats:
            self.frames.append(stats[-1])


SnapshotFn = Callable[[Scope], Awaitable[tuple[bytes, bytes]]]
StatsFn = Callable[[Scope], Awaitable[bytes]]

_change_decoder = msgspec.json.Decoder(Change)
_STATUSES_KEPT = 50_000  # job statuses remembered to notice status changes


class Hub:
    """Reads the deltas stream (one reader per process) and fans out to subscribers.

    `snapshot(scope)` returns the encoded job-progress response and job rows for a
    scope; `stats(scope)` the encoded job stats. Both read Postgres.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        snapshot: SnapshotFn,
        stats: StatsFn | None = None,
        options: HubOptions | None = None,
    ) -> None:
        self.redis = redis
        self.stream = settings.deltas_stream
        self.options = options or HubOptions()
        self.epoch = ""
        self.offset = 0
        self.groups: dict[Scope, set[Subscriber]] = {}
        self._snapshot_fn = snapshot
        self._stats_fn = stats
        self._snapshots: dict[Scope, asyncio.Future[tuple[Cursor, bytes, bytes]]] = {}  # not yet started
        self._snapshot_slots = asyncio.Semaphore(self.options.snapshot_concurrency)
        self._statuses: OrderedDict[uuid.UUID, str] = OrderedDict()
        self._stats_dirty = asyncio.Event()
        self._stats_cache: dict[Scope, asyncio.Future[bytes]] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._last_dispatch = 0.0
        #: Resumes are answered from here while it reaches back far enough.
        self.recent = RecentChanges(keep=settings.deltas_maxlen)

    @property
    def position(self) -> Cursor:
        """The newest change dispatched to subscribers."""
        return Cursor(self.epoch, self.offset)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self.groups.values())

    # --- lifecycle ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the hub knows the epoch and position (Redis answered)."""
        return bool(self.epoch)

    async def start(self) -> None:
        """Run the reader (and stats) in the background. The web server starts even
        while Redis is down; the hub is `ready` once Redis answered."""
        self._tasks = [asyncio.create_task(self.run(), name="pusher-hub")]
        if self._stats_fn is not None:
            self._tasks.append(asyncio.create_task(self._stats_loop(), name="pusher-stats"))

    async def stop(self) -> None:
        """Stop the background tasks and wait until they have."""
        self._stopping = True
        pending = set(self._tasks)
        while pending:
            # Cancelled again until done: a cancellation that lands as redis-py's
            # read times out is turned into a TimeoutError, and the loop would go on.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._tasks = []

    async def run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                if not self.ready:
                    epoch = await self._current_epoch()
                    self.offset = await self._last_offset()
                    await self._load_history(epoch)
                    self.epoch = epoch
                await self.run_once()
                backoff = 0.1
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                log.warning("pusher: reading %s failed (%s); retrying in %.1fs", self.stream, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("pusher: hub error")
                await asyncio.sleep(1.0)

    # --- subscribers ----------------------------------------------------------------

    def attach(self, sub: Subscriber) -> Cursor:
        """Register a subscriber; it gets every change after the returned position."""
        self.groups.setdefault(sub.scope, set()).add(sub)
        return self.position

    def detach(self, sub: Subscriber) -> None:
        group = self.groups.get(sub.scope)
        if group is not None:
            group.discard(sub)
            if not group:
                del self.groups[sub.scope]

    def subscribers(self) -> list[Subscriber]:
        return [sub for group in self.groups.values() for sub in group]

    # --- reading ------------------------------------------------------------------

    async def run_once(self, block_ms: int | None = None) -> int:
        """Read and dispatch one batch of the stream; returns the number of changes read."""
        block = self.options.block_ms if block_ms is None else block_ms
        if (wait := self._last_dispatch + self.options.linger - time.monotonic()) > 0 and block:
            await asyncio.sleep(wait)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(epoch_key(self.stream), "epoch")
        pipe.xread({self.stream: entry_id(self.offset)}, count=self.options.read_count, block=block or None)
        epoch, reply = await pipe.execute()
        if epoch is None or epoch.decode() != self.epoch:
            await self._restart("epoch")
            return 0
        entries = reply[0][1] if reply else []
        if not entries:
            return 0
        first = offset_of(entries[0][0])
        if first != self.offset + 1 or any(fields[b"e"].decode() != self.epoch for _, fields in entries):
            await self._restart("trimmed" if first > self.offset + 1 else "epoch")
            return 0
        changes = [_change_decoder.decode(fields[b"d"]) for _, fields in entries]
        for (eid, _), change in zip(entries, changes):
            self.recent.add(offset_of(eid), change)
        self.offset = offset_of(entries[-1][0])
        self.recent.trim(self.offset)
        self._last_dispatch = time.monotonic()
        self._dispatch(coalesce(changes), self.position)
        return len(entries)

    def _dispatch(self, changes: list[Change], cursor: Cursor) -> None:
        frames: dict[tuple, Frame | None] = {}
        for scope, group in self.groups.items():
            key = scope.filter_key
            if key not in frames:
                selected = [c for c in changes if scope.admits(c.job)]
                frames[key] = Frame(cursor, selected, None) if selected else None
            frame = frames[key]
            if frame is not None:
                frame.encoded()
                for sub in group:
                    sub.offer(frame)
        self._note_statuses(changes)

    async def _restart(self, reason: str) -> None:
        """History was lost (new epoch, or trimmed past this hub): start again from now."""
        epoch = await self._current_epoch()
        self.epoch, self.offset = epoch, await self._last_offset()
        await self._load_history(epoch)
        log.warning("pusher: delta history lost (%s); epoch %s, resyncing %d subscribers", reason, epoch, self.subscriber_count)
        for sub in self.subscribers():
            sub.resync(reason)

    async def _load_history(self, epoch: str) -> None:
        """Fill `recent` from the stream's entries up to the hub's offset (the stream is
        capped, so this is bounded), so that resumes right after a start are answered
        from memory too."""
        self.recent.reset(self.offset)
        history: list[tuple[int, Change]] = []
        start = "-"
        while True:
            page = await self.redis.xrange(self.stream, min=start, max=entry_id(self.offset), count=self.options.read_count)
            for eid, fields in page:
                if fields[b"e"].decode() != epoch:
                    return
                history.append((offset_of(eid), _change_decoder.decode(fields[b"d"])))
            if len(page) < self.options.read_count:
                break
            start = "(" + page[-1][0].decode()
        if not history or history[-1][0] != self.offset or history[-1][0] - history[0][0] + 1 != len(history):
            return  # not one contiguous run up to the offset: only live changes are covered
        self.recent.reset(history[0][0] - 1)
        for offset, change in history:
            self.recent.add(offset, change)

    async def _current_epoch(self) -> str:
        key = epoch_key(self.stream)
        await self.redis.hsetnx(key, "epoch", new_epoch_id())
        return (await self.redis.hget(key, "epoch")).decode()

    async def last_offset(self) -> int:
        """The newest offset in the stream (0 when it has none)."""
        return await self._last_offset()

    async def _last_offset(self) -> int:
        try:
            info = await self.redis.xinfo_stream(self.stream)
        except aioredis.ResponseError:
            return 0  # no such stream
        return offset_of(info["last-generated-id"])

    # --- resume and snapshots ---------------------------------------------------------

    async def replay(self, cursor: Cursor, scope: Scope, upto: int) -> list[Change] | str:
        """The changes after `cursor` up to offset `upto` in scope, coalesced; or why they
        cannot be had (`epoch`, `trimmed`, `unknown`), when a snapshot must be sent."""
        if cursor.epoch != self.epoch:
            return "epoch"
        if cursor.offset >= upto:
            return [] if cursor.offset <= await self._last_offset() else "unknown"
        if self.recent.covers(cursor.offset) and upto == self.offset:
            return self.recent.after(cursor.offset, scope.admits)
        changes: list[Change] = []
        expected = cursor.offset + 1
        while expected <= upto:
            entries = await self.redis.xrange(
                self.stream, min=entry_id(expected), max=entry_id(upto), count=self.options.read_count
            )
            for eid, fields in entries:
                if offset_of(eid) != expected or fields[b"e"].decode() != cursor.epoch:
                    return "trimmed"
                expected += 1
                change = _change_decoder.decode(fields[b"d"])
                if scope.admits(change.job):
                    changes.append(change)
            if not entries:
                return "trimmed"
        return coalesce(changes)

    async def snapshot(self, scope: Scope) -> tuple[Cursor, bytes, bytes]:
        """A snapshot of `scope` reflecting at least every change up to the returned cursor.

        Callers join the scope's next query that has not started yet, so a storm of
        subscribers (say, every client resyncing after an epoch change) costs one
        query per scope at a time, not one per subscriber.
        """
        future = self._snapshots.get(scope)
        if future is None or future.done():
            future = asyncio.ensure_future(self._take_snapshot(scope))
            future.add_done_callback(_retrieve)
            self._snapshots[scope] = future
        return await asyncio.shield(future)

    async def _take_snapshot(self, scope: Scope) -> tuple[Cursor, bytes, bytes]:
        async with self._snapshot_slots:
            if self._snapshots.get(scope) is asyncio.current_task():
                del self._snapshots[scope]  # started: later callers attached after `position`
            position = self.position  # read before the query: the query sees every change up to it
            progress, jobs = await self._snapshot_fn(scope)
            return position, progress, jobs

    # --- stats ------------------------------------------------------------------------

    def _note_statuses(self, changes: list[Change]) -> None:
        for change in changes:
            job = change.job
            if self._statuses.get(job.job_id) != job.status:
                self._statuses[job.job_id] = job.status
                self._stats_cache.clear()
                self._stats_dirty.set()
            self._statuses.move_to_end(job.job_id)
        while len(self._statuses) > _STATUSES_KEPT:
            self._statuses.popitem(last=False)

    async def stats(self, scope: Scope) -> bytes | None:
        """The encoded `stats` message for a scope, as of the last job status change
        (shared by every subscriber of the scope); None when the hub has no stats."""
        if self._stats_fn is None:
            return None
        future = self._stats_cache.get(scope)
        if future is None or (future.done() and (future.cancelled() or future.exception() is not None)):
            future = asyncio.ensure_future(self._take_stats(scope))
            future.add_done_callback(_retrieve)
            self._stats_cache[scope] = future
        return await asyncio.shield(future)

    async def _take_stats(self, scope: Scope) -> bytes:
        assert self._stats_fn is not None
        async with self._snapshot_slots:
            return encode(Stats(stats=msgspec.Raw(await self._stats_fn(scope))))

    async def _stats_loop(self) -> None:
        while True:
            await self._stats_dirty.wait()
            self._stats_dirty.clear()
            started = time.monotonic()
            for scope in list(self.groups):
                try:
                    data = await self.stats(scope)
                except Exception as exc:  # stats are best effort; the next status change retries
                    log.warning("pusher: stats for %s failed: %s", scope, exc)
                    continue
                frame = Frame(None, None, data)
                for sub in list(self.groups.get(scope, ())):
                    sub.offer(frame)
            await asyncio.sleep(max(0.0, self.options.stats_interval - (time.monotonic() - started)))


def _retrieve(future: asyncio.Future) -> None:
    """Mark a shared snapshot's failure as seen: its waiters may all have gone."""
    if not future.cancelled():
        future.exception()
