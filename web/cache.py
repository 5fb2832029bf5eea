"""A short-lived cache of encoded poll responses.

Every open dashboard polls the same few views every 5 s; identical polls within
RECAP_POLL_CACHE_MS share one computation (also while it runs: single flight)
instead of each running the queries again. The key holds everything the answer
depends on (the view, the user in effect, the parameters), never the token, so
a user's cached answer only ever goes to requests allowed the same view.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

Compute = Callable[[], Awaitable[bytes]]


@dataclass
class _Entry:
    task: asyncio.Task[bytes]
    expires: float = float("inf")  # set when the computation ends


class ResponseCache:
    """Encoded responses by key, kept `ttl` seconds after they were computed."""

    def __init__(self, ttl: float, max_entries: int = 512) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()

    async def get(self, key: Hashable, compute: Compute) -> bytes:
        """The cached body for `key`, or the result of `compute()` (run once for all waiters)."""
        if self.ttl <= 0:
            return await compute()
        entry = self._entries.get(key)
        if entry is None or entry.expires <= time.monotonic():
            entry = self._start(key, compute)
        # shield: a client that goes away must not cancel the computation others wait for
        return await asyncio.shield(entry.task)

    def _start(self, key: Hashable, compute: Compute) -> _Entry:
        entry = _Entry(asyncio.ensure_future(compute()))
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        entry.task.add_done_callback(lambda task: self._finished(key, entry))
        return entry

    def _finished(self, key: Hashable, entry: _Entry) -> None:
        if entry.task.cancelled() or entry.task.exception() is not None:
            if self._entries.get(key) is entry:
                del self._entries[key]  # never cache a failure: the next poll tries again
            return
        entry.expires = time.monotonic() + self.ttl
