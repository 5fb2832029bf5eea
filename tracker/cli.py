"""The `recap-status` command: one subcommand per process or maintenance task."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from .settings import ConfigError, Settings, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"recap-status: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return asyncio.run(args.run(args, settings)) or 0
    except ConfigError as exc:
        print(f"recap-status: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recap-status", description="Job progress tracker for the recap pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("migrate", help="apply migrations/*.sql in order, once each").set_defaults(run=_migrate)
    sub.add_parser("tracker", help="project events from Redis into Postgres").set_defaults(run=_tracker)
    sub.add_parser("web", help="the REST, WebSocket and dashboard server").set_defaults(run=_web)
    sub.add_parser("rebuild", help="rebuild the status tables from the event log").set_defaults(run=_rebuild)

    for name, module, text in (
        ("emit", "emit", "emit one event from a shell script"),
        ("demo", "demo", "the whole system with a simulated pipeline on one machine"),
        ("simulate", "simulator", "run the recap pipeline simulator against REDIS_URL"),
        ("prune", "retention", "delete events and finished jobs older than RECAP_RETENTION_DAYS"),
    ):
        _add_optional(sub, name, module, text)
    return parser


def _add_optional(sub: argparse._SubParsersAction, name: str, module: str, text: str) -> None:
    """Subcommands whose module brings its own arguments."""
    import importlib

    try:
        mod = importlib.import_module(f"tracker.{module}")
    except ImportError:
        return
    command = sub.add_parser(name, help=text)
    mod.add_arguments(command)
    command.set_defaults(run=mod.run)


async def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from .migrate import migrate
    from .runner import require

    require(settings, "database_url")
    applied = await migrate(settings.database_url)
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


async def _tracker(args: argparse.Namespace, settings: Settings) -> int:
    from .runner import run_tracker, tune_gc_for_throughput

    tune_gc_for_throughput()  # this process does nothing but project
    await run_tracker(settings)
    return 0


async def _web(args: argparse.Namespace, settings: Settings) -> int:
    from web.app import run_web

    await run_web(settings)
    return 0


async def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from .progress import ProgressBar
    from .rebuild import rebuild
    from .runner import require

    require(settings, "database_url")
    conn = await asyncpg.connect(settings.database_url)
    try:
        bar = ProgressBar("rebuild", unit="events")
        folded = await rebuild(conn, progress=bar.update)
        bar.close()
    finally:
        await conn.close()
    print(f"rebuilt the projection from {folded} events")
    if settings.redis_url:
        await _start_new_epoch(settings)
    else:
        print("REDIS_URL is not set: connected dashboards keep their state until they reconnect")
    return 0


async def _start_new_epoch(settings: Settings) -> None:
    """Live clients hold state from before the rebuild: a new epoch sends them fresh snapshots."""
    import redis.asyncio as aioredis

    from pusher.publish import new_epoch

    redis = aioredis.from_url(settings.redis_url)
    try:
        epoch = await new_epoch(redis, settings)
    finally:
        await redis.aclose()
    print(f"live clients resynchronise: delta epoch is now {epoch}")
