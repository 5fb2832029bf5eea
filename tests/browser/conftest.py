"""Browser tests: Debian's Chromium, headless, driven by Playwright, against the real
web and tracker processes (`python -m web`, `python -m tracker`) on the test
Postgres and Redis. Without /usr/bin/chromium (or Playwright) they are skipped.

One system per module: its own database (cloned from the migrated template),
its own stream keys, a tracker and a web process, loaded with a realistic state
(tests/browser/state.py). Each test gets a fresh browser context and page whose
console errors and uncaught exceptions fail the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from tracker.client import emit_event
from tracker.embedded import create_database, drop_database

from .state import USERS, dashboard_state

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ADMIN_TOKEN = "browser-admin-token"
#: A user token: the first simulated user's (tests/browser/state.py).
USER_TOKEN = "browser-user-token"
ROOT = Path(__file__).resolve().parents[2]

def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _missing()
    for item in items:
        if "tests/browser" in str(item.fspath) and {"system", "browser"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.browser)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does it)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "browser tests need the playwright package (pip install -e '.[test]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class System:
    base_url: str
    env: dict[str, str]
    redis: aioredis.Redis
    events_stream: str
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def url(self, query: str = "", token: str = ADMIN_TOKEN) -> str:
        return f"{self.base_url}/?token={token}{'&' + query if query else ''}"

    async def emit(self, events: list[Any]) -> None:
        for event in events:
            await emit_event(self.redis, self.events_stream, event)

    async def emit_cli(self, *args: str) -> None:
        """`recap-status emit ...`, as a shell script would."""
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("recap-status")), "emit", *args, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as s:
            async with s.get(self.base_url + path) as r:
                assert r.status == 200, await r.text()
                return await r.json()


async def _wait_ready(base_url: str, processes: list[subprocess.Popen], logs: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            for p in processes:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args} exited with {p.returncode}:\n{logs.read_text()[-3000:]}")
            try:
                async with s.get(base_url + "/health/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the web process did not become ready:\n{logs.read_text()[-3000:]}")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def system(database_admin_url: str, template_database: str, redis_url: str, tmp_path_factory) -> AsyncIterator[System]:
    if reason := _missing():
        pytest.skip(reason)
    name = f"recap_browser_{uuid.uuid4().hex[:12]}"
    database_url = await create_database(database_admin_url, name, template=template_database)
    prefix = f"t:{uuid.uuid4().hex}"
    port = _free_port()
    env = {
        **os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "RECAP_HOST": "127.0.0.1",
        "RECAP_PORT": str(port), "RECAP_EVENTS_STREAM": f"{prefix}:events", "RECAP_DELTAS_STREAM": f"{prefix}:deltas",
        "RECAP_TOKENS": f"{ADMIN_TOKEN}=admin,{USER_TOKEN}=user:{USERS[0]}", "RECAP_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
    }
    logs = tmp_path_factory.mktemp("browser") / "processes.log"
    redis = aioredis.Redis.from_url(redis_url)
    system = System(f"http://127.0.0.1:{port}", env, redis, env["RECAP_EVENTS_STREAM"], logs)
    with logs.open("ab") as log:
        for module in ("tracker", "web"):
            system.processes.append(subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT, stdout=log, stderr=log))
    try:
        await _wait_ready(system.base_url, system.processes, logs)
        await _load_state(system)
        yield system
    finally:
        for p in system.processes:
            p.terminate()
        for p in system.processes:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await drop_database(database_admin_url, name)


async def _load_state(system: System) -> None:
    events = dashboard_state(datetime.now(timezone.utc))
    await system.emit(events)
    for n in range(3):  # a few entries the tracker must reject: dead letters for the admin card
        await system.redis.xadd(system.events_stream, {"event": f'{{"type": "job.started", "broken": {n}'})
    jobs = {e.job_id for e in events}
    deadline = time.monotonic() + 30
    last = events[-1]
    while time.monotonic() < deadline:  # one consumer applies in order: the last event comes last
        body = await system.get("/v1/dashboard/job-progress?window=259200&limit=500")
        seen = {j["job_id"] for j in body["recent_jobs"]}
        done = [j for j in body["active_jobs"] if j["job_id"] == str(last.job_id)
                and datetime.fromisoformat(j["last_event_at"]) == last.at]
        if len(seen) == len(jobs) and done:
            break
        await asyncio.sleep(0.2)
    else:
        raise RuntimeError("the tracker did not project the state in time")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def browser(system: System) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class Page:
    """A page and what went wrong on it: console errors, uncaught exceptions, dialogs."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("dialog", self._dialog)

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        yield context
    finally:
        await context.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(context: Any) -> AsyncIterator[Page]:
    watched = Page(await context.new_page())
    yield watched
    assert watched.errors == [], "errors in the browser console"
    assert watched.dialogs == [], "a dialog opened (script ran)"
