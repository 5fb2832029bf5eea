"""Typed keys of the application and request state."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from tracker.settings import Settings

if TYPE_CHECKING:  # both modules import this one
    from .auth import Principal, TokenTable
    from .cache import ResponseCache
    from .metrics import Metrics

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
REDIS = web.AppKey("redis", aioredis.Redis)
#: The bearer tokens the operator configured (RECAP_TOKENS / RECAP_TOKENS_FILE).
TOKENS: web.AppKey[TokenTable] = web.AppKey("tokens")
#: This application's Prometheus registry and instruments.
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
#: Answers of identical polls, shared for RECAP_POLL_CACHE_MS.
CACHE: web.AppKey[ResponseCache] = web.AppKey("cache")
#: The encoded OpenAPI document, built once all routes are registered.
OPENAPI = web.AppKey("openapi", bytes)

#: Who made the request; set by `auth.authenticate` (the middleware calls it).
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
