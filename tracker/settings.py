"""One settings struct, read from the environment only in entry points.

Every field has a default that works for `demo`. A bad value stops the process
at start with a message that names the environment variable.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from typing import Annotated

import msgspec
from msgspec import Meta

PositiveInt = Annotated[int, Meta(ge=1)]
Seconds = Annotated[float, Meta(gt=0)]

# Field name -> environment variable. The README's configuration table mirrors this.
ENV_NAMES: dict[str, str] = {
    "database_url": "DATABASE_URL",
    "redis_url": "REDIS_URL",
    "host": "RECAP_HOST",
    "port": "RECAP_PORT",
    "events_stream": "RECAP_EVENTS_STREAM",
    "deltas_stream": "RECAP_DELTAS_STREAM",
    "deltas_maxlen": "RECAP_DELTAS_MAXLEN",
    "tokens": "RECAP_TOKENS",
    "tokens_file": "RECAP_TOKENS_FILE",
    "metrics_token": "RECAP_METRICS_TOKEN",
    "allowed_origins": "RECAP_ALLOWED_ORIGINS",
    "consumer_name": "RECAP_CONSUMER",
    "batch_size": "RECAP_BATCH_SIZE",
    "parallel": "RECAP_PARALLEL",
    "block_ms": "RECAP_BLOCK_MS",
    "claim_idle_ms": "RECAP_CLAIM_IDLE_MS",
    "max_deliveries": "RECAP_MAX_DELIVERIES",
    "max_event_bytes": "RECAP_MAX_EVENT_BYTES",
    "stall_after": "RECAP_STALL_AFTER",
    "poll_cache_ms": "RECAP_POLL_CACHE_MS",
    "log_every": "RECAP_LOG_EVERY",
    "data_dir": "RECAP_DATA_DIR",
    "retention_days": "RECAP_RETENTION_DAYS",
    "log_level": "RECAP_LOG_LEVEL",
}

_URL_SCHEMES = {
    "database_url": ("postgres://", "postgresql://"),
    "redis_url": ("redis://", "rediss://", "unix://"),
}
_STREAM_KEY = re.compile(r"^[\w:{}.\-]{1,200}$")


class ConfigError(Exception):
    """A setting has a bad value; the message names the environment variable."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    database_url: str | None = None
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 8080
    events_stream: str = "recap:events"
    deltas_stream: str = "recap:deltas"
    deltas_maxlen: PositiveInt = 10_000
    tokens: str = ""
    tokens_file: str | None = None
    metrics_token: str | None = None
    allowed_origins: str = ""
    consumer_name: str = ""
    batch_size: Annotated[int, Meta(ge=1, le=50_000)] = 2_000
    #: Transactions a tracker runs at once per batch, each over its own share of the jobs.
    parallel: Annotated[int, Meta(ge=1, le=16)] = 2
    block_ms: PositiveInt = 1_000
    claim_idle_ms: PositiveInt = 30_000
    max_deliveries: PositiveInt = 10
    max_event_bytes: Annotated[int, Meta(ge=256)] = 64 * 1024
    stall_after: Seconds = 300.0
    #: Identical REST polls within this many ms share one answer (0: off).
    poll_cache_ms: Annotated[int, Meta(ge=0, le=60_000)] = 1_000
    log_every: Seconds = 10.0
    data_dir: str = "/var/tmp/recap-status"
    retention_days: Seconds = 30.0
    log_level: str = "INFO"

    @property
    def dead_stream(self) -> str:
        """Where rejected entries of the events stream go."""
        return f"{self.events_stream}:dead"

    @property
    def consumer(self) -> str:
        """This tracker's consumer name in group `tracker`; stable across restarts."""
        return self.consumer_name or f"tracker-{socket.gethostname()}"

    def validate(self) -> Settings:
        for field, schemes in _URL_SCHEMES.items():
            value = getattr(self, field)
            if value is not None and not value.startswith(schemes):
                raise ConfigError(
                    f"{ENV_NAMES[field]}={value!r} is not valid: expected a URL starting with "
                    + " or ".join(schemes)
                )
        for field in ("events_stream", "deltas_stream"):
            if not _STREAM_KEY.match(getattr(self, field)):
                raise ConfigError(f"{ENV_NAMES[field]} must be 1-200 characters of letters, digits, : . - {{ }}")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"{ENV_NAMES['log_level']} must be one of DEBUG, INFO, WARNING, ERROR")
        return self


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from environment variables (only those that are set and non-empty)."""
    env = os.environ if env is None else env
    raw: dict[str, object] = {
        field: env[name] for field, name in ENV_NAMES.items() if env.get(name, "").strip() != ""
    }
    raw.update(overrides)
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_name_the_variable(str(exc), raw)) from None
    return settings.validate()


def _name_the_variable(message: str, raw: Mapping[str, object]) -> str:
    match = re.search(r"at `\$\.(\w+)`", message)
    if not match:
        return f"bad setting: {message}"
    field = match.group(1)
    name = ENV_NAMES.get(field, field)
    reason = message[: match.start()].rstrip(" -")
    return f"{name}={raw.get(field)!r} is not valid: {reason}"
