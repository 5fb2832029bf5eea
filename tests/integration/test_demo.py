"""`recap-status demo` as a newcomer runs it: a subprocess with embedded servers in
its own data directory, its printed link, live jobs, and a clean stop."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RECAP_STATUS = Path(sys.executable).with_name("recap-status")
LINK = re.compile(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)")
#: Settings a developer may have exported that would point the demo elsewhere.
_FOREIGN = ("DATABASE_URL", "REDIS_URL", "RECAP_PORT", "RECAP_HOST", "RECAP_TOKENS", "RECAP_TOKENS_FILE",
            "RECAP_EVENTS_STREAM", "RECAP_DELTAS_STREAM", "RECAP_LOG_LEVEL")


class Demo:
    """One `recap-status demo` process; its output is collected by a thread."""

    def __init__(self, data_dir: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
        env["RECAP_DATA_DIR"] = str(data_dir)
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [str(RECAP_STATUS), "demo", "--port", str(port), "--speed", "60", "--rate", "30"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.base = self.token = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for_link(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, f"the demo exited:\n{''.join(self.output)}"
                continue
            if match := LINK.search(line):
                self.base, self.token = match.groups()
                return
        raise AssertionError(f"no dashboard link within {timeout} s:\n{''.join(self.output)}")

    def get(self, path: str) -> dict:
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def progress(self) -> dict:
        return self.get("/v1/dashboard/job-progress?limit=50")

    def processes(self) -> list[psutil.Process]:
        """The demo, anything it started, and the embedded servers (which are daemons)."""
        procs = [psutil.Process(self.proc.pid)]
        procs += procs[0].children(recursive=True)
        for pid in _server_pids(self.data_dir):
            procs.append(psutil.Process(pid))
            procs += procs[-1].children(recursive=True)
        return procs

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def _server_pids(data_dir: Path) -> list[int]:
    pids = []
    for pidfile in (data_dir / "postgres" / "postmaster.pid", data_dir / "redis" / "valkey.pid"):
        try:
            pids.append(int(pidfile.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            pass
    return [pid for pid in pids if psutil.pid_exists(pid)]


def _listening_ports(procs: list[psutil.Process]) -> set[int]:
    ports = set()
    for proc in procs:
        try:
            ports |= {c.laddr.port for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return ports


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _advance(job: dict) -> tuple[int, int]:
    return len(job["stages_completed"]), sum(s["done"] or 0 for s in job["stages"])


def wait_for(condition, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def assert_nothing_left(procs: list[psutil.Process], ports: set[int], data_dir: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(_gone(p) for p in procs):
        time.sleep(0.1)
    assert [p.pid for p in procs if not _gone(p)] == []
    assert [port for port in ports if _answers(port)] == []
    assert not list((data_dir / "postgres").glob(".s.PGSQL.*"))  # nor a Postgres socket


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under /tmp, not pytest's tmp_path: as root, pgserver opens up the permissions of every parent folder.
    path = Path(tempfile.mkdtemp(prefix="recap-demo-test-", dir="/tmp"))
    yield path
    for pid in _server_pids(path):  # a failed test must not leave servers behind
        os.kill(pid, signal.SIGTERM)
    shutil.rmtree(path, ignore_errors=True)


def test_demo_serves_advancing_jobs_and_stops_cleanly(data_dir: Path) -> None:
    port = _free_port()
    demo = Demo(data_dir, port)
    try:
        demo.wait_for_link()
        first = wait_for(lambda: {j["job_id"]: j for j in demo.progress()["active_jobs"]}, 20, "a running job")

        def advanced() -> bool:
            later = {j["job_id"]: j for j in demo.progress()["active_jobs"]}
            return any(_advance(later[i]) > _advance(job) for i, job in first.items() if i in later)

        wait_for(advanced, 20, "a running job to advance")
        procs = demo.processes()
        ports = _listening_ports(procs)
        assert port in ports and len(ports) >= 2  # the web server and valkey
    finally:
        returncode = demo.stop()
    assert returncode == 0, "".join(demo.output)
    assert "stopped" in demo.output[-1]
    assert_nothing_left(procs, ports, data_dir)


def test_demo_after_a_sigkilled_one_starts_and_keeps_the_data(data_dir: Path) -> None:
    port = _free_port()
    first = Demo(data_dir, port)
    try:
        first.wait_for_link()
        earlier = wait_for(lambda: [j["job_id"] for j in first.progress()["recent_jobs"]], 20, "a job")
        left = first.processes()[1:]  # the embedded servers outlive a SIGKILL
    finally:
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = Demo(data_dir, port)
    try:
        second.wait_for_link()
        for job_id in earlier:
            assert second.get(f"/v1/dashboard/jobs/{job_id}")["job_id"] == job_id
        procs = second.processes() + left
        ports = _listening_ports(procs)
    finally:
        returncode = second.stop()
    assert returncode == 0, "".join(second.output)
    assert_nothing_left(procs, ports | {port}, data_dir)
