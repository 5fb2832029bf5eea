"""One subscription's sender: snapshot or missed changes first, then live frames.

It runs as the subscriber's own task, so a socket that does not read blocks
only this task; the hub keeps offering to the subscriber's bounded queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec

from .deltas import Cursor, Heartbeat, Resumed, Snapshot, encode
from .hub import Hub, Subscriber

Send = Callable[[bytes], Awaitable[None]]


class TooSlow(Exception):
    """A send stayed blocked for the hub's send_timeout: the client stopped reading."""


async def serve(hub: Hub, sub: Subscriber, cursor: Cursor | None, send: Send) -> None:
    """Send this subscription's messages until cancelled.

    With a cursor of the current epoch whose changes are all still in the
    stream, the first message is `resumed` (the missed changes, followed by
    the current stats); otherwise a `snapshot`. Raises TooSlow when the
    client stops reading.
    """
    position = hub.attach(sub)
    try:
        if cursor is None:
            sub.resync("subscribed")
        else:
            if cursor.epoch == position.epoch:
                sub.after = cursor.offset
            missed = await hub.replay(cursor, sub.scope, position.offset)
            if isinstance(missed, str):
                sub.resync(missed)
            else:
                resumed_at = Cursor(position.epoch, max(cursor.offset, position.offset))
                await _send(sub, send, encode(Resumed(cursor=resumed_at, changes=missed)))
                if (stats := await hub.stats(sub.scope)) is not None:
                    await _send(sub, send, stats)  # it may have missed a stats push
        await _drain(hub, sub, send)
    finally:
        hub.detach(sub)


async def _drain(hub: Hub, sub: Subscriber, send: Send) -> None:
    while True:
        if sub.resync_reason is not None:
            await _send_snapshot(hub, sub, send)
        elif sub.frames:
            frame = sub.frames.popleft()
            if sub.write_now is None or not sub.write_now(frame):
                await _send(sub, send, frame.encoded())
        elif not await sub.wait(sub.options.heartbeat):
            # Nothing queued: every change up to the hub's position was sent or not in scope.
            await _send(sub, send, encode(Heartbeat(cursor=hub.position)))


async def _send_snapshot(hub: Hub, sub: Subscriber, send: Send) -> None:
    reason = sub.resync_reason or "subscribed"
    sub.resync_reason = None
    sub.after = -1
    sub.frames.clear()  # the snapshot holds them; frames after its position still arrive
    cursor, progress, jobs = await hub.snapshot(sub.scope)
    message = Snapshot(cursor=cursor, reason=reason, progress=msgspec.Raw(progress), jobs=msgspec.Raw(jobs))
    await _send(sub, send, encode(message))


async def _send(sub: Subscriber, send: Send, data: bytes) -> None:
    try:
        async with asyncio.timeout(sub.options.send_timeout):
            await send(data)
    except TimeoutError:
        raise TooSlow from None
