"""`python -m web` as operators run it: logs its URL, serves, stops cleanly on
SIGTERM, and refuses to start on a bad token entry."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tracker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "RECAP_EVENTS_STREAM": settings.events_stream,
        "RECAP_DELTAS_STREAM": settings.deltas_stream,
        "RECAP_PORT": str(port),
        "RECAP_TOKENS": "t0ken=admin",
        **extra,
    }


async def test_serves_until_sigterm(settings: Settings) -> None:
    env = _env(settings)
    url = f"http://127.0.0.1:{env['RECAP_PORT']}"
    proc = subprocess.Popen([sys.executable, "-m", "web"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with session.get(f"{url}/health/live") as response:
                        assert response.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
                    await asyncio.sleep(0.1)
            headers = {"Authorization": "Bearer t0ken"}
            async with session.get(f"{url}/v1/dashboard/job-stats", headers=headers) as response:
                assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
        assert f"listening on {url}/" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_bad_token_entry_stops_the_start(settings: Settings) -> None:
    env = _env(settings, RECAP_TOKENS="secret-value=superuser")
    done = subprocess.run([sys.executable, "-m", "web"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "RECAP_TOKENS entry 1: role 'superuser' is neither admin nor user:UUID" in done.stderr
    assert "secret-value" not in done.stderr
