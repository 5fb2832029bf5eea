"""A reference client of the push protocol (used by the tests and bench/push.py).

It keeps the state a dashboard needs: the rows of every job it has heard of
(applied by version, so late or repeated deltas are harmless), the latest
job-progress snapshot and stats, and the cursor to resume from. `follow` is the
reconnect loop the protocol document asks of every client.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

_decoder = msgspec.json.Decoder()


@dataclass
class JobView:
    job: dict[str, Any]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    genres: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class PushState:
    """What one client knows. `apply` takes every server message in order."""

    cursor: dict[str, Any] | None = None
    jobs: dict[str, JobView] = field(default_factory=dict)
    progress: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    snapshots: int = 0
    resumes: int = 0
    last_type: str | None = None

    def apply(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        self.last_type = kind
        if kind == "snapshot":
            self.snapshots += 1
            self.jobs = {}
            self.progress = message["progress"]
            self.stats = message["progress"].get("stats")
            self._apply_changes(message["jobs"])
        elif kind in ("delta", "resumed"):
            self.resumes += kind == "resumed"
            self._apply_changes(message["changes"])
        elif kind == "stats":
            self.stats = message["stats"]
        if "cursor" in message:
            self._advance(message["cursor"])

    def _advance(self, cursor: dict[str, Any]) -> None:
        if self.cursor is None or cursor["epoch"] != self.cursor["epoch"] or cursor["offset"] > self.cursor["offset"]:
            self.cursor = cursor

    def _apply_changes(self, changes: list[dict[str, Any]]) -> None:
        for change in changes:
            job = change["job"]
            view = self.jobs.get(job["job_id"])
            if view is None:
                view = self.jobs[job["job_id"]] = JobView(job=job)
            elif job["version"] > view.job["version"]:
                view.job = job
            for row in change["stages"]:
                _keep_newest(view.stages, row["stage"], row)
            for row in change["genres"]:
                _keep_newest(view.genres, row["genre"], row)


def _keep_newest(rows: dict[str, dict[str, Any]], key: str, row: dict[str, Any]) -> None:
    if key not in rows or row["version"] > rows[key]["version"]:
        rows[key] = row


def subscribe_message(state: PushState, filters: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"type": "subscribe", "filters": filters or {}}
    if state.cursor is not None:
        body["cursor"] = state.cursor
    return msgspec.json.encode(body)


def decode(data: str | bytes) -> dict[str, Any]:
    return _decoder.decode(data)


async def follow(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    state: PushState,
    stop: asyncio.Event,
    filters: dict[str, Any] | None = None,
    max_backoff: float = 30.0,
) -> None:
    """Stay subscribed until `stop`: resume with the cursor after every disconnect,
    waiting a random time up to an exponentially growing bound between attempts."""
    attempt = 0
    while not stop.is_set():
        try:
            async with session.ws_connect(url, headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.send_str(subscribe_message(state, filters).decode())
                attempt = 0
                async for msg in ws:
                    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        state.apply(decode(msg.data))
                    if stop.is_set():
                        break
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            pass
        if stop.is_set():
            return
        attempt += 1
        await asyncio.sleep(random.uniform(0, min(max_backoff, 0.1 * 2**attempt)))
