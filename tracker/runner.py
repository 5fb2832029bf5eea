"""Entry point of the tracker process: connections, signals, the consumer loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

import asyncpg
import redis.asyncio as aioredis

from .consumer import Consumer, OnCommit
from .settings import ConfigError, Settings

log = logging.getLogger("tracker")


def require(settings: Settings, *fields: str) -> None:
    """Stop at start when a connection setting the command needs is missing."""
    from .settings import ENV_NAMES

    for name in fields:
        if not getattr(settings, name):
            raise ConfigError(f"{ENV_NAMES[name]} is not set (or run `recap-status demo`, which starts its own)")


def tune_gc_for_throughput() -> None:
    """Collect cycles less often: the tracker allocates millions of short-lived,
    acyclic objects (decoded events, rows), and with the default thresholds the
    collector kept rescanning every long-lived object; that cost more than the
    decoding itself (10-15 % more events/s with this, docs/benchmarks.md)."""
    gc.freeze()  # what is loaded by now lives as long as the process: never scan it again
    gc.set_threshold(50_000, 20, 100)


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_tracker(settings: Settings, stop: asyncio.Event | None = None, on_commit: OnCommit | None = None) -> None:
    """Project events until SIGTERM/SIGINT (or `stop`); the batch in hand is finished first."""
    require(settings, "database_url", "redis_url")
    stop = stop or asyncio.Event()
    publisher = None
    if on_commit is None:
        on_commit = publisher = await _delta_publisher(settings)
    # min_size=0: no connection at start, so an unreachable Postgres is waited out like an outage.
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=4)
    redis = aioredis.from_url(settings.redis_url, socket_timeout=max(5.0, settings.block_ms / 1000 + 5))
    try:
        stop_on_signals(stop)
        consumer = Consumer(settings, redis, pool, on_commit=on_commit)
        log.info("tracker: consumer %s reading %s", consumer.name, settings.events_stream)
        await consumer.run(stop)
        if publisher is not None:
            await publisher.aclose()  # every committed batch is published: the next start keeps the epoch
        log.info("tracker: stopped after %d events", consumer.counters.applied)
    finally:
        await redis.aclose()
        await pool.close()


async def _delta_publisher(settings: Settings) -> OnCommit | None:
    """The live-push publisher, when the pusher package provides one."""
    try:
        from pusher.publish import make_publisher
    except ImportError:
        return None
    return await make_publisher(settings)
