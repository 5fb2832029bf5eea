"""Prometheus metrics of one application, in a registry of its own (so that
tests can create many apps): requests, latencies, and, refreshed at each
scrape, tracker lag, dead letters and projection counts."""

from __future__ import annotations

import logging
import time

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tracker.consumer import GROUP

from . import queries as q
from .errors import UNAVAILABLE_ERRORS
from .keys import METRICS

log = logging.getLogger("web")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The instruments of one application."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "recap_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "recap_http_request_duration_seconds", "Time to answer", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tracker_lag = Gauge(
            "recap_tracker_lag", "Entries of the events stream not yet delivered to group 'tracker'", registry=r
        )
        self.dead_letters = Gauge("recap_dead_letters", "Rejected stream entries on record", registry=r)
        self.events = Gauge("recap_events_projected", "Events in the event log (each applied once)", registry=r)
        self.jobs = Gauge("recap_jobs", "Jobs in the status tables, by status", ["status"], registry=r)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    async def refresh(self, pool: asyncpg.Pool, redis: aioredis.Redis, stream: str) -> None:
        """Read the gauges' current values; a part that cannot be read keeps its last value."""
        try:
            async with pool.acquire(timeout=5) as conn:
                counts = await conn.fetchrow(q.METRICS_COUNTS)
                jobs = await conn.fetch(q.JOBS_BY_STATUS)
            self.events.set(counts["events"])
            self.dead_letters.set(counts["dead_letters"])
            for row in jobs:
                self.jobs.labels(row["status"]).set(row["jobs"])
        except UNAVAILABLE_ERRORS as exc:
            log.warning("metrics: Postgres unavailable: %s", type(exc).__name__)
        self.tracker_lag.set(await tracker_lag(redis, stream))

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def tracker_lag(redis: aioredis.Redis, stream: str) -> float:
    """XINFO GROUPS `lag` of group 'tracker'; NaN when unknown (no group yet, Redis down)."""
    try:
        groups = await redis.xinfo_groups(stream)
    except (aioredis.RedisError, OSError):
        return float("nan")
    for group in groups:
        name = group["name"]
        if (name.decode() if isinstance(name, bytes) else name) == GROUP:
            lag = group.get("lag")
            return float(lag) if lag is not None else float("nan")
    return float("nan")


def route_label(request: web.Request) -> str:
    """The route's pattern (`/v1/dashboard/jobs/{job_id}`), never the raw path."""
    if request.match_info.http_exception is not None:
        return "unmatched"
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts and times every request, including those that end in an error."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        request.app[METRICS].observe(route_label(request), request.method, status, elapsed)
