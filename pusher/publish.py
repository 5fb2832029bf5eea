"""The tracker side of live push: after each committed batch, one change per job
goes to the capped deltas stream; and the epoch that tells clients when that
history was lost.

Publishing is one Lua script, so that concurrent trackers get dense, increasing
offsets (`XADD ... 0-*`) and the epoch check and the appends are atomic. Both
keys are `<deltas_stream>` and `<deltas_stream>:epoch`; on a Redis Cluster give
the stream a hash tag (`{recap}:deltas`) so they share a slot.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis

from tracker.projector import BatchResult
from tracker.settings import Settings

from .deltas import Change, Cursor, encode, epoch_key, offset_of

log = logging.getLogger("pusher")

# KEYS: stream, epoch hash. ARGV: maxlen, a fresh epoch id, then one payload per change.
# The hash holds `epoch` and `used` (1 once the epoch has had an entry). A missing
# hash (first start, FLUSHALL) or a missing stream after use (deleted) means the
# history is gone: start a new epoch, whose offsets start again at 1.
_PUBLISH = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch or (redis.call('EXISTS', KEYS[1]) == 0 and redis.call('HGET', KEYS[2], 'used') == '1') then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[2], 'epoch', epoch)
end
redis.call('HSET', KEYS[2], 'used', '1')
local last
for i = 3, #ARGV do
  last = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '0-*', 'e', epoch, 'd', ARGV[i])
end
return {epoch, last}
"""

# KEYS: stream, epoch hash. ARGV: the new epoch id.
_NEW_EPOCH = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'epoch', ARGV[1], 'used', '0')
return ARGV[1]
"""

_RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def changes_of(result: BatchResult) -> list[Change]:
    """One change per job of the batch: its job row with the stage and genre rows that moved."""
    changes = {job.job_id: Change(job=job) for job in result.jobs}
    for stage in result.stages:
        changes[stage.job_id].stages.append(stage)
    for genre in result.genres:
        changes[genre.job_id].genres.append(genre)
    return list(changes.values())


class Publisher:
    """Appends the changes of committed batches to the deltas stream."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        owns_redis: bool = False,
        retry_delays: Sequence[float] = _RETRY_DELAYS,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.retry_delays = retry_delays
        self._owns_redis = owns_redis
        self._script = redis.register_script(_PUBLISH)
        self._live_key = f"{settings.deltas_stream}:live:{settings.consumer}"
        self._lost = False

    async def start(self) -> None:
        """Mark this consumer's publisher live; if the previous one never closed,
        it may have committed batches it did not publish: start a new epoch."""
        if await self.redis.set(self._live_key, b"1", get=True) is not None:
            log.warning("pusher: %s did not stop cleanly last time; starting a new delta epoch", self.settings.consumer)
            await new_epoch(self.redis, self.settings)

    async def publish(self, changes: Sequence[Change]) -> Cursor | None:
        """Append changes (one stream entry each); returns the cursor of the last one."""
        if not changes:
            return None
        args = [self.settings.deltas_maxlen, new_epoch_id(), *(encode(c) for c in changes)]
        epoch, last = await self._script(keys=self._keys(), args=args)
        return Cursor(_text(epoch), offset_of(last))

    async def __call__(self, result: BatchResult) -> None:
        """The tracker's `on_commit`: publish what the batch committed.

        Retries while Redis is unreachable (the tracker cannot read events then
        either), so that a committed change is not dropped by a short outage.
        """
        changes = changes_of(result)
        for delay in (*self.retry_delays, None):
            try:
                if self._lost:
                    await new_epoch(self.redis, self.settings)
                    self._lost = False
                await self.publish(changes)
                return
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
                if delay is None:
                    # This batch is committed and acknowledged: its deltas are lost, and
                    # the next publish starts a new epoch so that no client goes on without them.
                    self._lost = True
                    raise
                log.warning("pusher: publishing deltas failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def aclose(self) -> None:
        """Stop cleanly: every committed batch has been published (else the next start
        of this consumer starts a new epoch)."""
        try:
            if not self._lost:
                await self.redis.delete(self._live_key)
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
            pass  # the marker stays: the next start begins a new epoch, which is safe
        finally:
            if self._owns_redis:
                await self.redis.aclose()

    def _keys(self) -> list[str]:
        return [self.settings.deltas_stream, epoch_key(self.settings.deltas_stream)]


async def make_publisher(settings: Settings) -> Publisher:
    """The tracker's `on_commit` callback (a `Callable[[BatchResult], Awaitable[None]]`),
    on a Redis connection of its own; `aclose()` it after the consumer stopped.

    A tracker killed between commit and publish has lost those deltas (the
    events are acknowledged, or are duplicates when re-read), so a publisher
    whose predecessor of the same consumer name did not `aclose()` starts a new
    epoch, and every client gets a fresh snapshot.
    """
    redis = aioredis.from_url(settings.redis_url)
    publisher = Publisher(redis, settings, owns_redis=True)
    await publisher.start()
    return publisher


async def new_epoch(redis: aioredis.Redis, settings: Settings) -> str:
    """Start a new epoch: the delta history so far is dropped, and every client is
    sent a fresh snapshot. Call after the projection changed outside the deltas
    (`recap-status rebuild`)."""
    script = redis.register_script(_NEW_EPOCH)
    stream = settings.deltas_stream
    return _text(await script(keys=[stream, epoch_key(stream)], args=[new_epoch_id()]))


def new_epoch_id() -> str:
    return uuid.uuid4().hex[:16]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
