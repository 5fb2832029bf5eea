"""The tracker's Redis side: XREADGROUP in batches, project, XACK after commit.

On start it re-reads its own pending entries (a crash left them unacknowledged),
and from then on it also claims entries left pending by dead consumers
(XAUTOCLAIM). Entries that cannot be decoded, or that keep failing, go to the
dead-letter stream and table with the reason; the tracker carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from . import events as ev
from . import store
from .projector import BatchResult, project_batch
from .settings import Settings

log = logging.getLogger("tracker")

GROUP = "tracker"
_DEAD_STREAM_MAXLEN = 100_000
_TRIM_EVERY_S = 10.0

Entry = tuple[bytes, dict[bytes, bytes] | None]


class Decoded(NamedTuple):
    entry_id: bytes
    raw: bytes
    event: ev.AnyEvent


OnCommit = Callable[[BatchResult], Awaitable[None]]

# Errors that mean "Postgres is unreachable", not "this event is bad": retry, never dead-letter.
_CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


@dataclass
class Counters:
    applied: int = 0
    duplicates: int = 0
    dead: int = 0
    batches: int = 0
    lag: int | None = None
    logged_applied: int = 0
    started: float = field(default_factory=time.monotonic)


class Consumer:
    """One tracker process's consumer in group `tracker`."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        pool: asyncpg.Pool,
        on_commit: OnCommit | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.pool = pool
        self.on_commit = on_commit
        self.stream = settings.events_stream
        self.name = settings.consumer
        self.counters = Counters()
        self._own_pending_done = False
        self._last_claim = 0.0
        self._last_trim = 0.0
        self._stalled: set = set()
        self._group_ready = False
        self._prefetch: asyncio.Task[list[Entry]] | None = None
        self._in_hand: list[Entry] | None = None

    async def setup(self) -> None:
        """Create the consumer group (and the stream) if they do not exist."""
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run_once(self, block_ms: int | None = None) -> int:
        """Handle one batch: own pending first, then claimed, then new entries.

        Returns the number of stream entries handled (0 when there was nothing).
        """
        entries = await self._next_entries(block_ms)
        if entries:
            await self.handle(entries)
        await self._housekeeping()
        return len(entries)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; the batch in hand is finished first.

        Once its own pending entries are done, it reads the next batch from
        Redis while Postgres commits the current one. Redis or Postgres being
        unreachable (at start too) is waited out with backoff.
        """
        backoff = 0.1
        last_log = time.monotonic()
        self._prefetch = None
        try:
            while not stop.is_set():
                try:
                    await self._step()
                    backoff = 0.1
                except ResponseError as exc:
                    if not _stream_is_gone(exc):
                        raise
                    # Redis lost the stream (restarted without persistence, or flushed).
                    await self._drop_prefetch()
                    log.warning("tracker: consumer group is gone (%s); creating it again", exc)
                    self._group_ready = False
                except _CONNECTION_ERRORS + (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
                    which = "Redis" if isinstance(exc, aioredis.RedisError) else "Postgres"
                    log.warning("tracker: %s unreachable (%s: %s); retrying in %.1fs", which, type(exc).__name__, exc, backoff)
                    await _sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 5.0)
                if time.monotonic() - last_log >= self.settings.log_every:
                    self._log_progress(time.monotonic() - last_log)
                    last_log = time.monotonic()
        finally:
            await self._drop_prefetch()

    async def _step(self) -> None:
        if not self._group_ready:
            await self.setup()
            self._group_ready = True
        if self._in_hand is None:
            self._in_hand = await self._read_next()
        if self._in_hand:
            # On an outage this raises and the same entries are retried, not read
            # again: re-reading would count as another delivery of each.
            await self.handle(self._in_hand)
        self._in_hand = None
        await self._housekeeping()

    async def _read_next(self) -> list[Entry]:
        try:
            entries = await (self._prefetch or self._next_entries(None))
        except _CONNECTION_ERRORS + (aioredis.ConnectionError, aioredis.TimeoutError):
            self._own_pending_done = False  # the reply may be lost after Redis delivered: read pending again
            raise
        finally:
            self._prefetch = None
        if self._own_pending_done and entries:
            self._prefetch = asyncio.create_task(self._next_entries(None))
        return entries

    async def _drop_prefetch(self) -> None:
        """A batch read ahead but not handled stays pending for this consumer: read it again."""
        if self._prefetch is not None:
            await _discard(self._prefetch)
            self._prefetch = None
            self._own_pending_done = False

    # --- reading --------------------------------------------------------------

    async def _next_entries(self, block_ms: int | None) -> list[Entry]:
        count = self.settings.batch_size
        if not self._own_pending_done:
            entries = await self._read("0", count, None)
            if entries:
                return await self._drop_overdelivered(entries)
            self._own_pending_done = True
        if time.monotonic() - self._last_claim >= self.settings.claim_idle_ms / 2000:
            self._last_claim = time.monotonic()
            claimed = await self._claim(count)
            if claimed:
                return await self._drop_overdelivered(claimed)
        block = self.settings.block_ms if block_ms is None else block_ms
        return await self._read(">", count, block or None)

    async def _read(self, start: str, count: int, block: int | None) -> list[Entry]:
        reply = await self.redis.xreadgroup(GROUP, self.name, {self.stream: start}, count=count, block=block)
        return list(reply[0][1]) if reply else []

    async def _claim(self, count: int) -> list[Entry]:
        reply = await self.redis.xautoclaim(
            self.stream, GROUP, self.name, min_idle_time=self.settings.claim_idle_ms, start_id="0-0", count=count
        )
        claimed = list(reply[1])
        if claimed:
            log.info("tracker: claimed %d entries left pending by another consumer", len(claimed))
        return claimed

    async def _drop_overdelivered(self, entries: list[Entry]) -> list[Entry]:
        """Dead-letter entries delivered more than max_deliveries times (they keep failing)."""
        ids = [entry_id for entry_id, _ in entries]
        info = await self.redis.xpending_range(self.stream, GROUP, min=ids[0], max=ids[-1], count=len(ids) * 2)
        deliveries = {i["message_id"]: i["times_delivered"] for i in info}
        keep: list[Entry] = []
        for entry_id, fields in entries:
            times = deliveries.get(entry_id, 1)
            if fields is not None and times > self.settings.max_deliveries:
                raw = fields.get(ev.EVENT_FIELD.encode())
                await self._dead_letter(entry_id, f"delivered {times} times without being applied", raw)
                await self.redis.xack(self.stream, GROUP, entry_id)
            else:
                keep.append((entry_id, fields))
        return keep

    # --- handling -------------------------------------------------------------

    async def handle(self, entries: list[Entry]) -> BatchResult:
        """Decode, project and acknowledge a list of stream entries."""
        valid: list[Decoded] = []
        for entry_id, fields in entries:
            if fields is None:
                continue  # the entry was trimmed away while pending; nothing left to apply
            raw = fields.get(ev.EVENT_FIELD.encode())
            event, reason = self._decode(raw)
            if event is None:
                await self._dead_letter(entry_id, reason, raw)
            else:
                valid.append(Decoded(entry_id, raw, event))
        result = await self._project(valid) if valid else BatchResult()
        await self.redis.xack(self.stream, GROUP, *[entry_id for entry_id, _ in entries])
        self.counters.batches += 1
        if self.on_commit and result.applied:
            await self.on_commit(result)
        return result

    def _decode(self, raw: bytes | None) -> tuple[ev.AnyEvent | None, str]:
        if raw is None:
            return None, f"entry has no '{ev.EVENT_FIELD}' field"
        if len(raw) > self.settings.max_event_bytes:
            return None, f"event is {len(raw)} bytes, over the limit of {self.settings.max_event_bytes}"
        try:
            return ev.decode_event(raw), ""
        except msgspec.ValidationError as exc:
            return None, f"invalid event: {exc}"
        except msgspec.DecodeError as exc:
            return None, f"not valid JSON: {exc}"

    async def _project(self, valid: list[Decoded]) -> BatchResult:
        """Project a batch as `parallel` transactions over disjoint sets of jobs, at once:
        Postgres works on several cores while this process decodes."""
        n = self.settings.parallel
        parts = [[d for d in valid if d.event.job_id.int % n == i] for i in range(n)] if n > 1 else [valid]
        results = await asyncio.gather(*(self._project_part(part) for part in parts if part))
        result = BatchResult.merged(results)
        self.counters.applied += result.applied
        self.counters.duplicates += result.duplicates
        return result

    async def _project_part(self, valid: list[Decoded]) -> BatchResult:
        try:
            async with self.pool.acquire() as conn:
                return await project_batch(conn, [d.event for d in valid], [d.raw for d in valid])
        except _CONNECTION_ERRORS:
            raise
        except asyncpg.PostgresError as exc:
            log.warning("tracker: batch of %d failed (%s); applying one by one", len(valid), type(exc).__name__)
            return await self._project_one_by_one(valid)

    async def _project_one_by_one(self, valid: list[Decoded]) -> BatchResult:
        """Isolate the events Postgres rejects; dead-letter them, apply the rest."""
        results = []
        for item in valid:
            try:
                async with self.pool.acquire() as conn:
                    results.append(await project_batch(conn, [item.event], [item.raw]))
            except _CONNECTION_ERRORS:
                raise
            except asyncpg.PostgresError as exc:
                await self._dead_letter(item.entry_id, f"rejected by the database ({type(exc).__name__})", item.raw)
        return BatchResult.merged(results)

    async def _dead_letter(self, entry_id: bytes, reason: str, raw: bytes | None) -> None:
        stream_id = entry_id.decode()
        payload = raw.decode("utf-8", "replace")[:4096] if raw is not None else None
        async with self.pool.acquire() as conn:
            await conn.execute(store.INSERT_DEAD_LETTER, stream_id, reason, payload)
        await self.redis.xadd(
            self.settings.dead_stream,
            {"id": stream_id, "reason": reason, ev.EVENT_FIELD: raw if raw is not None else b""},
            maxlen=_DEAD_STREAM_MAXLEN,
            approximate=True,
        )
        self.counters.dead += 1
        log.warning("tracker: dead-lettered entry %s: %s", stream_id, reason)

    # --- housekeeping -----------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Every few seconds: trim acknowledged entries, report stalled jobs."""
        if time.monotonic() - self._last_trim < _TRIM_EVERY_S:
            return
        self._last_trim = time.monotonic()
        await self._trim_acknowledged()
        await self._report_stalled()

    async def _trim_acknowledged(self) -> None:
        """Trim entries the group has acknowledged: the events stream stays small
        without ever dropping an entry that was not projected."""
        min_id = await self._oldest_unacknowledged()
        if min_id is not None:
            await self.redis.xtrim(self.stream, minid=min_id, approximate=True)

    async def _report_stalled(self) -> None:
        async with self.pool.acquire() as conn:
            stalled = {r["job_id"] for r in await conn.fetch(store.STALLED_JOBS, self.settings.stall_after)}
        if stalled - self._stalled:
            log.warning(
                "tracker: %d job(s) stalled, no event for over %.0fs: %s",
                len(stalled), self.settings.stall_after, ", ".join(sorted(map(str, stalled))),
            )
        self._stalled = stalled

    async def _oldest_unacknowledged(self) -> bytes | None:
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except ResponseError as exc:
            if _stream_is_gone(exc):
                return None  # nothing to trim; the next read recreates the group
            raise
        group = next((g for g in groups if _text(g["name"]) == GROUP), None)
        if group is None:
            return None
        self.counters.lag = group.get("lag")
        summary = await self.redis.xpending(self.stream, GROUP)
        if summary["pending"]:
            return summary["min"] if isinstance(summary["min"], bytes) else str(summary["min"]).encode()
        last = _text(group["last-delivered-id"])
        ms, _, seq = last.partition("-")
        return f"{ms}-{int(seq or 0) + 1}".encode()

    def _log_progress(self, elapsed: float) -> None:
        c = self.counters
        rate = (c.applied - c.logged_applied) / max(elapsed, 1e-9)
        c.logged_applied = c.applied
        log.info(
            "tracker: %d events applied (%.0f/s over the last %.0fs), %d duplicates, %d dead letters, lag %s",
            c.applied, rate, elapsed, c.duplicates, c.dead, "?" if c.lag is None else c.lag,
        )


def _stream_is_gone(exc: ResponseError) -> bool:
    """Redis restarted without persistence, or was flushed: the stream and group are gone."""
    message = str(exc)
    return "NOGROUP" in message or "no such key" in message


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _discard(task: asyncio.Task) -> None:
    task.cancel()
    try:
        await task
    except BaseException:  # noqa: BLE001 - whatever it ended with, it is gone
        pass


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
