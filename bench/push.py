"""Live push: end-to-end latency from emit to a WebSocket client receiving the
change (p50, p99) at 1,000 events/s with 1,000 connected clients, beside the
update latency a 5 s REST poller sees for the same events; then the largest
number of clients one web process serves with delivery p99 under 1 s.

One tracker and one web process (the real ones, `python -m tracker` / `-m web`)
run against Postgres and Redis. The emitter (this process) XADDs
`stage.progress` events for 10 running jobs with `at` = the wall clock at emit.
Clients live in load-generator processes (up to 2,500 connections each), all
with an admin token. Latency of a change = the wall-clock time a client
received the frame holding it minus `at` of the newest event in it (the job
row's `updated_at`); one connection per load generator decodes every frame,
the others only read the cursor to match frames. The poller's latency of an
event = the time the first poll showing it (the job's `updated_at` >= its
`at`) was answered, minus `at`.

    .venv/bin/python bench/push.py [--clients 1000] [--rate 1000] [--seconds 20]
                                   [--steps 1000,2500,5000,7500,10000] [--step-rate 1000] [--step-seconds 10]

Uses BENCH_DATABASE_URL (a role allowed to CREATE DATABASE) and BENCH_REDIS_URL
when set, else embedded servers in a temporary directory. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import msgspec  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from tracker import events as ev  # noqa: E402

TOKEN = "bench-push-admin"
JOBS = 10
PER_WORKER = 2_500
_OFFSET = re.compile(rb'"offset":(\d+)')


# --- load generator (a separate process) ----------------------------------------------


class Recorder:
    """Receive times of frames (by cursor offset) and, from the decoding probe, the
    `updated_at` of every change in each frame."""

    def __init__(self) -> None:
        self.measuring = False
        self.received: list[tuple[int, float]] = []
        self.ats: dict[int, list[float]] = {}
        self.snapshots = 0
        self.closed = 0

    def frame(self, data: bytes, probe: bool) -> None:
        now = time.time()
        head = data[:120]
        if b'"type":"snapshot"' in head:
            self.snapshots += 1
            return
        if not self.measuring or b'"type":"delta"' not in head:
            return
        match = _OFFSET.search(head)
        if match is None:
            return
        offset = int(match.group(1))
        self.received.append((offset, now))
        if probe:
            message = json.loads(data)
            self.ats[offset] = [_epoch_seconds(c["job"]["updated_at"]) for c in message["changes"]]

    def histogram(self) -> tuple[Counter, int]:
        hist: Counter = Counter()
        unmatched = 0
        for offset, t in self.received:
            ats = self.ats.get(offset)
            if ats is None:
                unmatched += 1
                continue
            for at in ats:
                hist[max(0, int((t - at) * 1000))] += 1
        return hist, unmatched


def _epoch_seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def _connection(session: aiohttp.ClientSession, url: str, rec: Recorder, probe: bool, gate: asyncio.Semaphore,
                      connected: list[int]) -> None:
    async with gate:
        ws = await session.ws_connect(url, headers={"Authorization": f"Bearer {TOKEN}"}, decode_text=False,
                                      autoping=True, max_msg_size=0)
        await ws.send_str('{"type":"subscribe"}')
        first = await ws.receive()  # the snapshot: connected means subscribed
        connected[0] += first.type == aiohttp.WSMsgType.TEXT
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            rec.frame(msg.data, probe)
    rec.closed += 1


async def worker(url: str, connections: int) -> None:
    """Hold `connections` clients; on `measure` record, on `report` print the histogram."""
    rec = Recorder()
    gate = asyncio.Semaphore(64)  # connect gradually: the listen backlog is finite
    connected = [0]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    tasks = [asyncio.create_task(_connection(session, url, rec, i == 0, gate, connected)) for i in range(connections)]
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "connected?":
            while connected[0] < connections and not all(t.done() for t in tasks):
                await asyncio.sleep(0.1)
            failed = sum(1 for t in tasks if t.done() and t.exception() is not None)
            print(json.dumps({"connected": connected[0], "failed": failed}), flush=True)
        elif line == "measure":
            rec.received, rec.ats, rec.measuring = [], {}, True
            rec.snapshots = 0
        elif line == "report":
            rec.measuring = False
            hist, unmatched = rec.histogram()
            print(json.dumps({"hist": hist, "frames": len(rec.received), "unmatched": unmatched,
                              "resyncs": rec.snapshots, "closed": rec.closed}), flush=True)
    for t in tasks:
        t.cancel()
    await session.close()


# --- coordinator ----------------------------------------------------------------------


class Worker:
    def __init__(self, url: str, connections: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", url, str(connections)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def ask(self, command: str) -> dict | None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        if command == "measure":
            return None
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(10)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            self.proc.kill()


class Emitter:
    """stage.progress events for JOBS running jobs at `rate` per second, `at` = now."""

    def __init__(self, redis: aioredis.Redis, stream: str) -> None:
        self.redis, self.stream = redis, stream
        self.jobs = [uuid.uuid4() for _ in range(JOBS)]
        self.seq = {j: 0 for j in self.jobs}
        self.emitted: dict[uuid.UUID, list[float]] = {j: [] for j in self.jobs}

    def _event(self, cls: type, job: uuid.UUID, **fields: object) -> bytes:
        self.seq[job] += 1
        event = cls(event_id=uuid.uuid4(), job_id=job, seq=self.seq[job], at=datetime.now(timezone.utc), **fields)
        return ev.encode_event(event)

    async def start_jobs(self) -> None:
        for job in self.jobs:
            await self.redis.xadd(self.stream, {ev.EVENT_FIELD: self._event(ev.JobStarted, job)})
            await self.redis.xadd(self.stream, {ev.EVENT_FIELD: self._event(ev.StageStarted, job, stage="fetch", total=10**9)})

    async def run(self, rate: int, seconds: float, record: bool) -> int:
        tick = 0.01
        per_tick = rate * tick
        sent, started = 0, time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed / tick * per_tick) + int(per_tick)
            pipe = self.redis.pipeline(transaction=False)
            while sent < due:
                job = self.jobs[sent % JOBS]
                now = time.time()
                pipe.xadd(self.stream, {ev.EVENT_FIELD: self._event(ev.StageProgress, job, stage="fetch", done=sent)})
                if record:
                    self.emitted[job].append(now)
                sent += 1
            await pipe.execute()
            await asyncio.sleep(tick)
        return sent


async def poll_rest(session: aiohttp.ClientSession, base: str, stop: asyncio.Event) -> list[tuple[float, dict[str, float]]]:
    """GET job-progress every 5 s (first at a random phase), as the original dashboard did."""
    polls = []
    await asyncio.sleep(random.uniform(0, 5))
    while not stop.is_set():
        async with session.get(f"{base}/v1/dashboard/job-progress", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            body = await r.json()
        polls.append((time.time(), {j["job_id"]: _epoch_seconds(j["updated_at"]) for j in body["active_jobs"]}))
        try:
            await asyncio.wait_for(stop.wait(), 5.0)
        except asyncio.TimeoutError:
            pass
    return polls


async def tail_deltas(redis: aioredis.Redis, stream: str, stop: asyncio.Event) -> Counter:
    """Latency to the deltas stream itself (emit -> projected, committed, published):
    the part of the push latency that is the tracker's, not the fan-out's."""
    hist: Counter = Counter()
    last = (await redis.xinfo_stream(stream))["last-generated-id"]
    decoder = msgspec.json.Decoder()
    while not stop.is_set():
        reply = await redis.xread({stream: last}, count=1000, block=200)
        now = time.time()
        for entry_id, fields in reply[0][1] if reply else []:
            last = entry_id
            at = _epoch_seconds(decoder.decode(fields[b"d"])["job"]["updated_at"])
            hist[max(0, int((now - at) * 1000))] += 1
    return hist


def poll_latencies(emitted: dict[uuid.UUID, list[float]], polls: list[tuple[float, dict[str, float]]]) -> list[float]:
    out = []
    for job, times in emitted.items():
        seen = [(t, state.get(str(job), 0.0)) for t, state in polls]
        i = 0
        for at in times:
            while i < len(seen) and seen[i][1] < at - 1e-6:
                i += 1
            if i == len(seen):
                break  # after the last poll: not observed
            out.append(seen[i][0] - at)
    return out


def percentile(hist: Counter, q: float) -> float:
    total = sum(hist.values())
    if not total:
        return float("nan")
    rank, seen = q * total, 0
    for ms in sorted(hist):
        seen += hist[ms]
        if seen >= rank:
            return float(ms)
    return float(max(hist))


def merge(reports: list[dict]) -> tuple[Counter, dict[str, int]]:
    hist: Counter = Counter()
    totals = Counter()
    for r in reports:
        hist.update({int(k): v for k, v in r["hist"].items()})
        totals.update({k: r[k] for k in ("frames", "unmatched", "resyncs", "closed")})
    return hist, dict(totals)


async def measure(
    workers: list[Worker], emitter: Emitter, rate: int, seconds: float, web_pid: int, record: bool = False
) -> tuple[Counter, dict, int]:
    for w in workers:
        w.ask("measure")
    pids = [w.proc.pid for w in workers]
    cpu = cpu_seconds(web_pid), sum(map(cpu_seconds, pids))
    sent = await emitter.run(rate, seconds, record)
    totals_cpu = cpu_seconds(web_pid) - cpu[0], sum(map(cpu_seconds, pids)) - cpu[1]
    await asyncio.sleep(1.0)  # let the last frames arrive
    hist, totals = merge([w.ask("report") for w in workers])
    totals["web_cpu"] = round(100 * totals_cpu[0] / seconds)
    totals["clients_cpu"] = round(100 * totals_cpu[1] / seconds)
    return hist, totals, sent


def spawn_workers(url: str, clients: int) -> list[Worker]:
    sizes = [PER_WORKER] * (clients // PER_WORKER) + ([clients % PER_WORKER] if clients % PER_WORKER else [])
    if clients <= PER_WORKER:  # spread even small counts over 4 processes: reading is the load
        sizes = [clients // 4 + (i < clients % 4) for i in range(4)]
    return [Worker(url, n) for n in sizes if n]


def connect_all(workers: list[Worker]) -> int:
    return sum(w.ask("connected?")["connected"] for w in workers)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(module: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


async def _ready(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            try:
                async with s.get(f"{base}/health/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("web server did not become ready")


async def run(args: argparse.Namespace, admin: str, redis_url: str, tmp: Path) -> None:
    from tracker.embedded import create_database
    from tracker.migrate import migrate

    db = await create_database(admin, f"bench_push_{uuid.uuid4().hex[:6]}")
    await migrate(db)
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": db, "REDIS_URL": redis_url, "RECAP_PORT": str(port),
           "RECAP_EVENTS_STREAM": f"{prefix}:events", "RECAP_DELTAS_STREAM": f"{prefix}:deltas",
           "RECAP_TOKENS": f"{TOKEN}=admin", "RECAP_CONSUMER": "bench", "RECAP_LOG_LEVEL": "WARNING"}
    procs = [_start("tracker", env, tmp / "tracker.log"), _start("web", env, tmp / "web.log")]
    base, url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/dashboard/ws"
    redis = aioredis.from_url(redis_url)
    try:
        await _ready(base)
        emitter = Emitter(redis, f"{prefix}:events")
        await emitter.start_jobs()

        print(f"phase 1: {args.clients} clients, {args.rate} events/s for {args.seconds}s, and a 5 s REST poller", flush=True)
        workers = spawn_workers(url, args.clients)
        print(f"  connected {connect_all(workers)}", flush=True)
        await emitter.run(args.rate, 3, record=False)  # warm up
        async with aiohttp.ClientSession() as session:
            stop = asyncio.Event()
            poller = asyncio.create_task(poll_rest(session, base, stop))
            stream_stop = asyncio.Event()
            tail = asyncio.create_task(tail_deltas(redis, f"{prefix}:deltas", stream_stop))
            emitter.emitted = {j: [] for j in emitter.jobs}
            hist, totals, sent = await measure(workers, emitter, args.rate, args.seconds, procs[1].pid, record=True)
            stream_stop.set()
            tracker_hist = await tail
            await asyncio.sleep(5.5)  # one more poll sees the last events
            stop.set()
            polls = await poller
        rest = sorted(poll_latencies(emitter.emitted, polls))
        for w in workers:
            w.stop()
        push_p50, push_p99 = percentile(hist, 0.5), percentile(hist, 0.99)
        print(f"  push: p50 {push_p50:.0f} ms, p99 {push_p99:.0f} ms over {sum(hist.values()):,} deliveries "
              f"({sent / args.seconds:,.0f} events/s; frames {totals['frames']:,}, resyncs {totals['resyncs']}, "
              f"unmatched {totals['unmatched']}; CPU web {totals['web_cpu']}%, clients {totals['clients_cpu']}%)", flush=True)
        print(f"  of which emit -> delta in the stream (tracker): p50 {percentile(tracker_hist, 0.5):.0f} ms, "
              f"p99 {percentile(tracker_hist, 0.99):.0f} ms", flush=True)
        print(f"  REST poll every 5 s: p50 {rest[len(rest) // 2] * 1000:.0f} ms, p99 {rest[int(len(rest) * 0.99)] * 1000:.0f} ms "
              f"over {len(rest):,} events, {len(polls)} polls", flush=True)
        print(f"  target p99 < 100 ms: {'met' if push_p99 < 100 else 'NOT met'}", flush=True)

        print(f"phase 2: clients stepped up at {args.step_rate} events/s, {args.step_seconds}s each, until p99 >= 1 s", flush=True)
        best = 0
        for step in args.steps:
            workers = spawn_workers(url, step)
            connected = connect_all(workers)
            hist, totals, _ = await measure(workers, emitter, args.step_rate, args.step_seconds, procs[1].pid)
            p50, p99 = percentile(hist, 0.5), percentile(hist, 0.99)
            for w in workers:
                w.stop()
            print(f"  {connected:>6,} clients: p50 {p50:.0f} ms, p99 {p99:.0f} ms "
                  f"(resyncs {totals['resyncs']}, closed {totals['closed']}; "
                  f"CPU web {totals['web_cpu']}%, clients {totals['clients_cpu']}%)", flush=True)
            if connected < step or not p99 < 1000:
                break
            best = connected
            await asyncio.sleep(2)  # the server notices the closed sockets
        print(f"  largest served with p99 < 1 s: {best:,} clients (target 10,000: {'met' if best >= 10_000 else 'NOT met'})")
    finally:
        await redis.aclose()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=[1_000, 2_500, 5_000, 7_500, 10_000])
    parser.add_argument("--step-rate", type=int, default=1_000)
    parser.add_argument("--step-seconds", type=float, default=10)
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the server and the load generators

    from tracker.embedded import start_postgres, start_redis

    tmp = Path(tempfile.mkdtemp(prefix="recap-bench-push-", dir="/tmp"))
    stops = []
    admin, redis_url = os.environ.get("BENCH_DATABASE_URL"), os.environ.get("BENCH_REDIS_URL")
    if not admin:
        admin, stop = start_postgres(tmp)
        stops.append(stop)
    if not redis_url:
        redis_url, stop = start_redis(tmp)
        stops.append(stop)
    try:
        await run(args, admin, redis_url, tmp)
    finally:
        for stop in stops:
            stop()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(main())
