"""`recap-status emit TYPE --job JOB_ID [--seq N] [--at T] [--event-id ID] [--FIELD VALUE ...]`

Emits one event from a shell script. Every field of every event type has an
option (`--stage`, `--done`, `--cluster-count`, `--articles`, ...). Values are
read as JSON when they are a JSON string, array or object, else taken as text;
text is converted to the field's type (`--done 10`, `--total null`). `--seq`
defaults to the current time in milliseconds, so successive emits of a job from
a shell increase.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

import msgspec

from .client import emit_event
from .events import EVENT_TYPES, event_from_fields, new_event_id, utcnow
from .settings import Settings

#: Fields every event has; they have their own options.
_COMMON = {"event_id": "--event-id", "job_id": "--job", "seq": "--seq", "at": "--at"}
_PREFIX = "field_"


def _event_fields() -> list[str]:
    """Every type-specific field of the event union, in a stable order."""
    names: dict[str, None] = {}
    for cls in EVENT_TYPES.values():
        names.update(dict.fromkeys(f for f in cls.__struct_fields__ if f not in _COMMON))
    return list(names)


def _option(field: str) -> str:
    return _COMMON.get(field) or "--" + field.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `recap-status emit`."""
    parser.add_argument("type", metavar="TYPE", choices=list(EVENT_TYPES), help=", ".join(EVENT_TYPES))
    parser.add_argument("--job", required=True, metavar="JOB_ID", help="the job's UUID")
    parser.add_argument("--seq", help="per-job sequence number (default: milliseconds since the epoch)")
    parser.add_argument("--at", help="RFC 3339 timestamp (default: now)")
    parser.add_argument("--event-id", help="UUID (default: a new one)")
    fields = parser.add_argument_group("event fields", "as the event type needs (see GET /v1/schema/events)")
    for field in _event_fields():
        options = [_option(field)] + ([f"--{field}"] if "_" in field else [])
        fields.add_argument(*options, dest=_PREFIX + field, metavar="VALUE", default=None)


class _BadInput(Exception):
    pass


def _value(text: str) -> Any:
    """JSON strings, arrays and objects are decoded; anything else stays text for lax conversion."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text
    return value if isinstance(value, (str, list, dict)) else text


def build_event(args: argparse.Namespace) -> Any:
    """The validated event the arguments describe; raises _BadInput naming the bad option."""
    given = {
        key[len(_PREFIX) :]: _value(value)
        for key, value in vars(args).items()
        if key.startswith(_PREFIX) and value is not None
    }
    allowed = EVENT_TYPES[args.type].__struct_fields__
    for field in given:
        if field not in allowed:
            extra = sorted(_option(f) for f in allowed if f not in _COMMON)
            raise _BadInput(
                f"{_option(field)} is not a field of {args.type} (its fields: {', '.join(extra) or 'none'})"
            )
    fields = {
        **given,
        "job_id": args.job,
        "event_id": args.event_id or str(new_event_id()),
        "seq": args.seq if args.seq is not None else time.time_ns() // 1_000_000,
        "at": args.at or utcnow().isoformat(),
    }
    try:
        return event_from_fields(args.type, fields)
    except msgspec.ValidationError as exc:
        raise _BadInput(_name_the_option(str(exc), fields)) from None


def _name_the_option(message: str, fields: dict[str, Any]) -> str:
    """`Expected int - at `$.done`` -> `bad --done '10x': Expected int`."""
    match = re.search(r" - at `\$\.(\w+)(.*)`$", message)
    if not match:
        missing = re.fullmatch(r"Object missing required field `(\w+)`", message)
        return f"missing {_option(missing.group(1))}" if missing else message
    field, inner = match.group(1), match.group(2)
    given = f" {fields[field]!r}" if field in fields and not inner else ""
    where = f" (at {inner})" if inner else ""
    return f"bad {_option(field)}{given}: {message[: match.start()]}{where}"


async def run(args: argparse.Namespace, settings: Settings) -> int:
    """Emit the event; prints `event_id=... entry_id=...`. Exit 2 on bad input, 1 if Redis fails."""
    try:
        event = build_event(args)
    except _BadInput as exc:
        print(f"recap-status emit: {exc}", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print("recap-status emit: REDIS_URL is not set", file=sys.stderr)
        return 2

    from redis.asyncio import Redis

    redis = Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        entry_id = await emit_event(redis, settings.events_stream, event)
    except Exception as exc:
        print(f"recap-status emit: cannot write to Redis stream {settings.events_stream!r}: {exc}", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    print(f"event_id={event.event_id} entry_id={entry_id.decode()}")
    return 0
