"""Bearer tokens: who is asking, and what they may see.

Tokens come from RECAP_TOKENS (comma-separated) and RECAP_TOKENS_FILE (one a
line, `#` comments), each entry `TOKEN=admin` or `TOKEN=user:UUID`. An admin
sees every job; a user token sees only jobs whose `user_id` is its own (system
jobs, `user_id` NULL, are for admins only).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from tracker.settings import ENV_NAMES, ConfigError, Settings

from .errors import ApiError, forbidden
from .keys import PRINCIPAL, SETTINGS, TOKENS

log = logging.getLogger("web")

#: Routes anyone may fetch: probes, and the dashboard page and assets (they hold no data).
PUBLIC_ROUTES = frozenset({"health_live", "health_ready", "index", "static"})
#: Routes that accept RECAP_METRICS_TOKEN (or an admin token).
METRICS_ROUTES = frozenset({"metrics"})

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="recap-status"'}


@dataclass(frozen=True, slots=True)
class Principal:
    """The holder of a token: an admin, or one user."""

    is_admin: bool
    user_id: uuid.UUID | None = None


ADMIN = Principal(is_admin=True)
#: Holder of RECAP_METRICS_TOKEN: may read /metrics and nothing else.
METRICS_READER = Principal(is_admin=False)


class TokenTable:
    """Configured tokens; a lookup compares against every one in constant time."""

    def __init__(self, tokens: dict[str, Principal] | None = None) -> None:
        self._entries = [(_digest(t), p) for t, p in (tokens or {}).items()]

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Principal | None:
        digest = _digest(token)
        found = None
        for known, principal in self._entries:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(digest, known):
                found = principal
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_token_entry(entry: str, where: str) -> tuple[str, Principal]:
    """`TOKEN=admin` or `TOKEN=user:UUID`; `where` names the setting in errors (never the token)."""
    token, sep, role = entry.strip().rpartition("=")
    token, role = token.strip(), role.strip()
    if not sep or not token:
        raise ConfigError(f"{where} is not TOKEN=admin or TOKEN=user:UUID")
    if role == "admin":
        return token, ADMIN
    kind, _, user = role.partition(":")
    if kind == "user":
        try:
            return token, Principal(is_admin=False, user_id=uuid.UUID(user))
        except ValueError:
            raise ConfigError(f"{where}: {user!r} after user: is not a UUID") from None
    raise ConfigError(f"{where}: role {role!r} is neither admin nor user:UUID")


def parse_token_entries(entries: Iterable[tuple[str, str]]) -> dict[str, Principal]:
    """(where, entry) pairs to a token table; the same token twice with different roles is an error."""
    tokens: dict[str, Principal] = {}
    for where, entry in entries:
        token, principal = parse_token_entry(entry, where)
        if tokens.get(token, principal) != principal:
            raise ConfigError(f"{where}: this token is already configured with another role")
        tokens[token] = principal
    return tokens


def load_tokens(settings: Settings) -> TokenTable:
    """The token table from RECAP_TOKENS and RECAP_TOKENS_FILE; ConfigError on a bad entry."""
    name = ENV_NAMES["tokens"]
    entries = [
        (f"{name} entry {i}", e) for i, e in enumerate(settings.tokens.split(","), 1) if e.strip()
    ]
    if settings.tokens_file:
        entries += _file_entries(settings.tokens_file)
    return TokenTable(parse_token_entries(entries))


def _file_entries(path: str) -> list[tuple[str, str]]:
    name = ENV_NAMES["tokens_file"]
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{name}={path!r} cannot be read: {exc.strerror}") from None
    return [
        (f"{name} line {n}", line)
        for n, line in enumerate(lines, 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def presented_token(request: web.Request) -> str | None:
    """`Authorization: Bearer T`, else `?token=T` (browsers cannot set headers on a WebSocket)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") or None


def authenticate(request: web.Request) -> Principal:
    """The principal of the request's token; raises a JSON 401 when there is none or it is unknown."""
    if PRINCIPAL in request:
        return request[PRINCIPAL]
    token = presented_token(request)
    if token is None:
        raise ApiError(401, "unauthorized", "a bearer token is required", headers=_CHALLENGE)
    principal = request.app[TOKENS].lookup(token)
    if principal is None:
        raise ApiError(401, "unauthorized", "the token is not valid", headers=_CHALLENGE)
    request[PRINCIPAL] = principal
    return principal


def _authenticate_metrics(request: web.Request) -> Principal:
    expected = request.app[SETTINGS].metrics_token
    token = presented_token(request)
    if expected and token is not None and hmac.compare_digest(_digest(token), _digest(expected)):
        request[PRINCIPAL] = METRICS_READER
        return METRICS_READER
    principal = authenticate(request)
    require_admin(principal)
    return principal


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise forbidden("this endpoint needs an admin token")


def effective_user(principal: Principal, requested: uuid.UUID | None) -> uuid.UUID | None:
    """Whose jobs to show: an admin may pick any user (or none: every job); a user
    token always means its own user, and asking for another is a 403."""
    if principal.is_admin:
        return requested
    if principal.user_id is None:
        raise forbidden("this token may not read jobs")
    if requested is not None and requested != principal.user_id:
        raise forbidden("a user token may only ask for its own user_id", parameter="user_id")
    return principal.user_id


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every matched route but the public ones needs a token."""
    route = request.match_info.route
    if request.match_info.http_exception is None and route.name not in PUBLIC_ROUTES:
        if route.name in METRICS_ROUTES:
            _authenticate_metrics(request)
        else:
            authenticate(request)
    return await handler(request)
